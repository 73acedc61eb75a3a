//! A real browser against the real gateway: headless Chromium (Debian's
//! `/usr/bin/chromium`) loads pages from one origin that call the gateway
//! on another, with the two stock gRPC-Web clients (`@connectrpc/connect-web`
//! and the official `grpc-web`) and with `fetch` for REST, under CORS.
//!
//! The pages are built by `npm ci && npm run build` in `browser/` (CI does
//! this before `cargo test`): `browser/dist/` holds the checks page, whose
//! logic is `browser/src/checks.js`; the example page is
//! `examples/browser/`, whose committed bundle must equal the fresh build.
//! Each page runs its checks, shows them, and POSTs what it saw as JSON to
//! the tiny static server here, on its own origin; this file then asserts on
//! every fact.
//!
//! Origins: pages on `http://127.0.0.1:P1` (in `cors.allow_origins`) and
//! `http://127.0.0.1:P2` (not in it), the gateway at `http://localhost:G`.
//!
//! When Chromium or the bundle is missing the test fails, saying what to
//! install, unless `GRPC_EDGE_BROWSER_TEST=skip` is set: then it skips.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

const CHROMIUM: &str = "/usr/bin/chromium";
const SKIP_VAR: &str = "GRPC_EDGE_BROWSER_TEST";
const REPLICAS: [&str; 2] = ["replica-a", "replica-b"];
/// How long the pages may take, all together.
const PAGE_DEADLINE: Duration = Duration::from_secs(60);
/// The reports the pages send: name → what the page is.
const PAGES: [&str; 3] = ["allowed", "blocked", "example"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn dist() -> PathBuf {
    root().join("browser/dist")
}

/// What is missing for a test to run, if anything: the bundle always, and
/// Chromium when the test drives it.
fn missing_prerequisites(needs_browser: bool) -> Vec<String> {
    let mut missing = Vec::new();
    if needs_browser && !Path::new(CHROMIUM).exists() {
        missing.push(format!(
            "{CHROMIUM} (apt-get install -y --no-install-recommends chromium chromium-driver)"
        ));
    }
    if ["index.html", "checks.js", "example.js"]
        .iter()
        .any(|f| !dist().join(f).exists())
    {
        missing.push("the bundle in browser/dist (cd browser && npm ci && npm run build)".into());
    }
    missing
}

/// `true` when the test should run; `false` (after saying why) when it may
/// skip; panics when something is missing and skipping was not asked for.
fn prerequisites_met(test: &str, needs_browser: bool) -> bool {
    let missing = missing_prerequisites(needs_browser);
    if missing.is_empty() {
        return true;
    }
    if std::env::var(SKIP_VAR).as_deref() == Ok("skip") {
        eprintln!(
            "SKIPPED {test}: {SKIP_VAR}=skip, and it needs {}",
            missing.join(" and ")
        );
        return false;
    }
    panic!(
        "{test} needs {}: install them as .ci/run does, or set {SKIP_VAR}=skip to skip it",
        missing.join(" and ")
    );
}

/// The bundle must have been built from the sources as they are now.
fn assert_bundle_is_fresh() {
    let built = modified(&dist().join("checks.js"));
    let browser = root().join("browser");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(browser.join("src"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    sources.extend(["build.mjs", "package-lock.json"].map(|f| browser.join(f)));
    sources.push(root().join("descriptors/demo.binpb"));
    for source in sources {
        assert!(
            modified(&source) <= built,
            "{} is newer than browser/dist: run `npm run build` in browser/",
            source.display()
        );
    }
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---- the backends: the demo's OrderDesk, stamping a response header --------

/// A demo replica whose every answer carries `x-served-by: <name>` as
/// response metadata (the demo service itself sends none), so the pages can
/// check that custom metadata is readable in JavaScript.
async fn spawn_replica(name: &'static str) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let stamp = tower::util::MapResponseLayer::new(move |mut response: http::Response<tonic::body::Body>| {
        response
            .headers_mut()
            .insert("x-served-by", HeaderValue::from_static(name));
        response
    });
    let server = tonic::transport::Server::builder()
        .layer(stamp)
        .add_service(grpc_edge::demo::OrderDesk::new(name).into_server())
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
            let _ = stopped.await;
        });
    tokio::spawn(server);
    (addr, stop)
}

fn gateway_yaml(backends: &[SocketAddr], allowed_origin: &str) -> String {
    let endpoints: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "listen: 127.0.0.1:0
descriptors: []
upstreams:
  orders:
    endpoints: [{}]
routes:
  - match: demo.v1.OrderService
    upstream: orders
cors:
  allow_origins: [\"{allowed_origin}\"]
  allow_headers: [x-demo-fail]
  expose_headers: [x-served-by]
",
        endpoints.join(", ")
    )
}

// ---- the static server the pages come from ---------------------------------

