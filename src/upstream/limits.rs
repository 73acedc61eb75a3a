//! Cluster-wide concurrency limits that fail fast: unary calls in flight
//! (`max_requests`), streaming calls in flight (`max_streams`, separate so
//! long streams cannot starve unary calls) and calls waiting for a
//! connection or stream slot (`max_pending`). An overflow is answered at
//! once with UNAVAILABLE and the header `grpc-edge-overloaded: <limit>`; it
//! is counted, and never held against an endpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The response header naming the limit that was hit.
pub(crate) const OVERLOADED_HEADER: http::HeaderName = http::HeaderName::from_static("grpc-edge-overloaded");

/// Which limit a call ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Overflow {
    Requests,
    Streams,
    Pending,
}

impl Overflow {
    pub(crate) const ALL: [Overflow; 3] = [Overflow::Requests, Overflow::Streams, Overflow::Pending];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Overflow::Requests => "max_requests",
            Overflow::Streams => "max_streams",
            Overflow::Pending => "max_pending",
        }
    }
}

/// Counters and limits of one cluster.
pub(crate) struct Limits {
    max_requests: u32,
    max_streams: u32,
    max_pending: u32,
    requests: AtomicU32,
    streams: AtomicU32,
    pending: AtomicU32,
    overflows: [AtomicU64; 3],
}

impl Limits {
    pub(crate) fn new(config: &crate::config::Limits) -> Arc<Self> {
        Arc::new(Self {
            max_requests: config.max_requests,
            max_streams: config.max_streams,
            max_pending: config.max_pending,
            requests: AtomicU32::new(0),
            streams: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            overflows: Default::default(),
        })
    }

    /// Admits a call, or names the limit it hits.
    pub(crate) fn admit(self: &Arc<Self>, streaming: bool) -> Result<Admitted, Overflow> {
        self.admit_or(streaming, true)
    }

    /// Admits the call if it is under its limit, without counting an
    /// overflow (the caller leaves such a call to a path that will).
    pub(crate) fn try_admit(self: &Arc<Self>, streaming: bool) -> Option<Admitted> {
        self.admit_or(streaming, false).ok()
    }

    fn admit_or(self: &Arc<Self>, streaming: bool, count_overflow: bool) -> Result<Admitted, Overflow> {
        let (counter, max, overflow) = if streaming {
            (&self.streams, self.max_streams, Overflow::Streams)
        } else {
            (&self.requests, self.max_requests, Overflow::Requests)
        };
        if counter
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| (n < max).then_some(n + 1))
            .is_err()
        {
            if count_overflow {
                self.count(overflow);
            }
            return Err(overflow);
        }
        Ok(Admitted {
            limits: self.clone(),
            streaming,
        })
    }

    /// Enters the wait for a connection or stream slot.
    pub(crate) fn wait(self: &Arc<Self>) -> Result<Waiting, Overflow> {
        let max = self.max_pending;
        if self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| (n < max).then_some(n + 1))
            .is_err()
        {
            self.count(Overflow::Pending);
            return Err(Overflow::Pending);
        }
        Ok(Waiting { limits: self.clone() })
    }

    fn count(&self, overflow: Overflow) {
        self.overflows[overflow as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Overflows so far, per limit.
    pub(crate) fn overflows(&self) -> [(Overflow, u64); 3] {
        Overflow::ALL.map(|o| (o, self.overflows[o as usize].load(Ordering::Relaxed)))
    }

    /// Calls in flight: (unary, streaming, pending).
    pub(crate) fn in_flight(&self) -> (u32, u32, u32) {
        (
            self.requests.load(Ordering::Relaxed),
            self.streams.load(Ordering::Relaxed),
            self.pending.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn limit_of(&self, overflow: Overflow) -> u32 {
        match overflow {
            Overflow::Requests => self.max_requests,
            Overflow::Streams => self.max_streams,
            Overflow::Pending => self.max_pending,
        }
    }
}

/// A call counted against its limit until dropped.
pub(crate) struct Admitted {
    limits: Arc<Limits>,
    streaming: bool,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let counter = if self.streaming {
            &self.limits.streams
        } else {
            &self.limits.requests
        };
        counter.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A call counted as pending until dropped.
pub(crate) struct Waiting {
    limits: Arc<Limits>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.limits.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(requests: u32, streams: u32, pending: u32) -> Arc<Limits> {
        Limits::new(&crate::config::Limits {
            max_requests: requests,
            max_streams: streams,
            max_pending: pending,
            pending_timeout: crate::config::Duration::from_secs(1),
        })
    }

    #[test]
    fn unary_and_streaming_limits_are_separate() {
        let l = limits(2, 1, 0);
        let a = l.admit(false).unwrap();
        let _b = l.admit(false).unwrap();
        assert_eq!(l.admit(false).err(), Some(Overflow::Requests));
        let _s = l.admit(true).unwrap();
        assert_eq!(l.admit(true).err(), Some(Overflow::Streams));
        drop(a);
        assert!(l.admit(false).is_ok());
        assert_eq!(l.overflows()[0].1, 1);
        assert_eq!(l.wait().err(), Some(Overflow::Pending));
    }

    #[test]
    fn zero_admits_nothing() {
        let l = limits(0, 0, 0);
        assert_eq!(l.admit(false).err(), Some(Overflow::Requests));
        assert_eq!(l.admit(true).err(), Some(Overflow::Streams));
    }
}
