//! Chaos: four backends, steady load from eight client tasks, and a chaos
//! task that every few hundred milliseconds does something bad to a random
//! backend — kills it (and restarts it later), slows it, makes it fail a
//! share of calls (in headers or in trailers), makes it hang, restarts it
//! gracefully, or flips its health check to NOT_SERVING — while always
//! leaving at least one backend alone. At the end it prints the success
//! rate, latency percentiles, calls per second and the gateway's
//! `/upstreams`, then checks that once the chaos stops every call succeeds.
//!
//! It takes minutes, so it is ignored by default:
//!
//! ```sh
//! cargo test --release --test chaos -- --ignored --nocapture
//! CHAOS_SECS=30 cargo test --release --test chaos -- --ignored --nocapture
//! ```

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::faults::{Edge, FaultBackend, Load, LoadDetail, LoadOptions, LoadStats, percentile};

/// How long the chaos lasts unless `CHAOS_SECS` says otherwise.
const DEFAULT_SECS: u64 = 180;

const UPSTREAM: &str = "connect_timeout: 1s
outlier_detection:
  interval: 1s
  base_ejection_time: 1s
  max_ejection_time: 10s
health_check:
  interval: 500ms
  timeout: 300ms
retry:
  on: [unavailable]";

const ROUTE: &str = "timeout: 2s\nstream_idle_timeout: 2s";

/// Something bad that can happen to a backend, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Kill,
    GracefulRestart,
    Slow,
    FailShare,
    FailInTrailers,
    Hang,
    NotServing,
}

const ACTIONS: [Action; 7] = [
    Action::Kill,
    Action::GracefulRestart,
    Action::Slow,
    Action::FailShare,
    Action::FailInTrailers,
    Action::Hang,
    Action::NotServing,
];

fn between(low_ms: u64, high_ms: u64) -> Duration {
    Duration::from_millis(fastrand::u64(low_ms..=high_ms))
}

/// Does `action` to `backend`, waits, and undoes it.
async fn inflict(backend: &FaultBackend, action: Action) {
    match action {
        Action::Kill => {
            backend.kill();
            tokio::time::sleep(between(500, 2000)).await;
            backend.restart().await;
        }
        Action::GracefulRestart => {
            backend.shutdown_gracefully();
            tokio::time::sleep(between(200, 1000)).await;
            backend.restart().await;
        }
        Action::Slow => {
            backend.set_latency(between(20, 200));
            tokio::time::sleep(between(1000, 3000)).await;
            backend.set_latency(Duration::ZERO);
        }
        Action::FailShare => {
            let code = [14, 13, 2][fastrand::usize(..3)];
            backend.fail(10 * fastrand::u32(1..=10), code);
            tokio::time::sleep(between(1000, 3000)).await;
            backend.fail(0, 14);
        }
        Action::FailInTrailers => {
            backend.fail_in_trailers(10 * fastrand::u32(5..=10), 14);
            tokio::time::sleep(between(1000, 3000)).await;
            backend.fail(0, 14);
        }
        Action::Hang => {
            backend.hang();
            tokio::time::sleep(between(500, 2000)).await;
            backend.unhang();
        }
        Action::NotServing => {
            backend.set_serving(false);
            tokio::time::sleep(between(1000, 3000)).await;
            backend.set_serving(true);
        }
    }
}