/// Serves the pages on one listener (one origin) and passes on their reports.
fn serve_pages(listener: TcpListener, harness: String, reports: mpsc::UnboundedSender<(String, Value)>) {
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let harness = harness.clone();
            let reports = reports.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let harness = harness.clone();
                    let reports = reports.clone();
                    async move { Ok::<_, std::convert::Infallible>(page(request, &harness, &reports).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
}

async fn page(
    request: Request<hyper::body::Incoming>,
    harness: &str,
    reports: &mpsc::UnboundedSender<(String, Value)>,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_string();
    if request.method() == Method::POST
        && let Some(name) = path.strip_prefix("/report/")
    {
        let body = request
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let report = serde_json::from_slice(&body)
            .unwrap_or_else(|e| Value::String(format!("unreadable report ({e}): {}", String::from_utf8_lossy(&body))));
        let _ = reports.send((name.to_string(), report));
        return answer(StatusCode::NO_CONTENT, "text/plain", Bytes::new());
    }
    if path == "/" {
        return answer(
            StatusCode::OK,
            "text/html; charset=utf-8",
            Bytes::from(harness.to_string()),
        );
    }
    let file = path.strip_prefix("/checks/").map(|f| (dist(), f)).or_else(|| {
        path.strip_prefix("/example/")
            .map(|f| (root().join("examples/browser"), f))
    });
    let Some((dir, name)) = file.filter(|(_, f)| !f.is_empty() && !f.contains('/') && !f.starts_with('.')) else {
        return answer(StatusCode::NOT_FOUND, "text/plain", Bytes::from_static(b"not found"));
    };
    let content_type = match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        _ => "application/octet-stream",
    };
    match std::fs::read(dir.join(name)) {
        Ok(bytes) => answer(StatusCode::OK, content_type, Bytes::from(bytes)),
        Err(_) => answer(StatusCode::NOT_FOUND, "text/plain", Bytes::from_static(b"not found")),
    }
}

fn answer(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
        .headers_mut()
        .insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The page Chromium opens: one frame per page under test (headless
/// Chromium opens one URL only). Each frame reports on its own origin.
fn harness_html(allowed: &str, blocked: &str, gateway: &str) -> String {
    let frame = |src: String| format!("<iframe src=\"{src}\" width=\"900\" height=\"300\"></iframe>\n");
    format!(
        "<!doctype html><meta charset=\"utf-8\"><title>grpc-edge browser test</title>\n{}{}{}",
        frame(format!(
            "{allowed}/checks/index.html?gateway={gateway}&expect=allowed&report=/report/allowed"
        )),
        frame(format!(
            "{blocked}/checks/index.html?gateway={gateway}&expect=blocked&report=/report/blocked"
        )),
        frame(format!(
            "{allowed}/example/index.html?gateway={gateway}&report=/report/example"
        )),
    )
}

// ---- Chromium ---------------------------------------------------------------

/// Headless Chromium in its own process group, killed (the whole group) on
/// drop — on every exit path of the test, panics included.
struct Chromium {
    child: Child,
    log: PathBuf,
}

impl Chromium {
    fn launch(url: &str, profile: &Path) -> Chromium {
        let log = profile.with_extension("log");
        let stderr = std::fs::File::create(&log).unwrap();
        let child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
                // Page console messages (and CORS refusals) into the log, for failures.
                "--enable-logging=stderr",
                "--v=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMIUM}: {e}"));
        Chromium { child, log }
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The pages' console messages, as Chromium logged them.
    fn console(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains(":CONSOLE:"))
            .map(str::to_string)
            .collect()
    }

    /// The console messages and the last lines Chromium wrote, for a failure message.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "console:\n{}\nlast lines of Chromium's log:\n{}",
            self.console().join("\n"),
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // SIGTERM first, so the browser ends (and reaps) its helper
        // processes itself; then SIGKILL to the whole group, which holds the
        // browser and every process it started, whatever is left.
        let signal = |signal: &str, target: String| {
            let _ = Command::new("kill")
                .args([signal, "--", &target])
                .stderr(Stdio::null())
                .status();
        };
        let pid = self.child.id();
        signal("-TERM", pid.to_string());
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.exited().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        signal("-KILL", format!("-{pid}"));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for every page's report, failing early if Chromium dies.
async fn collect_reports(
    chromium: &mut Chromium,
    reports: &mut mpsc::UnboundedReceiver<(String, Value)>,
) -> BTreeMap<String, Value> {
    let deadline = Instant::now() + PAGE_DEADLINE;
    let mut got = BTreeMap::new();
    while got.len() < PAGES.len() {
        if let Some(status) = chromium.exited() {
            panic!(
                "Chromium exited ({status}) before every page reported (got {:?}):\n{}",
                got.keys(),
                chromium.log_tail()
            );
        }
        assert!(
            Instant::now() < deadline,
            "pages did not all report within {PAGE_DEADLINE:?} (got {:?}):\n{}",
            got,
            chromium.log_tail()
        );
        if let Ok(Some((name, report))) = tokio::time::timeout(Duration::from_millis(200), reports.recv()).await {
            got.insert(name, report);
        }
    }
    got
}

// ---- assertions on what the pages saw --------------------------------------

/// The facts of one check, which must have passed in the page.
fn passed<'a>(report: &'a Value, check: &str) -> &'a Value {
    let facts = &report["checks"][check];
    assert!(facts.is_object(), "check {check} did not run: {report:#}");
    assert_eq!(facts["ok"], true, "check {check} failed in the browser: {facts:#}");
    facts
}

