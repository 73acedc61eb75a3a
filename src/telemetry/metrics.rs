//! Prometheus metrics for calls, per downstream protocol, service, method
//! and gRPC code, named as grpc-prometheus names them where they mean the
//! same thing (`grpc_server_started_total`, `grpc_server_handled_total`,
//! `grpc_server_handling_seconds`, `grpc_server_msg_received_total`,
//! `grpc_server_msg_sent_total`), each with a `protocol` label (`grpc`,
//! `grpc_web`, `rest`).
//!
//! Every known method's series exist from start-up. The handles a call
//! touches are resolved once per method and protocol, so recording a call
//! is a few atomic additions; a path the descriptors do not know is counted
//! under service and method `unknown`, never under the raw path, so label
//! cardinality stays bounded. Upstream, certificate and process metrics are
//! read at scrape time (`collector`).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::descriptors::{CallKind, Registry as MethodRegistry};
use crate::status::Code;

/// The downstream protocol of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Protocol {
    Grpc = 0,
    GrpcWeb = 1,
    Rest = 2,
}

impl Protocol {
    const ALL: [Protocol; 3] = [Protocol::Grpc, Protocol::GrpcWeb, Protocol::Rest];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::GrpcWeb => "grpc_web",
            Protocol::Rest => "rest",
        }
    }
}

/// Buckets for RPC latencies: a millisecond to a minute.
const LATENCY_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    protocol: &'static str,
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandledLabels {
    protocol: &'static str,
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
    grpc_code: &'static str,
}

/// The call metric families.
pub(crate) struct CallMetrics {
    started: Family<CallLabels, Counter>,
    handled: Family<HandledLabels, Counter>,
    latency: Family<CallLabels, Histogram, fn() -> Histogram>,
    received: Family<CallLabels, Counter>,
    sent: Family<CallLabels, Counter>,
    /// Pre-resolved handles per method path, one per protocol.
    /// Looked up on every call, by the client's `:path` (a keyed hash).
    methods: HashMap<String, [Arc<MethodHandles>; 3], foldhash::quality::RandomState>,
    unknown: [Arc<MethodHandles>; 3],
}

/// The metric handles one (method, protocol) pair touches.
pub(crate) struct MethodHandles {
    labels: CallLabels,
    pub(crate) service: String,
    pub(crate) method: String,
    pub(crate) started: Counter,
    latency: Histogram,
    pub(crate) received: Counter,
    pub(crate) sent: Counter,
    handled: [OnceLock<Counter>; 17],
    handled_family: Family<HandledLabels, Counter>,
}

impl MethodHandles {
    /// Counts a finished call with its code and duration.
    pub(crate) fn finish(&self, code: Code, elapsed: Duration) {
        let counter = self.handled[code as usize].get_or_init(|| {
            self.handled_family
                .get_or_create(&HandledLabels {
                    protocol: self.labels.protocol,
                    grpc_type: self.labels.grpc_type,
                    grpc_service: self.labels.grpc_service.clone(),
                    grpc_method: self.labels.grpc_method.clone(),
                    grpc_code: code.as_str(),
                })
                .clone()
        });
        counter.inc();
        self.latency.observe(elapsed.as_secs_f64());
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

fn type_name(kind: Option<CallKind>) -> &'static str {
    match kind {
        Some(CallKind::Unary) => "unary",
        Some(CallKind::ClientStreaming) => "client_stream",
        Some(CallKind::ServerStreaming) => "server_stream",
        Some(CallKind::BidiStreaming) => "bidi_stream",
        None => "unknown",
    }
}

impl CallMetrics {
    /// Registers the families and pre-creates every known method's series.
    pub(crate) fn new(registry: &mut Registry, methods: &MethodRegistry) -> Self {
        let started = Family::<CallLabels, Counter>::default();
        let handled = Family::<HandledLabels, Counter>::default();
        let latency = Family::<CallLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let received = Family::<CallLabels, Counter>::default();
        let sent = Family::<CallLabels, Counter>::default();
        registry.register(
            "grpc_server_started",
            "Calls started, per protocol, service and method",
            started.clone(),
        );
        registry.register(
            "grpc_server_handled",
            "Calls finished, per protocol, service, method and gRPC code",
            handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Time from a call's arrival to its last response byte",
            latency.clone(),
        );
        registry.register(
            "grpc_server_msg_received",
            "Stream messages received from clients",
            received.clone(),
        );
        registry.register("grpc_server_msg_sent", "Stream messages sent to clients", sent.clone());
        let mut metrics = Self {
            unknown: Protocol::ALL.map(|_| Arc::new(placeholder(&handled))),
            started,
            handled,
            latency,
            received,
            sent,
            methods: HashMap::default(),
        };
        metrics.unknown = Protocol::ALL.map(|p| Arc::new(metrics.handles(p, "unknown", "unknown", None)));
        for method in methods.methods() {
            if method.service().starts_with("grpc.reflection.") {
                continue;
            }
            let handles = Protocol::ALL
                .map(|p| Arc::new(metrics.handles(p, method.service(), method.method(), Some(method.kind))));
            metrics.methods.insert(method.path.clone(), handles);
        }
        metrics
    }

    fn handles(&self, protocol: Protocol, service: &str, method: &str, kind: Option<CallKind>) -> MethodHandles {
        let labels = CallLabels {
            protocol: protocol.as_str(),
            grpc_type: type_name(kind),
            grpc_service: service.to_string(),
            grpc_method: method.to_string(),
        };
        MethodHandles {
            service: service.to_string(),
            method: method.to_string(),
            started: self.started.get_or_create(&labels).clone(),
            latency: self.latency.get_or_create(&labels).clone(),
            received: self.received.get_or_create(&labels).clone(),
            sent: self.sent.get_or_create(&labels).clone(),
            handled: Default::default(),
            handled_family: self.handled.clone(),
            labels,
        }
    }

    /// The handles for a gRPC path (`unknown` for paths the descriptors do not know).
    pub(crate) fn for_path(&self, protocol: Protocol, path: &str) -> Arc<MethodHandles> {
        let handles = self.methods.get(path).unwrap_or(&self.unknown);
        handles[protocol as usize].clone()
    }
}

/// A throwaway value used only while `CallMetrics::new` builds the real ones.
fn placeholder(handled: &Family<HandledLabels, Counter>) -> MethodHandles {
    MethodHandles {
        labels: CallLabels {
            protocol: "",
            grpc_type: "",
            grpc_service: String::new(),
            grpc_method: String::new(),
        },
        service: String::new(),
        method: String::new(),
        started: Counter::default(),
        latency: latency_histogram(),
        received: Counter::default(),
        sent: Counter::default(),
        handled: Default::default(),
        handled_family: handled.clone(),
    }
}