fn summary(label: &str, stats: &LoadStats, elapsed: Duration) -> LoadDetail {
    let detail = stats.detail();
    let total = stats.total().max(1);
    let latencies = &detail.latencies_us;
    println!(
        "{label}: {} calls in {:.1} s = {:.0} calls/s; succeeded {} ({:.3}%), failed {}",
        stats.total(),
        elapsed.as_secs_f64(),
        stats.total() as f64 / elapsed.as_secs_f64(),
        stats.ok(),
        100.0 * stats.ok() as f64 / total as f64,
        stats.failed(),
    );
    println!(
        "{label}: latency p50 {:?}  p90 {:?}  p99 {:?}  p99.9 {:?}  max {:?}",
        percentile(latencies, 50.0),
        percentile(latencies, 90.0),
        percentile(latencies, 99.0),
        percentile(latencies, 99.9),
        percentile(latencies, 100.0),
    );
    let by_backend: BTreeMap<_, _> = detail.by_backend.iter().collect();
    let by_code: BTreeMap<_, _> = detail.by_code.iter().collect();
    println!("{label}: served by {by_backend:?}; failures by code {by_code:?}");
    let mut causes: Vec<_> = detail.by_cause.iter().collect();
    causes.sort_by(|x, y| y.1.cmp(x.1));
    for (cause, n) in causes.iter().take(12) {
        println!("{label}: {n:>8}  {cause}");
    }
    detail
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long: cargo test --release --test chaos -- --ignored --nocapture (CHAOS_SECS sets the length)"]
async fn chaos() {
    let secs = std::env::var("CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SECS);
    let backends: Arc<Vec<FaultBackend>> = Arc::new(vec![
        FaultBackend::start("a").await,
        FaultBackend::start("b").await,
        FaultBackend::start("c").await,
        FaultBackend::start("d").await,
    ]);
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let edge = Edge::start(&support::config_yaml(&addrs, UPSTREAM, ROUTE)).await;
    let client = edge.client().await;
    let load = Load::start(
        &client,
        LoadOptions {
            tasks: 8,
            // A pause after each call, so that instant failures (fail-fast
            // answers) are not counted far more often than real calls.
            pace: Some(Duration::from_millis(1)),
            stream_every: 10,
            max_calls: u64::MAX,
            ..Default::default()
        },
    );

    // The chaos task: one action at a time per backend, never on the last
    // backend left alone.
    let impaired: Arc<Vec<AtomicBool>> = Arc::new((0..backends.len()).map(|_| AtomicBool::new(false)).collect());
    let until = Instant::now() + Duration::from_secs(secs);
    let chaos = tokio::spawn({
        let (backends, impaired) = (backends.clone(), impaired.clone());
        async move {
            let mut done: BTreeMap<Action, u32> = BTreeMap::new();
            let mut undoing = tokio::task::JoinSet::new();
            while Instant::now() < until {
                tokio::time::sleep(between(200, 600)).await;
                while undoing.try_join_next().is_some() {}
                let free: Vec<usize> = (0..backends.len())
                    .filter(|&i| !impaired[i].load(Ordering::Acquire))
                    .collect();
                if free.len() < 2 {
                    continue;
                }
                let victim = free[fastrand::usize(..free.len())];
                let action = ACTIONS[fastrand::usize(..ACTIONS.len())];
                *done.entry(action).or_default() += 1;
                impaired[victim].store(true, Ordering::Release);
                let (backends, impaired) = (backends.clone(), impaired.clone());
                undoing.spawn(async move {
                    inflict(&backends[victim], action).await;
                    impaired[victim].store(false, Ordering::Release);
                });
            }
            while undoing.join_next().await.is_some() {}
            done
        }
    });
    // Meanwhile, how often does the gateway see no endpoint in service at all?
    let (mut samples, mut dark) = (0u64, 0u64);
    let mut dark_examples: BTreeMap<Vec<&'static str>, u64> = BTreeMap::new();
    let mut next_report = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut states: Vec<&'static str> = edge.cluster("echo").endpoints.iter().map(|e| e.state).collect();
        samples += 1;
        if !states.contains(&"healthy") {
            dark += 1;
            states.sort_unstable();
            *dark_examples.entry(states).or_default() += 1;
        }
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(30);
            println!(
                "[{:>4.0} s] {} calls, {} failed",
                load.started.elapsed().as_secs_f64(),
                load.stats.total(),
                load.stats.failed()
            );
        }
    }
    let done = tokio::time::timeout(Duration::from_secs(30), chaos)
        .await
        .expect("the chaos task did not wind down")
        .unwrap();
    let elapsed = load.started.elapsed();
    let stats = load.stop().await;
    for backend in backends.iter() {
        assert!(backend.is_running(), "{} was left down", backend.name);
        backend.heal();
    }
    println!(
        "\n===== chaos: {secs} s, 4 backends, 8 client tasks, 1 ms between calls (every 10th a 3-message stream) ====="
    );
    println!("actions: {done:?}");
    summary("during chaos", &stats, elapsed);
    println!(
        "no endpoint healthy in {dark} of {samples} samples ({:.1}%); states then: {dark_examples:?}",
        100.0 * dark as f64 / samples.max(1) as f64
    );
    println!("/upstreams at the end of the chaos:\n{}", edge.upstreams_text().await);

    // Once the chaos stops, the gateway settles: readmitted after probes,
    // healthy after two checks. Then every call succeeds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = Instant::now();
    let after = Load::start(
        &client,
        LoadOptions {
            tasks: 8,
            max_calls: 5000,
            stream_every: 10,
            ..Default::default()
        },
    )
    .finish(Duration::from_secs(120))
    .await;
    let recovered = summary("after the chaos", &after, started.elapsed());
    println!("/upstreams after recovery:\n{}", edge.upstreams_text().await);
    assert_eq!(after.failed(), 0, "{:?}", recovered.sample_errors);
    assert!(stats.ok() > 0);
}