fn assert_replica(facts: &Value, what: &str) {
    let served_by = facts["servedBy"].as_str().unwrap_or_default();
    assert!(
        REPLICAS.contains(&served_by),
        "{what}: served_by {served_by:?}: {facts}"
    );
    assert_eq!(
        facts["headerServedBy"], facts["servedBy"],
        "{what}: the x-served-by response header, read in JavaScript, names the replica: {facts}"
    );
}

fn assert_stream(facts: &Value, what: &str) {
    let states: Vec<&str> = facts["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["PLACED", "PACKED", "SHIPPED", "DELIVERED"], "{what}: {facts}");
    assert!(
        facts["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["servedBy"] == facts["headerServedBy"])
            && REPLICAS.contains(&facts["headerServedBy"].as_str().unwrap_or_default()),
        "{what}: every event from the replica named in x-served-by: {facts}"
    );
    // The backend sends one event every 100 ms: they must arrive spread out
    // (about 300 ms from first to last), not together at the end of the call.
    let spread = facts["spreadMs"].as_f64().unwrap();
    assert!(
        spread >= 150.0,
        "{what}: events arrived within {spread} ms of each other: {facts}"
    );
}

fn assert_not_found(facts: &Value, message: &str, what: &str) {
    assert_eq!(facts["code"], 5, "{what}: {facts}");
    assert_eq!(facts["message"], message, "{what}: {facts}");
}

fn assert_allowed(report: &Value, allowed_origin: &str) {
    assert_eq!(report["origin"], allowed_origin);
    assert_eq!(report["errors"], serde_json::json!([]), "page errors: {report:#}");

    // (1) unary, and (4) custom response metadata readable, with each client.
    for (check, order) in [("connect.unary", "orders/1"), ("grpcweb.unary", "orders/2")] {
        let facts = passed(report, check);
        assert_eq!(facts["name"], order, "{check}: {facts}");
        assert_replica(facts, check);
    }
    // (2) a server stream, in order and as it happens, with each client.
    for check in ["connect.stream", "grpcweb.stream"] {
        assert_stream(passed(report, check), check);
    }
    assert_eq!(passed(report, "grpcweb.stream")["statusCode"], 0);
    // (3) errors: code and message, with each client, from the backend
    // (x-demo-fail, sent as request metadata through the preflight) and for
    // a missing order.
    for client in ["connect", "grpcweb"] {
        let requested = format!("{client}.error.requested");
        assert_not_found(
            passed(report, &requested),
            "failure requested by x-demo-fail",
            &requested,
        );
        let missing = format!("{client}.error.missing");
        assert_not_found(passed(report, &missing), "no order named \"orders/404\"", &missing);
    }
    // (5) REST with fetch: JSON, and the response header readable.
    let rest = passed(report, "rest.get");
    assert_eq!(rest["status"], 200, "{rest}");
    assert!(
        rest["contentType"].as_str().unwrap().starts_with("application/json"),
        "{rest}"
    );
    assert_eq!(rest["body"]["item"], "espresso beans", "{rest}");
    assert_eq!(rest["body"]["state"], "SHIPPED", "{rest}");
    assert!(
        REPLICAS.contains(&rest["headerServedBy"].as_str().unwrap_or_default()),
        "{rest}"
    );
    assert_eq!(rest["headerServedBy"], rest["body"]["servedBy"], "{rest}");
    let rest_error = passed(report, "rest.error");
    assert_eq!(rest_error["status"], 404, "{rest_error}");
    assert_eq!(rest_error["body"]["code"], 5, "{rest_error}");
    assert_eq!(
        rest_error["body"]["message"], "no order named \"orders/404\"",
        "{rest_error}"
    );
}

fn assert_blocked(report: &Value, blocked_origin: &str) {
    assert_eq!(report["origin"], blocked_origin);
    assert_eq!(report["errors"], serde_json::json!([]), "page errors: {report:#}");
    // (6) an origin not in cors.allow_origins: fetch rejects, and both
    // gRPC-Web clients report a failed call.
    let rest = passed(report, "blocked.rest");
    assert!(rest["status"].is_null(), "fetch must not see the answer: {rest}");
    assert!(rest["error"].as_str().unwrap().starts_with("TypeError"), "{rest}");
    for check in ["blocked.connect", "blocked.grpcweb"] {
        let facts = passed(report, check);
        assert!(facts["code"].as_u64().is_some_and(|c| c != 0), "{check}: {facts}");
    }
}

fn assert_example(report: &Value) {
    let steps = &report["steps"];
    for step in ["rest", "unary", "stream", "error"] {
        assert_eq!(steps[step]["ok"], true, "example page, step {step}: {report:#}");
    }
    assert_eq!(steps["rest"]["status"], 200);
    assert_eq!(steps["unary"]["servedBy"].as_array().unwrap().len(), 9);
    assert_eq!(
        steps["stream"]["states"],
        serde_json::json!(["PLACED", "PACKED", "SHIPPED", "DELIVERED"])
    );
    assert_eq!(steps["error"]["code"], 5);
}

// ---- the tests ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_browser_clients_call_the_gateway_across_origins() {
    if !prerequisites_met("stock_browser_clients_call_the_gateway_across_origins", true) {
        return;
    }
    assert_bundle_is_fresh();
    let started = Instant::now();

    let mut backends = Vec::new();
    let mut stops = Vec::new();
    for name in REPLICAS {
        let (addr, stop) = spawn_replica(name).await;
        backends.push(addr);
        stops.push(stop);
    }

    // Both page origins first: the gateway's config names the allowed one.
    let allowed_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let blocked_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let allowed = format!("http://127.0.0.1:{}", allowed_listener.local_addr().unwrap().port());
    let blocked = format!("http://127.0.0.1:{}", blocked_listener.local_addr().unwrap().port());

    let yaml = gateway_yaml(&backends, &allowed);
    let config = grpc_edge::config::Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let gateway = grpc_edge::demo::demo_gateway(config).unwrap();
    let gateway_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway_url = format!("http://localhost:{}", gateway_listener.local_addr().unwrap().port());
    let (stop_gateway, gateway_stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(grpc_edge::serve(
        gateway,
        gateway_listener,
        async {
            let _ = gateway_stopped.await;
        },
        grpc_edge::ServeOptions::default(),
    ));

    let (report_tx, mut reports) = mpsc::unbounded_channel();
    let harness = harness_html(&allowed, &blocked, &gateway_url);
    serve_pages(allowed_listener, harness.clone(), report_tx.clone());
    serve_pages(blocked_listener, harness, report_tx);

    let profile = tempfile::tempdir().unwrap();
    let mut chromium = Chromium::launch(&format!("{allowed}/"), &profile.path().join("profile"));
    let got = collect_reports(&mut chromium, &mut reports).await;
    let console = chromium.console();
    drop(chromium);

    assert_allowed(&got["allowed"], &allowed);
    assert_blocked(&got["blocked"], &blocked);
    assert_example(&got["example"]);
    // Chromium says why the blocked page's calls failed: CORS, the two
    // gRPC-Web calls already at their preflight (so they were never sent).
    // Nothing from the allowed origin was refused.
    let refused = |origin: &str, reason: &str| {
        console
            .iter()
            .filter(|line| {
                line.contains(&format!(
                    "from origin '{origin}' has been blocked by CORS policy: {reason}"
                ))
            })
            .count()
    };
    assert_eq!(
        refused(&blocked, ""),
        3,
        "CORS refusals of the blocked origin: {console:#?}"
    );
    assert_eq!(
        refused(
            &blocked,
            "Response to preflight request doesn't pass access control check"
        ),
        2,
        "{console:#?}"
    );
    assert_eq!(refused(&allowed, ""), 0, "{console:#?}");

    let _ = stop_gateway.send(());
    let _ = server.await;
    for stop in stops {
        let _ = stop.send(());
    }
    let count = |page: &str, key: &str| got[page][key].as_object().map_or(0, |o| o.len());
    eprintln!(
        "browser test: {} checks from the allowed origin, {} from the blocked one, {} example steps, in {:?}",
        count("allowed", "checks"),
        count("blocked", "checks"),
        count("example", "steps"),
        started.elapsed()
    );
}

/// `examples/browser/app.js` is committed (so the demo can serve it without
/// npm): it must be what `browser/src/example.js` builds to now.
#[test]
fn the_committed_example_bundle_is_the_built_one() {
    if !prerequisites_met("the_committed_example_bundle_is_the_built_one", false) {
        return;
    }
    let built = std::fs::read(dist().join("example.js")).unwrap();
    let committed = std::fs::read(root().join("examples/browser/app.js")).unwrap();
    assert!(
        built == committed,
        "examples/browser/app.js is not what browser/src/example.js builds: run `npm run example` in browser/ and commit it"
    );
}
