//! The method registry: every method of every service in the pool, keyed by
//! its gRPC path (`/pkg.Service/Method`), built once at start-up so a call
//! finds its method with one hash lookup.

use std::collections::HashMap;
use std::sync::Arc;

use prost_reflect::{DescriptorPool, MethodDescriptor};

/// The four shapes of a gRPC call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallKind {
    /// One request, one response.
    Unary,
    /// A stream of requests, one response.
    ClientStreaming,
    /// One request, a stream of responses.
    ServerStreaming,
    /// Streams both ways.
    BidiStreaming,
}

impl CallKind {
    /// The kind of a method descriptor.
    pub fn of(method: &MethodDescriptor) -> Self {
        match (method.is_client_streaming(), method.is_server_streaming()) {
            (false, false) => Self::Unary,
            (true, false) => Self::ClientStreaming,
            (false, true) => Self::ServerStreaming,
            (true, true) => Self::BidiStreaming,
        }
    }

    /// Whether either side streams (streams get an idle timeout, not an overall one).
    pub fn is_streaming(self) -> bool {
        self != Self::Unary
    }

    /// A short lower-case name for logs and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unary => "unary",
            Self::ClientStreaming => "client-streaming",
            Self::ServerStreaming => "server-streaming",
            Self::BidiStreaming => "bidi-streaming",
        }
    }
}

/// What the gateway knows about one method.
#[derive(Clone, Debug)]
pub struct MethodInfo {
    /// `/pkg.Service/Method`.
    pub path: String,
    /// The method's descriptor (input and output types, options).
    pub descriptor: MethodDescriptor,
    /// Its call shape.
    pub kind: CallKind,
}

impl MethodInfo {
    /// Fully-qualified service name.
    pub fn service(&self) -> &str {
        self.descriptor.parent_service().full_name()
    }
    /// Method name.
    pub fn method(&self) -> &str {
        self.descriptor.name()
    }
}

/// Every method by gRPC path.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    methods: HashMap<String, Arc<MethodInfo>>,
}

impl Registry {
    /// Indexes every method of every service in `pool`.
    pub fn new(pool: &DescriptorPool) -> Self {
        let methods = pool
            .services()
            .flat_map(|service| service.methods().collect::<Vec<_>>())
            .map(|descriptor| {
                let path = format!("/{}/{}", descriptor.parent_service().full_name(), descriptor.name());
                let info = MethodInfo {
                    path: path.clone(),
                    kind: CallKind::of(&descriptor),
                    descriptor,
                };
                (path, Arc::new(info))
            })
            .collect();
        Self { methods }
    }

    /// The method at a gRPC path, if it is known.
    pub fn get(&self, path: &str) -> Option<&Arc<MethodInfo>> {
        self.methods.get(path)
    }

    /// Number of methods.
    pub fn len(&self) -> usize {
        self.methods.len()
    }

    /// Whether no method is known.
    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
    }

    /// Every method, sorted by path.
    pub fn methods(&self) -> Vec<&Arc<MethodInfo>> {
        let mut all: Vec<_> = self.methods.values().collect();
        all.sort_by(|a, b| a.path.cmp(&b.path));
        all
    }

    /// Whether a service of this name is known.
    pub fn has_service(&self, service: &str) -> bool {
        self.methods.values().any(|m| m.service() == service)
    }
}
