//! A bounded load generator: client tasks calling the gateway until stopped
//! or their call budget is spent, recording outcomes and latencies.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::support::{EchoClient, EchoRequest};

/// What a load generator sends.
#[derive(Clone)]
pub struct LoadOptions {
    /// Concurrent client tasks.
    pub tasks: usize,
    /// Pause between one task's calls (none: back to back).
    pub pace: Option<Duration>,
    /// Stop after this many calls in all (whatever comes first with `stop`).
    pub max_calls: u64,
    /// Client-side limit on one call (the call is cancelled, not given a grpc-timeout).
    pub call_timeout: Duration,
    pub request: EchoRequest,
    /// Every Nth call of a task is a 3-message server stream (0: never).
    pub stream_every: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            tasks: 4,
            pace: None,
            max_calls: 1_000_000,
            call_timeout: Duration::from_secs(5),
            request: crate::support::echo("load"),
            stream_every: 0,
        }
    }
}

/// Results of a load run.
#[derive(Default)]
pub struct LoadStats {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    detail: Mutex<LoadDetail>,
}

#[derive(Clone, Default, Debug)]
pub struct LoadDetail {
    /// Successful calls per backend (`served_by`).
    pub by_backend: HashMap<String, u64>,
    /// Failed calls per gRPC code name.
    pub by_code: HashMap<String, u64>,
    /// Latency of every finished call, microseconds.
    pub latencies_us: Vec<u64>,
    /// Latency of successful calls per backend, microseconds.
    pub backend_latencies_us: HashMap<String, Vec<u64>>,
    /// The first few failures, for messages.
    pub sample_errors: Vec<String>,
    /// Failures by cause: the status message with addresses and numbers
    /// blanked out, so that alike failures count together.
    pub by_cause: HashMap<String, u64>,
}

/// A failure message with its variable parts (addresses, durations, counts) blanked.
fn cause_of(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut in_number = false;
    for ch in message.chars() {
        if ch.is_ascii_digit() || (in_number && (ch == '.' || ch == ':')) {
            if !in_number {
                out.push('#');
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(ch);
        }
    }
    // "fault injected by a" and "... by b" are one cause.
    match out.find("fault injected by ") {
        Some(at) => out[..at + "fault injected by ".len()].to_string() + "<backend>",
        None => out,
    }
}

impl LoadStats {
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.ok() + self.failed()
    }

    pub fn detail(&self) -> LoadDetail {
        self.detail.lock().unwrap().clone()
    }

    fn success(&self, backend: String, took: Duration) {
        self.ok.fetch_add(1, Ordering::Relaxed);
        let us = took.as_micros() as u64;
        let mut detail = self.detail.lock().unwrap();
        *detail.by_backend.entry(backend.clone()).or_default() += 1;
        detail.latencies_us.push(us);
        detail.backend_latencies_us.entry(backend).or_default().push(us);
    }

    fn failure(&self, code: String, message: String, took: Duration) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut detail = self.detail.lock().unwrap();
        *detail.by_code.entry(code).or_default() += 1;
        *detail.by_cause.entry(cause_of(&message)).or_default() += 1;
        detail.latencies_us.push(took.as_micros() as u64);
        if detail.sample_errors.len() < 20 {
            detail.sample_errors.push(message);
        }
    }
}

/// The `p`th percentile (0–100) of some microsecond samples.
pub fn percentile(samples: &[u64], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    Duration::from_micros(sorted[rank.min(sorted.len() - 1)])
}

/// Client tasks calling the gateway until stopped or their budget is spent.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    pub stats: Arc<LoadStats>,
    pub started: Instant,
}

impl Load {
    pub fn start(client: &EchoClient<Channel>, options: LoadOptions) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(LoadStats::default());
        let issued = Arc::new(AtomicU64::new(0));
        let tasks = (0..options.tasks)
            .map(|_| {
                let mut client = client.clone();
                let (stop, stats, issued, options) = (stop.clone(), stats.clone(), issued.clone(), options.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) && issued.fetch_add(1, Ordering::Relaxed) < options.max_calls {
                        n += 1;
                        let stream = options.stream_every > 0 && n % options.stream_every == 0;
                        let started = Instant::now();
                        let result =
                            tokio::time::timeout(options.call_timeout, one_call(&mut client, &options.request, stream))
                                .await
                                .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("client-side timeout")));
                        let took = started.elapsed();
                        match result {
                            Ok(backend) => stats.success(backend, took),
                            Err(status) => stats.failure(
                                format!("{:?}", status.code()),
                                format!("{:?}: {}", status.code(), status.message()),
                                took,
                            ),
                        }
                        if let Some(pace) = options.pace {
                            tokio::time::sleep(pace).await;
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            tasks,
            stats,
            started: Instant::now(),
        }
    }

    /// Stops the tasks after their current call and waits (bounded) for them.
    pub async fn stop(self) -> Arc<LoadStats> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        self.stats
    }

    /// Waits until every task spent the call budget (bounded by `limit`).
    pub async fn finish(self, limit: Duration) -> Arc<LoadStats> {
        let deadline = tokio::time::Instant::now() + limit;
        for task in &self.tasks {
            while !task.is_finished() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        self.stop().await
    }
}

/// One unary call (or a short server stream); returns who served it.
async fn one_call(
    client: &mut EchoClient<Channel>,
    request: &EchoRequest,
    stream: bool,
) -> Result<String, tonic::Status> {
    if !stream {
        return Ok(client.unary(request.clone()).await?.into_inner().served_by);
    }
    let mut stream = client
        .server_stream(EchoRequest {
            repeat: 3,
            ..request.clone()
        })
        .await?
        .into_inner();
    let mut served_by = String::new();
    let mut messages = 0;
    while let Some(message) = stream.next().await {
        served_by = message?.served_by;
        messages += 1;
    }
    if messages != 3 {
        return Err(tonic::Status::data_loss(format!("{messages} of 3 messages")));
    }
    Ok(served_by)
}
