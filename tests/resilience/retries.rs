//! Retries on `retry.on` codes: within the budget, each on another endpoint,
//! and as the server's `grpc-retry-pushback-ms` asks.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::faults::{CallRecord, FaultBackend};
use crate::{edge, tagged, three};

/// Outlier detection off, so every endpoint stays in play and the
/// retries alone are measured.
const RETRY_UNAVAILABLE: &str =
    "retry:\n  on: [unavailable]\noutlier_detection:\n  consecutive_failures: 0\n  failure_percentage: 0";

/// Every backend's log, by `x-call-id`: (backend, record) in arrival order.
fn attempts(backends: &[&FaultBackend]) -> HashMap<String, Vec<(String, CallRecord)>> {
    let mut by_call: HashMap<String, Vec<(String, CallRecord)>> = HashMap::new();
    for backend in backends {
        for record in backend.log() {
            if let Some(id) = record.call_id.clone() {
                by_call.entry(id).or_default().push((backend.name.clone(), record));
            }
        }
    }
    for list in by_call.values_mut() {
        list.sort_by_key(|(_, r)| r.at);
    }
    by_call
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_within_the_budget_and_go_to_other_endpoints() {
    let [a, b, c] = three(["a", "b", "c"]).await;
    for backend in [&a, &b, &c] {
        backend.fail(100, 14);
    }
    let edge = edge(&[&a, &b, &c], RETRY_UNAVAILABLE, "").await;
    let client = edge.client().await;
    // 50 concurrent callers: the budget is 20% of the ~50 calls in flight.
    const CALLERS: u64 = 50;
    const EACH: u64 = 40;
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..CALLERS {
        let mut client = client.clone();
        let failed = failed.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                let call = tokio::time::timeout(Duration::from_secs(5), client.unary(tagged(&format!("{t}-{i}"))));
                if let Ok(Err(status)) = call.await {
                    assert_eq!(status.code(), tonic::Code::Unavailable);
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let calls = CALLERS * EACH;
    assert_eq!(failed.load(Ordering::Relaxed), calls, "every call fails in the end");
    let at_backends: u64 = [&a, &b, &c].iter().map(|b| b.calls()).sum();
    let retries = at_backends - calls;
    let cluster = edge.cluster("echo");
    println!(
        "{calls} calls, {at_backends} at the backends: {retries} retries; refused by budget: {}",
        cluster.retries_refused_by_budget
    );
    assert!(
        retries * 100 <= calls * 20,
        "{retries} retries for {calls} calls is over 20%"
    );
    assert_eq!(cluster.retries, retries, "the gateway's count matches the backends'");
    let json = edge.upstreams_json().await;
    assert_eq!(json[0]["retries"], retries, "{json:#}");

    // Each retry went to an endpoint this call had not tried.
    let by_call = attempts(&[&a, &b, &c]);
    assert_eq!(by_call.len() as u64, calls);
    let mut retried = 0;
    for (id, list) in &by_call {
        let mut names: Vec<&str> = list.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.len() <= 3, "{id}: {names:?}");
        if names.len() > 1 {
            retried += 1;
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), list.len(), "{id} tried an endpoint twice: {list:?}");
    }
    // Once retries really happen (see the ignored pushback test), most of
    // these calls are retried and the budget refuses many more.
    println!("{retried} calls were retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_pushback_is_honoured_and_minus_one_stops_retries() {
    let [a, b, c] = three(["a", "b", "c"]).await;
    for backend in [&a, &b, &c] {
        backend.fail(100, 14);
        backend.set_pushback(Some("200"));
    }
    let edge = edge(&[&a, &b, &c], RETRY_UNAVAILABLE, "").await;
    let mut client = edge.client().await;
    for i in 0..3 {
        let started = Instant::now();
        let status = client.unary(tagged(&format!("wait-{i}"))).await.unwrap_err();
        let took = started.elapsed();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(
            status.message().starts_with("fault injected by"),
            "{}",
            status.message()
        );
        // Three attempts, 200 ms apart.
        assert!(took >= Duration::from_millis(400), "took {took:?}");
        assert!(took < Duration::from_millis(1500), "took {took:?}");
    }
    let by_call = attempts(&[&a, &b, &c]);
    for i in 0..3 {
        let list = &by_call[&format!("wait-{i}")];
        assert_eq!(list.len(), 3, "max_attempts: 3: {list:?}");
        for pair in list.windows(2) {
            let gap = pair[1].1.at.duration_since(pair[0].1.at);
            assert!(gap >= Duration::from_millis(195), "retry after only {gap:?}");
            assert!(gap < Duration::from_millis(600), "retry after {gap:?}");
        }
    }

    // A negative pushback: no retry at all.
    for backend in [&a, &b, &c] {
        backend.set_pushback(Some("-1"));
    }
    let before: u64 = [&a, &b, &c].iter().map(|b| b.calls()).sum();
    for i in 0..10 {
        let started = Instant::now();
        let status = client.unary(tagged(&format!("stop-{i}"))).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(started.elapsed() < Duration::from_millis(150));
    }
    let after: u64 = [&a, &b, &c].iter().map(|b| b.calls()).sum();
    assert_eq!(after - before, 10, "grpc-retry-pushback-ms: -1 must stop retries");
}

/// With fewer endpoints than `max_attempts`, the last answer should reach
/// the client: a retry needs an endpoint to go to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_no_other_endpoint_left_returns_the_backends_answer() {
    // One endpoint: any retry has nowhere new to go.
    let a = FaultBackend::start("a").await;
    a.fail(100, 14);
    a.set_pushback(Some("300"));
    let edge = edge(&[&a], RETRY_UNAVAILABLE, "").await;
    let mut client = edge.client().await;
    let started = Instant::now();
    let status = client.unary(tagged("only")).await.unwrap_err();
    let took = started.elapsed();
    let cluster = edge.cluster("echo");
    println!(
        "{:?} {:?} after {took:?}; backend calls {}; retries counted {}",
        status.code(),
        status.message(),
        a.calls(),
        cluster.retries
    );
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(
        status.message(),
        "fault injected by a",
        "the backend's own status should reach the client"
    );
    // Either retried on the same endpoint, or not retried at all — but a
    // retry that was counted and waited for must have been made.
    assert_eq!(cluster.retries, a.calls() - 1, "retries counted vs made");
    if a.calls() == 1 {
        assert!(
            took < Duration::from_millis(250),
            "waited {took:?} for a retry that never came"
        );
    }
}
