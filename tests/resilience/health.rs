//! Active health checks: a backend answering NOT_SERVING is taken out of
//! service after `unhealthy_threshold` checks and back in after
//! `healthy_threshold`; one without the health service counts as healthy.

use std::time::Duration;

use crate::support::faults::{FaultBackend, FaultOptions, Load, LoadOptions};
use crate::{edge, wait_for};

const INTERVAL: Duration = Duration::from_millis(100);
/// Room for a busy machine on top of the intervals the checks need.
const SLACK: Duration = Duration::from_millis(250);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_not_serving_backend_is_removed_and_comes_back_when_serving() {
    let a = FaultBackend::start("a").await;
    let b = FaultBackend::start("b").await;
    let c = FaultBackend::start_with(
        "c",
        FaultOptions {
            health_service: false,
            ..Default::default()
        },
    )
    .await;
    let edge = edge(
        &[&a, &b, &c],
        // Round robin: whether `a` takes calls again must not depend on the
        // latency estimate it had when it left (peak EWMA would avoid it for
        // a while, rightly, and that is another test's subject).
        "balancer: round_robin\nhealth_check:\n  interval: 100ms\n  timeout: 250ms\n  unhealthy_threshold: 3\n  healthy_threshold: 2",
        "",
    )
    .await;
    wait_for(&edge, "every endpoint healthy", Duration::from_secs(2), || {
        edge.cluster("echo").endpoints.iter().all(|e| e.health == "healthy")
    })
    .await;
    // c has no health service (it answers UNIMPLEMENTED) and counts as healthy.
    assert_eq!(c.health_checks(), 0);
    assert!(a.health_checks() >= 2 && b.health_checks() >= 2);
    let json = edge.admin_endpoint(&c).await;
    assert_eq!(
        (&json["state"], &json["health"]),
        (&"healthy".into(), &"healthy".into())
    );

    let client = edge.client().await;
    let load = Load::start(
        &client,
        LoadOptions {
            tasks: 2,
            pace: Some(Duration::from_millis(2)),
            ..Default::default()
        },
    );
    wait_for(&edge, "calls on every backend", Duration::from_secs(2), || {
        a.calls() > 0 && b.calls() > 0 && c.calls() > 0
    })
    .await;

    a.set_serving(false);
    let took = wait_for(&edge, "a unhealthy", Duration::from_secs(2), || {
        edge.state(&a) == "unhealthy"
    })
    .await;
    println!("NOT_SERVING → unhealthy in {took:?}");
    assert!(took <= INTERVAL * 3 + SLACK, "removed after {took:?}");
    let json = edge.admin_endpoint(&a).await;
    assert_eq!(
        (&json["state"], &json["health"]),
        (&"unhealthy".into(), &"unhealthy".into())
    );
    tokio::time::sleep(Duration::from_millis(50)).await; // calls already there finish
    let frozen = a.calls();
    let others = b.calls() + c.calls();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(a.calls(), frozen, "an unhealthy backend got calls");
    assert!(b.calls() + c.calls() > others + 50);

    a.set_serving(true);
    let took = wait_for(&edge, "a healthy again", Duration::from_secs(2), || {
        edge.state(&a) == "healthy"
    })
    .await;
    println!("SERVING → healthy in {took:?}");
    assert!(took <= INTERVAL * 2 + SLACK, "back after {took:?}");
    wait_for(&edge, "a to take calls again", Duration::from_secs(2), || {
        a.calls() > frozen
    })
    .await;
    let stats = load.stop().await;
    assert_eq!(stats.failed(), 0, "{:?}", stats.detail().sample_errors);
}
