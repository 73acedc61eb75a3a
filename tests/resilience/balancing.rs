//! Latency-aware balancing: with the default `peak_ewma`, a backend 50 ms
//! slower than the others gets few calls, and the others stay fast.

use std::time::Duration;

use crate::support::faults::{Load, LoadOptions, percentile};
use crate::{edge, three};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slower_backend_gets_under_a_tenth_of_the_calls() {
    let [a, b, c] = three(["a", "b", "c"]).await;
    c.set_latency(Duration::from_millis(50));
    let edge = edge(&[&a, &b, &c], "", "").await;
    let client = edge.client().await;
    let options = LoadOptions {
        tasks: 8,
        max_calls: 300,
        ..Default::default()
    };
    // Warm up: every endpoint gets a latency estimate.
    Load::start(&client, options.clone())
        .finish(Duration::from_secs(30))
        .await;
    let stats = Load::start(
        &client,
        LoadOptions {
            max_calls: 2000,
            ..options
        },
    )
    .finish(Duration::from_secs(60))
    .await;
    let detail = stats.detail();
    assert_eq!(stats.ok(), 2000, "{:?}", detail.sample_errors);
    let slow = detail.by_backend.get("c").copied().unwrap_or(0);
    let share = slow as f64 / 2000.0;
    let fast: Vec<u64> = ["a", "b"]
        .iter()
        .flat_map(|n| detail.backend_latencies_us.get(*n).cloned().unwrap_or_default())
        .collect();
    let (p50, p99) = (percentile(&fast, 50.0), percentile(&fast, 99.0));
    println!(
        "calls per backend {:?}; c's share {share:.3}; a and b p50 {p50:?} p99 {p99:?}; c's estimate {:.1} ms",
        detail.by_backend,
        edge.endpoint(&c).rtt_ms
    );
    assert!(share < 0.10, "c took {share:.3} of the calls: {:?}", detail.by_backend);
    assert!(p50 < Duration::from_millis(20), "the fast backends answer in {p50:?}");
    let rtt = edge.endpoint(&c).rtt_ms;
    assert!(rtt > 30.0, "c's latency estimate is {rtt} ms");
}
