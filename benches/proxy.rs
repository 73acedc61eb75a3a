//! Side-by-side proxy benchmark: `direct`, `grpc-edge` (native gRPC, gRPC-Web,
//! REST), `grpc-edge-quiet`, `grpc-edge-h2`, `relay-floor`, `haproxy`,
//! `haproxy-logged`, `nginx`.
//!
//! ```sh
//! cargo bench --bench proxy -- [--duration 10s] [--warmup 2s] [--connections 2] [--streams 100]
//!                              [--rate 5000] [--runs 3] [--peers haproxy,nginx] [--only grpc-edge]
//! ```
//!
//! # What it measures
//!
//! Three in-process backends (the bundled `OrderDesk`, served by tonic)
//! answer `demo.v1.OrderService/GetOrder` with a ~60-byte `Order` whose
//! `served_by` names the replica. A load generator written directly on the
//! `h2` crate opens `--connections` HTTP/2 connections with `--streams`
//! streams each; every stream is a task making one unary call at a time.
//! It calls, in turn:
//!
//! - `direct`: ONE backend, no proxy: the floor for latency, the ceiling for calls/s;
//! - `grpc-edge`: the real `grpc-edge serve` binary (a separate process, default
//!   `peak_ewma` balancer) in front of the three backends, with its default
//!   telemetry: per-method metrics and one access log line per call (text,
//!   written to a file); native gRPC goes through the HTTP/2 frame relay
//!   (docs/relay.md), as by default;
//! - `grpc-edge-quiet`: the same with `observability.metrics` and
//!   `access_log` off, so the ratio of the two is what telemetry costs, and
//!   what HAProxy does by default (no log);
//! - `grpc-edge-h2`: grpc-edge with the relay off (`GRPC_EDGE_RELAY=off`):
//!   every call served by the `h2` crate on both sides, telemetry on;
//! - `grpc-edge-web`, `grpc-edge-rest`, `grpc-edge-rest-body`: grpc-edge with
//!   the same GetOrder call made as gRPC-Web (binary), as REST
//!   `GET /v1/orders/1` (path variable, JSON answer), plus a REST call with
//!   a path variable and a JSON request body (`PATCH /v1/orders/2`,
//!   UpdateOrder, setting the values the order already has, so every run
//!   sees the same data; an Order like GetOrder's comes back), so each front
//!   end's cost shows as a ratio to native gRPC;
//! - `relay-floor`: the CPU floor of the frame-relay architecture, a
//!   single-threaded HTTP/2 frame relay with nothing but the relay in it
//!   (`benches/relay_floor/mod.rs` says what it leaves out). It is this bench
//!   binary itself, started again as a child process with the hidden first
//!   argument `--relay-floor-child --listen ADDR --upstreams A,B,C`, and
//!   measured like any other proxy;
//! - `haproxy`, `nginx`: the same three backends behind them (h2 on both sides),
//!   when they are installed; skipped otherwise;
//! - `haproxy-logged`: HAProxy writing an HTTP log line per call
//!   (`option httplog`, to its log file), for a like-for-like comparison
//!   with the `grpc-edge*` targets that write one.
//!
//! Each target gets two load profiles, each with `--warmup` then `--duration`:
//!
//! - **closed loop**: each stream sends its next call when the previous
//!   answer arrives, so the setup runs flat out → calls/s, p50, p99, errors;
//! - **fixed rate** (open loop): `--rate` calls/s in total, spread evenly over
//!   the streams → p50, p99, and p99 minus direct's p99 (what the proxy adds).
//!
//! # CPU placement
//!
//! This process (load generator and backends, on ONE tokio worker thread) is
//! pinned to CPU 0; every proxy runs under `taskset -c 1` with one thread of
//! work (`nbthread 1`, `worker_processes 1`, grpc-edge's tokio runtime
//! sizes itself from the affinity mask, so it gets one worker, and the floor
//! relay has one thread by construction).
//!
//! # How to read it
//!
//! - `calls/s`: CPU 0 does all client and backend work in every case, so it
//!   usually saturates first; a proxy lowers calls/s when its own core
//!   saturates or when the latency it adds holds calls in flight longer.
//! - `proxy CPU µs/call` (and the same as ms per 10k calls): the proxy's
//!   user+system CPU time (`/proc/<pid>/stat`, all its processes) during the
//!   measured window divided by the calls completed in it: the efficiency
//!   figure, comparable even when the proxy's core is not the bottleneck.
//! - `CPU0 %` / `CPU1 %`: how busy this process (load generator + backends)
//!   and the proxy were during the closed-loop window, in percent of one core.
//!   The core near 100% is the one that limits calls/s; when it is CPU 0,
//!   a proxy still changes calls/s through how it spreads calls over backend
//!   connections (fewer, fuller connections cost the backends less per call).
//! - `other load CPU0/1 %`: the share of CPU 0 and CPU 1 (from /proc/stat)
//!   used by anything but this process and the proxy, steal included. It
//!   should be near 0; when it is not, the report ends with a warning,
//!   because every other figure is then skewed.
//! - `idle RSS` is `VmRSS` after start-up, `peak RSS` is `VmHWM` after both
//!   profiles (summed over nginx's master and worker).
//! - `backend share`: how the calls in the closed-loop window spread over the
//!   three replicas (`direct` only ever reaches the first).
//! - With `--runs N` the whole set is measured N times (fresh proxies each
//!   time) and every figure is the median over the runs. grpc-edge's CPU
//!   per call is also given as a ratio to HAProxy's run by run, with the
//!   median of those ratios: the machine's speed drifts between runs more
//!   than within one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use grpc_edge::demo::{OrderDesk, REPLICAS, pb};
use h2::client::SendRequest;
use prost::Message;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;

#[path = "relay_floor/mod.rs"]
mod relay_floor;

/// Longest a single call may take before it counts as an error.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a proxy may take to accept connections after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause after a failed call, so a dead connection does not spin the core.
const ERROR_PAUSE: Duration = Duration::from_millis(1);
/// Above this much foreign load on CPU 0 or 1 in any window, the report warns.
const OTHER_LOAD_WARNING_PCT: f64 = 5.0;
/// Index in the served-by counts for an answer from no known replica.
const UNKNOWN_REPLICA: usize = REPLICAS.len();

const USAGE: &str = "usage: cargo bench --bench proxy -- [--duration 10s] [--warmup 2s] \
[--connections 2] [--streams 100] [--rate 5000] [--runs 3] [--peers haproxy,nginx] [--only TARGET,...]
  targets: direct, grpc-edge, grpc-edge-quiet, grpc-edge-h2, grpc-edge-web, grpc-edge-rest, grpc-edge-rest-body, relay-floor, haproxy, haproxy-logged, nginx (peers are skipped when not installed; --peers none skips them)";

fn main() -> ExitCode {
    // The `relay-floor` target's child process runs the relay instead (and
    // must not pin itself to CPU 0: it was started on CPU 1).
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.first().map(String::as_str) == Some(relay_floor::CHILD_FLAG) {
        return relay_floor::main(&raw[1..]);
    }
    // Before anything else: count the cores (pinning shrinks what the
    // process can see), then pin this process while it has one thread, so
    // every thread created later (the tokio worker) inherits CPU 0.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinned = pin_self_to_cpu0();

    let args = match parse_args(&raw) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let user_args: Vec<&str> = raw.iter().map(String::as_str).filter(|a| *a != "--bench").collect();
    if user_args.is_empty() {
        println!("command: cargo bench --bench proxy");
    } else {
        println!("command: cargo bench --bench proxy -- {}", user_args.join(" "));
    }
    println!(
        "machine: {cores} cores; bench process {}; proxies {}",
        if pinned {
            "pinned to CPU 0 (1 tokio worker)"
        } else {
            "NOT pinned (taskset failed; 1 tokio worker)"
        },
        if cores >= 2 {
            "under taskset -c 1"
        } else {
            "unpinned (only one core)"
        }
    );

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot build the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Ctrl-C or SIGTERM drops the benchmark future, and with it the guards
    // that kill the proxies (they run in their own process groups, so the
    // terminal's SIGINT does not reach them).
    let result = runtime.block_on(async {
        tokio::select! {
            result = bench(args, cores >= 2) => result,
            () = interrupted() => Err("interrupted".to_string()),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// Arguments

struct Args {
    duration: Duration,
    warmup: Duration,
    connections: usize,
    streams: usize,
    rate: u32,
    runs: usize,
    peers: Vec<Target>,
    only: Option<Vec<Target>>,
}

/// Parses the arguments after `--`; `Ok(None)` means `--help`.
fn parse_args(raw: &[String]) -> Result<Option<Args>, String> {
    let mut args = Args {
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(2),
        connections: 2,
        streams: 100,
        rate: 5000,
        runs: 3,
        peers: vec![Target::Haproxy, Target::Nginx],
        only: None,
    };
    let mut i = 0;
    while i < raw.len() {
        let arg = raw[i].as_str();
        i += 1;
        // cargo passes `--bench` to harness-less benches.
        if arg == "--bench" {
            continue;
        }
        if arg == "--help" || arg == "-h" {
            return Ok(None);
        }
        let (flag, value) = match arg.split_once('=') {
            Some((flag, value)) => (flag, value.to_string()),
            None => {
                let value = raw.get(i).ok_or_else(|| format!("{arg} needs a value"))?.clone();
                i += 1;
                (arg, value)
            }
        };
        match flag {
            "--duration" => args.duration = parse_duration(&value)?,
            "--warmup" => args.warmup = parse_duration(&value)?,
            "--connections" => args.connections = parse_positive(flag, &value)?,
            "--streams" => args.streams = parse_positive(flag, &value)?,
            "--rate" => args.rate = parse_positive(flag, &value)?,
            "--runs" => args.runs = parse_positive(flag, &value)?,
            "--peers" => {
                args.peers = parse_targets(&value)?;
                if let Some(t) = args.peers.iter().find(|t| !t.is_peer()) {
                    return Err(format!("--peers: {} is not a peer proxy", t.name()));
                }
            }
            "--only" => args.only = Some(parse_targets(&value)?),
            _ => return Err(format!("unknown argument {arg}")),
        }
    }
    if args.duration.is_zero() {
        return Err("--duration must be more than zero".into());
    }
    Ok(Some(args))
}

/// `10s`, `500ms`, `1.5s`, `2m`, or a bare number of seconds.
fn parse_duration(value: &str) -> Result<Duration, String> {
    let (number, scale) = if let Some(n) = value.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = value.strip_suffix('m') {
        (n, 60.0)
    } else {
        (value, 1.0)
    };
    number
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
        .map(|n| Duration::from_secs_f64(n * scale))
        .ok_or_else(|| format!("expected a duration like 10s or 500ms, got {value:?}"))
}

fn parse_positive<T: std::str::FromStr + Default + PartialOrd>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse::<T>()
        .ok()
        .filter(|n| *n > T::default())
        .ok_or_else(|| format!("{flag}: expected a positive integer, got {value:?}"))
}

/// A comma-separated list of target names; `none` or empty is no target.
fn parse_targets(value: &str) -> Result<Vec<Target>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty() && *name != "none")
        .map(|name| {
            Target::ALL.into_iter().find(|t| t.name() == name).ok_or_else(|| {
                let names: Vec<&str> = Target::ALL.iter().map(|t| t.name()).collect();
                format!("unknown target {name:?} ({})", names.join(", "))
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Targets and the whole benchmark

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Target {
    Direct,
    GrpcEdge,
    /// grpc-edge with per-call metrics and access logs off, like `haproxy`.
    GrpcEdgeQuiet,
    /// grpc-edge with the HTTP/2 frame relay off (`GRPC_EDGE_RELAY=off`).
    GrpcEdgeH2,
    /// grpc-edge, the same call as gRPC-Web (binary).
    GrpcEdgeWeb,
    /// grpc-edge, the same call as REST: `GET /v1/orders/1` (a path variable).
    GrpcEdgeRest,
    /// grpc-edge, a REST call with a path variable and a JSON body:
    /// `PATCH /v1/orders/2` `{"item":"grinder","quantity":1}` (UpdateOrder,
    /// answered with an Order like GetOrder's).
    GrpcEdgeRestBody,
    /// The floor relay (`relay_floor`), this binary run as a child process.
    RelayFloor,
    Haproxy,
    /// HAProxy writing an HTTP log line per call (`option httplog`) to a
    /// file, as the `grpc-edge*` targets with telemetry do.
    HaproxyLogged,
    Nginx,
}

/// How the load generator makes its GetOrder call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Grpc,
    GrpcWeb,
    RestGet,
    RestPatch,
}

impl Target {
    const ALL: [Target; 11] = [
        Target::Direct,
        Target::GrpcEdge,
        Target::GrpcEdgeQuiet,
        Target::GrpcEdgeH2,
        Target::GrpcEdgeWeb,
        Target::GrpcEdgeRest,
        Target::GrpcEdgeRestBody,
        Target::RelayFloor,
        Target::Haproxy,
        Target::HaproxyLogged,
        Target::Nginx,
    ];

    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::GrpcEdge => "grpc-edge",
            Target::GrpcEdgeQuiet => "grpc-edge-quiet",
            Target::GrpcEdgeH2 => "grpc-edge-h2",
            Target::GrpcEdgeWeb => "grpc-edge-web",
            Target::GrpcEdgeRest => "grpc-edge-rest",
            Target::GrpcEdgeRestBody => "grpc-edge-rest-body",
            Target::RelayFloor => "relay-floor",
            Target::Haproxy => "haproxy",
            Target::HaproxyLogged => "haproxy-logged",
            Target::Nginx => "nginx",
        }
    }

    fn is_peer(self) -> bool {
        matches!(self, Target::Haproxy | Target::HaproxyLogged | Target::Nginx)
    }

    /// The peer whose program this target runs.
    fn program_of(self) -> Target {
        match self {
            Target::HaproxyLogged => Target::Haproxy,
            other => other,
        }
    }

    fn protocol(self) -> Protocol {
        match self {
            Target::GrpcEdgeWeb => Protocol::GrpcWeb,
            Target::GrpcEdgeRest => Protocol::RestGet,
            Target::GrpcEdgeRestBody => Protocol::RestPatch,
            _ => Protocol::Grpc,
        }
    }
}

/// What every measurement needs to know.
struct Setup {
    duration: Duration,
    warmup: Duration,
    connections: usize,
    streams: usize,
    rate: u32,
    /// Whether proxies run under `taskset -c 1`.
    pin_proxies: bool,
    clock_ticks: f64,
    backends: Vec<SocketAddr>,
    /// Installed programs of the peers that take part.
    programs: BTreeMap<Target, PathBuf>,
}

async fn bench(args: Args, pin_proxies: bool) -> Result<(), String> {
    let mut programs = BTreeMap::new();
    for peer in [Target::Haproxy, Target::Nginx] {
        if !args.peers.contains(&peer) {
            continue;
        }
        match find_program(peer.name()) {
            Some(path) => {
                println!("{}: {} ({})", peer.name(), path.display(), version(peer, &path));
                programs.insert(peer, path);
            }
            None => println!("{}: not installed", peer.name()),
        }
    }
    let targets: Vec<Target> = Target::ALL
        .into_iter()
        .filter(|t| !t.is_peer() || programs.contains_key(&t.program_of()))
        .filter(|t| args.only.as_ref().is_none_or(|only| only.contains(t)))
        .collect();
    if targets.is_empty() {
        return Err("no target left to measure (check --only and --peers)".into());
    }
    let clock_ticks = clock_ticks_per_second();
    let setup = Setup {
        duration: args.duration,
        warmup: args.warmup,
        connections: args.connections,
        streams: args.streams,
        rate: args.rate,
        pin_proxies,
        clock_ticks,
        backends: start_backends()
            .await
            .map_err(|e| format!("cannot start the backends: {e}"))?,
        programs,
    };
    println!(
        "load: {} connections × {} streams, GetOrder (~60-byte answer); warmup {:?} + measured {:?} per profile; fixed rate {} calls/s; {} run(s), medians shown; CLK_TCK {clock_ticks}",
        setup.connections, setup.streams, setup.warmup, setup.duration, setup.rate, args.runs
    );
    println!(
        "targets: {}\n",
        targets.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
    );

    let mut results: BTreeMap<Target, Vec<Result<Sample, String>>> = BTreeMap::new();
    for run in 1..=args.runs {
        for &target in &targets {
            let started = Instant::now();
            let sample = measure_target(target, &setup).await;
            match &sample {
                Ok(s) => println!(
                    "run {run}/{}: {:<19} closed {:>8.0} calls/s p99 {:>6.2} ms | fixed rate p99 {:>6.2} ms | {} errors | other load CPU0/1 {:.0}/{:.0}% ({:.0?})",
                    args.runs,
                    target.name(),
                    s.closed.calls_per_s,
                    s.closed.p99_ms,
                    s.open.p99_ms,
                    s.closed.errors + s.open.errors,
                    s.closed.other_pct[0].max(s.open.other_pct[0]),
                    s.closed.other_pct[1].max(s.open.other_pct[1]),
                    started.elapsed()
                ),
                Err(e) => println!("run {run}/{}: {:<19} FAILED: {e}", args.runs, target.name()),
            }
            results.entry(target).or_default().push(sample);
        }
    }
    print_report(&results);
    Ok(())
}

/// One target, one run: start its proxy, measure both profiles, stop it.
async fn measure_target(target: Target, setup: &Setup) -> Result<Sample, String> {
    let proxy = match target {
        Target::Direct => None,
        _ => Some(start_proxy(target, setup).await?),
    };
    let addr = proxy.as_ref().map_or(setup.backends[0], |p| p.addr);
    let idle_rss_kib = proxy.as_ref().map(|p| memory_kib(&p.pids(), "VmRSS:"));
    // One call before the load, so a misconfigured proxy fails with its reason.
    let protocol = target.protocol();
    probe(addr, protocol).await.map_err(|e| {
        let log = proxy.as_ref().map(Proxy::log_tail).unwrap_or_default();
        format!("probe call failed: {e}{log}")
    })?;
    let closed = run_profile(addr, protocol, setup, None, proxy.as_ref()).await;
    let open = run_profile(addr, protocol, setup, Some(setup.rate), None).await;
    let peak_rss_kib = proxy.as_ref().map(|p| memory_kib(&p.pids(), "VmHWM:"));
    drop(proxy);
    Ok(Sample {
        closed: closed.closed_result(setup, idle_rss_kib, peak_rss_kib),
        open: open.open_result(setup),
        errors: merge_counts(closed.tally.errors, open.tally.errors),
    })
}

// ---------------------------------------------------------------------------
// Backends

/// Three `OrderDesk` replicas on loopback ports, served by tonic on this
/// process's runtime (so on CPU 0); they live until the runtime stops.
async fn start_backends() -> std::io::Result<Vec<SocketAddr>> {
    let mut addrs = Vec::new();
    for name in REPLICAS {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        addrs.push(listener.local_addr()?);
        // `serve_with_incoming` does not set TCP_NODELAY; without it Nagle
        // can hold small answers back waiting for an ACK.
        let incoming = TcpListenerStream::new(listener).map(|conn| {
            if let Ok(tcp) = &conn {
                let _ = tcp.set_nodelay(true);
            }
            conn
        });
        let server = tonic::transport::Server::builder()
            .add_service(OrderDesk::new(name).into_server())
            .serve_with_incoming(incoming);
        tokio::spawn(async move {
            if let Err(e) = server.await {
                eprintln!("backend {name} stopped: {e}");
            }
        });
    }
    Ok(addrs)
}

// ---------------------------------------------------------------------------
// Proxies as child processes

/// A proxy process (and, for nginx, its worker), killed when dropped.
struct Proxy {
    addr: SocketAddr,
    process: ProcessGuard,
    /// Config, logs and nginx's temp paths; removed after the process is gone
    /// (fields drop in order).
    dir: tempfile::TempDir,
}

impl Proxy {
    /// The proxy's process and all its descendants.
    fn pids(&self) -> Vec<u32> {
        process_tree(self.process.child.id())
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(10)..].join("\n    ");
        if tail.is_empty() {
            String::new()
        } else {
            format!("\n    proxy output:\n    {tail}")
        }
    }
}

/// Kills the child's whole process group on drop (also on panic and on
/// Ctrl-C, which drops the benchmark future), then reaps the child.
struct ProcessGuard {
    child: Child,
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        // The child leads its own process group (pgid == pid), so this also
        // reaches nginx's worker, which would outlive a killed master.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes the proxy's config, starts it on CPU 1 and waits until it accepts
/// connections.
async fn start_proxy(target: Target, setup: &Setup) -> Result<Proxy, String> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("bench-{}-", target.name()))
        .tempdir()
        .map_err(|e| format!("cannot create a temp dir: {e}"))?;
    let addr = free_port().map_err(|e| format!("cannot find a free port: {e}"))?;
    let (program, args) = proxy_command(target, setup, addr, dir.path())?;
    let log = std::fs::File::create(dir.path().join("proxy.log")).map_err(|e| e.to_string())?;
    let mut command = if setup.pin_proxies {
        // taskset execs the program, so the child's pid is the proxy's.
        let mut command = Command::new("taskset");
        command.args(["-c", "1"]).arg(&program);
        command
    } else {
        Command::new(&program)
    };
    command
        .args(&args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .process_group(0);
    let child = command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
    let mut proxy = Proxy {
        addr,
        process: ProcessGuard { child },
        dir,
    };
    if let Err(e) = wait_until_listening(&mut proxy).await {
        return Err(format!("{e}{}", proxy.log_tail()));
    }
    // Let it finish starting (nginx forks its worker after binding) before
    // idle memory is read.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(proxy)
}

/// The program and arguments for a proxy, after writing its config into `dir`.
fn proxy_command(
    target: Target,
    setup: &Setup,
    addr: SocketAddr,
    dir: &Path,
) -> Result<(PathBuf, Vec<String>), String> {
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok::<_, String>(path.display().to_string())
    };
    let program = |t: Target| setup.programs.get(&t.program_of()).cloned().ok_or("not installed");
    match target {
        Target::Direct => Err("direct has no proxy".into()),
        Target::GrpcEdge
        | Target::GrpcEdgeQuiet
        | Target::GrpcEdgeWeb
        | Target::GrpcEdgeRest
        | Target::GrpcEdgeRestBody => {
            let telemetry = target != Target::GrpcEdgeQuiet;
            let config = write("gateway.yaml", grpc_edge_yaml(addr, &setup.backends, telemetry))?;
            let program = PathBuf::from(env!("CARGO_BIN_EXE_grpc-edge"));
            Ok((program, vec!["serve".into(), "--config".into(), config]))
        }
        Target::GrpcEdgeH2 => {
            let config = write("gateway.yaml", grpc_edge_yaml(addr, &setup.backends, true))?;
            let gateway = env!("CARGO_BIN_EXE_grpc-edge").to_string();
            // env(1) execs the gateway, so the child's pid stays the proxy's.
            let args = ["GRPC_EDGE_RELAY=off", &gateway, "serve", "--config", &config];
            Ok((PathBuf::from("/usr/bin/env"), args.map(String::from).to_vec()))
        }
        Target::RelayFloor => {
            // This very binary, even if cargo has rebuilt (and so deleted)
            // the file `current_exe()` names since this run started.
            let program = PathBuf::from(format!("/proc/{}/exe", std::process::id()));
            let upstreams: Vec<String> = setup.backends.iter().map(SocketAddr::to_string).collect();
            let args = [
                relay_floor::CHILD_FLAG,
                "--listen",
                &addr.to_string(),
                "--upstreams",
                &upstreams.join(","),
            ];
            Ok((program, args.map(String::from).to_vec()))
        }
        Target::Haproxy | Target::HaproxyLogged => {
            let logged = target == Target::HaproxyLogged;
            let config = write("haproxy.cfg", haproxy_config(addr, &setup.backends, logged))?;
            // -db: stay in the foreground, so the child is the proxy.
            Ok((program(target)?, vec!["-db".into(), "-f".into(), config]))
        }
        Target::Nginx => {
            let prefix = dir.display().to_string();
            let config = write("nginx.conf", nginx_config(addr, &setup.backends, dir))?;
            let error_log = format!("{prefix}/error.log");
            let args = ["-p", &prefix, "-c", &config, "-e", &error_log];
            Ok((program(target)?, args.map(String::from).to_vec()))
        }
    }
}

/// The gateway's config: defaults (metrics and an access log line per
/// call on), or with `telemetry` false, both off.
fn grpc_edge_yaml(listen: SocketAddr, backends: &[SocketAddr], telemetry: bool) -> String {
    let endpoints: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    let observability = if telemetry {
        ""
    } else {
        "observability:\n  metrics: false\n  access_log:\n    enabled: false\n"
    };
    format!(
        "listen: {listen}\n\
         descriptors:\n  - {}\n\
         upstreams:\n  orders:\n    endpoints: [{}]\n\
         routes:\n  - match: demo.v1.OrderService\n    upstream: orders\n{observability}",
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("descriptors/demo.binpb")
            .display(),
        endpoints.join(", ")
    )
}

/// HAProxy's config; with `logged`, an HTTP log line per call to stdout
/// (the proxy's log file), as grpc-edge's access log goes to its file.
fn haproxy_config(listen: SocketAddr, backends: &[SocketAddr], logged: bool) -> String {
    let servers: String = backends
        .iter()
        .zip(REPLICAS)
        .map(|(addr, name)| format!("    server {name} {addr} proto h2\n"))
        .collect();
    // maxconn: HAProxy asks for 2 × maxconn file descriptors and refuses to
    // start when the limit is lower; 4096 is plenty for a few hundred streams.
    let (global_log, defaults_log) = match logged {
        true => (
            "    log stdout format raw local0 info\n",
            "    log global\n    option httplog\n",
        ),
        false => ("", ""),
    };
    format!(
        "global\n    nbthread 1\n    maxconn 4096\n{global_log}\n\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n{defaults_log}\n\
         frontend grpc\n    bind {listen} proto h2\n    default_backend orders\n\n\
         backend orders\n    balance roundrobin\n{servers}"
    )
}

fn nginx_config(listen: SocketAddr, backends: &[SocketAddr], prefix: &Path) -> String {
    let p = prefix.display();
    let servers: String = backends
        .iter()
        .map(|addr| format!("        server {addr};\n"))
        .collect();
    // grpc_pass does not multiplex: each call in flight holds its own
    // upstream connection, and `keepalive 100` keeps at most 100 of them
    // idle, so with more calls in flight than that nginx also pays for
    // connection set-up and tear-down (visible as sockets in TIME_WAIT).
    // keepalive_requests: nginx 1.22 closes a client connection (GOAWAY)
    // after 1000 requests and an upstream keepalive connection after 1000;
    // raised so neither reconnecting nor failed calls skew the numbers.
    format!(
        "worker_processes 1;\ndaemon off;\npid {p}/nginx.pid;\nerror_log {p}/error.log warn;\n\
         events {{\n    worker_connections 4096;\n}}\n\
         http {{\n    access_log off;\n\
         \x20   client_body_temp_path {p}/client_body;\n    proxy_temp_path {p}/proxy;\n\
         \x20   fastcgi_temp_path {p}/fastcgi;\n    uwsgi_temp_path {p}/uwsgi;\n    scgi_temp_path {p}/scgi;\n\
         \x20   upstream orders {{\n{servers}        keepalive 100;\n        keepalive_requests 100000000;\n    }}\n\
         \x20   server {{\n        listen {listen} http2;\n        keepalive_requests 100000000;\n\
         \x20       location / {{\n            grpc_pass grpc://orders;\n        }}\n    }}\n}}\n"
    )
}

/// A loopback address with a port nothing listens on right now.
fn free_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

async fn wait_until_listening(proxy: &mut Proxy) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = proxy.process.child.try_wait() {
            return Err(format!("exited at start-up ({status})"));
        }
        if tokio::net::TcpStream::connect(proxy.addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("not listening on {} after {START_TIMEOUT:?}", proxy.addr))
}

/// `/usr/sbin/<name>`, else the first `<name>` on PATH.
fn find_program(name: &str) -> Option<PathBuf> {
    let sbin = Path::new("/usr/sbin").join(name);
    if sbin.is_file() {
        return Some(sbin);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// The first line of `haproxy -v` / `nginx -v` (nginx prints to stderr).
fn version(peer: Target, program: &Path) -> String {
    let Ok(output) = Command::new(program).arg("-v").stdin(Stdio::null()).output() else {
        return "version unknown".into();
    };
    let text = if peer == Target::Nginx {
        output.stderr
    } else {
        output.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .unwrap_or("version unknown")
        .trim()
        .to_string()
}

// ---------------------------------------------------------------------------
// /proc: CPU placement, CPU time, memory

/// `taskset -p -c 0 <own pid>`; true when it worked.
fn pin_self_to_cpu0() -> bool {
    Command::new("taskset")
        .args(["-p", "-c", "0", &std::process::id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// `root` and every descendant, from `/proc/<pid>/task/*/children`.
fn process_tree(root: u32) -> Vec<u32> {
    let mut pids = vec![root];
    let mut i = 0;
    // Bounded: a process tree cannot hold more pids than pid_max, and each
    // pid is visited once.
    while i < pids.len() && pids.len() < 4096 {
        let pid = pids[i];
        i += 1;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            pids.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        }
    }
    pids
}

/// utime + stime (fields 14 and 15 of /proc/<pid>/stat), in clock ticks, summed.
fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // The command name (field 2) may contain spaces; count from after it.
            let after_name = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = after_name.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .sum()
}

/// (busy, total) ticks of one CPU from its `cpuN` line in /proc/stat; idle
/// and iowait are not busy, everything else (steal included) is.
fn core_ticks(cpu: usize) -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let prefix = format!("cpu{cpu} ");
    let Some(line) = stat.lines().find(|l| l.starts_with(&prefix)) else {
        return (0, 0);
    };
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// A `/proc/<pid>/status` memory field (`VmRSS:`, `VmHWM:`), in KiB, summed.
fn memory_kib(pids: &[u32], field: &str) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find(|l| l.starts_with(field))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

// ---------------------------------------------------------------------------
// The load generator (h2, no tonic)

/// The one request every call sends, built once.
struct CallSpec {
    protocol: Protocol,
    method: http::Method,
    uri: http::Uri,
    headers: http::HeaderMap,
    /// The request body: a gRPC frame (0, u32 BE length, the message), JSON, or nothing.
    body: Bytes,
}

impl CallSpec {
    fn new(addr: SocketAddr, protocol: Protocol) -> Self {
        let message = pb::GetOrderRequest {
            name: "orders/1".into(),
        }
        .encode_to_vec();
        let mut frame = Vec::with_capacity(5 + message.len());
        frame.push(0);
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(&message);
        let mut headers = http::HeaderMap::new();
        let grpc_path = format!("http://{addr}/demo.v1.OrderService/GetOrder");
        let (method, uri, body) = match protocol {
            Protocol::Grpc => {
                headers.insert("content-type", "application/grpc".parse().unwrap());
                headers.insert("te", "trailers".parse().unwrap());
                (http::Method::POST, grpc_path, Bytes::from(frame))
            }
            Protocol::GrpcWeb => {
                headers.insert("content-type", "application/grpc-web+proto".parse().unwrap());
                headers.insert("x-grpc-web", "1".parse().unwrap());
                (http::Method::POST, grpc_path, Bytes::from(frame))
            }
            Protocol::RestGet => (http::Method::GET, format!("http://{addr}/v1/orders/1"), Bytes::new()),
            Protocol::RestPatch => {
                headers.insert("content-type", "application/json".parse().unwrap());
                let uri = format!("http://{addr}/v1/orders/2");
                (
                    http::Method::PATCH,
                    uri,
                    Bytes::from_static(br#"{"item":"grinder","quantity":1}"#),
                )
            }
        };
        CallSpec {
            protocol,
            method,
            uri: uri.parse().unwrap(),
            headers,
            body,
        }
    }

    fn request(&self) -> http::Request<()> {
        let mut request = http::Request::new(());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// What the stream tasks saw inside the measured window.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: BTreeMap<String, u64>,
    /// Answers per replica (`REPLICAS` order), then unknown.
    served: [u64; REPLICAS.len() + 1],
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.errors = merge_counts(std::mem::take(&mut self.errors), other.errors);
        for (mine, theirs) in self.served.iter_mut().zip(other.served) {
            *mine += theirs;
        }
    }

    fn error(&mut self, kind: String) {
        *self.errors.entry(kind).or_default() += 1;
    }
}

/// Warm-up ends, measuring starts, at `measure_from`; no call starts after `end`.
#[derive(Clone, Copy)]
struct Window {
    measure_from: Instant,
    end: Instant,
}

/// The load of one profile and what it measured.
struct ProfileRun {
    tally: Tally,
    /// Proxy CPU ticks over the measured window (closed loop only).
    cpu_ticks: Option<u64>,
    /// This process's CPU ticks (load generator + backends, CPU 0) over the window.
    bench_ticks: u64,
    /// Percent of CPU 0 and CPU 1 used by anything but this process and the proxy.
    other_pct: [f64; 2],
}

/// CPU counters read at one instant, to subtract across the measured window.
struct CpuSnapshot {
    proxy: u64,
    bench: u64,
    /// (busy, total) ticks of CPU 0 and CPU 1 from /proc/stat.
    cores: [(u64, u64); 2],
}

impl CpuSnapshot {
    fn take(proxy_pids: &[u32]) -> Self {
        CpuSnapshot {
            proxy: cpu_ticks(proxy_pids),
            bench: cpu_ticks(&[std::process::id()]),
            cores: [core_ticks(0), core_ticks(1)],
        }
    }

    /// The window's CPU figures, given the snapshot at its start.
    fn since(&self, start: &CpuSnapshot) -> (u64, u64, [f64; 2]) {
        let proxy = self.proxy.saturating_sub(start.proxy);
        let bench = self.bench.saturating_sub(start.bench);
        // What a core did beyond our own work on it is someone else's load
        // (or the hypervisor's steal), which skews every figure.
        let other = |core: usize, ours: u64| {
            let busy = self.cores[core].0.saturating_sub(start.cores[core].0);
            let total = self.cores[core].1.saturating_sub(start.cores[core].1);
            100.0 * busy.saturating_sub(ours) as f64 / total.max(1) as f64
        };
        (proxy, bench, [other(0, bench), other(1, proxy)])
    }
}

/// Runs one profile against `addr`: closed loop when `rate` is None, else
/// that many calls/s in total. Samples `proxy`'s CPU time over the window.
async fn run_profile(
    addr: SocketAddr,
    protocol: Protocol,
    setup: &Setup,
    rate: Option<u32>,
    proxy: Option<&Proxy>,
) -> ProfileRun {
    let spec = Arc::new(CallSpec::new(addr, protocol));
    let mut tally = Tally::default();
    let (senders, drivers) = connect_all(addr, setup.connections, &mut tally).await;
    let start = Instant::now();
    let window = Window {
        measure_from: start + setup.warmup,
        end: start + setup.warmup + setup.duration,
    };
    let total_streams = senders.len() * setup.streams;
    let mut tasks = JoinSet::new();
    for (c, send) in senders.iter().enumerate() {
        for s in 0..setup.streams {
            let pace = rate.map(|rate| {
                let index = c * setup.streams + s;
                stream_ticker(start, rate, index, total_streams)
            });
            tasks.spawn(stream_loop(send.clone(), spec.clone(), window, pace));
        }
    }
    drop(senders);

    let pids = proxy.map(Proxy::pids).unwrap_or_default();
    tokio::time::sleep_until(window.measure_from.into()).await;
    let before = CpuSnapshot::take(&pids);
    tokio::time::sleep_until(window.end.into()).await;
    let (proxy_ticks, bench_ticks, other_pct) = CpuSnapshot::take(&pids).since(&before);

    // Every stream stops within CALL_TIMEOUT of the end; abort stragglers.
    let collect = async {
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(stream) => tally.merge(stream),
                Err(e) => tally.error(format!("stream task failed: {e}")),
            }
        }
    };
    let _ = tokio::time::timeout(CALL_TIMEOUT + Duration::from_secs(1), collect).await;
    tasks.abort_all();
    for driver in drivers {
        driver.abort();
    }
    ProfileRun {
        tally,
        cpu_ticks: proxy.map(|_| proxy_ticks),
        bench_ticks,
        other_pct,
    }
}

/// Opens `connections` HTTP/2 connections; failures are counted in `tally`.
async fn connect_all(
    addr: SocketAddr,
    connections: usize,
    tally: &mut Tally,
) -> (Vec<SendRequest<Bytes>>, Vec<tokio::task::JoinHandle<()>>) {
    let mut senders = Vec::new();
    let mut drivers = Vec::new();
    for _ in 0..connections {
        match tokio::time::timeout(CALL_TIMEOUT, connect(addr)).await {
            Ok(Ok((send, driver))) => {
                senders.push(send);
                drivers.push(driver);
            }
            Ok(Err(e)) => tally.error(format!("connect: {e}")),
            Err(_) => tally.error("connect: timed out".into()),
        }
    }
    (senders, drivers)
}

async fn connect(addr: SocketAddr) -> Result<(SendRequest<Bytes>, tokio::task::JoinHandle<()>), String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let (send, connection) = h2::client::handshake(tcp).await.map_err(|e| e.to_string())?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((send, driver))
}

/// The open-loop pace of one stream: every `total_streams / rate` seconds,
/// with the streams' first ticks staggered evenly over one period so the
/// total arrives smoothly rather than in bursts of `total_streams`.
///
/// `MissedTickBehavior::Skip`: a stream whose previous call took longer than
/// a period skips the ticks it missed instead of firing them back to back
/// (`Burst`), so the offered rate never exceeds `--rate`; the achieved rate
/// is printed next to the latencies, so a shortfall shows.
fn stream_ticker(start: Instant, rate: u32, index: usize, total_streams: usize) -> tokio::time::Interval {
    let period = Duration::from_secs_f64(total_streams as f64 / f64::from(rate));
    let offset = period.mul_f64(index as f64 / total_streams as f64);
    let mut ticker = tokio::time::interval_at((start + offset).into(), period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    ticker
}

/// One stream: unary calls one after another (closed loop) or on each tick
/// of `pace` (open loop) until the window ends.
async fn stream_loop(
    send: SendRequest<Bytes>,
    spec: Arc<CallSpec>,
    window: Window,
    mut pace: Option<tokio::time::Interval>,
) -> Tally {
    let mut tally = Tally::default();
    let mut body = Vec::with_capacity(128);
    loop {
        if let Some(ticker) = pace.as_mut() {
            ticker.tick().await;
        }
        let started = Instant::now();
        if started >= window.end {
            return tally;
        }
        let result = tokio::time::timeout(CALL_TIMEOUT, call(&send, &spec, &mut body)).await;
        let finished = Instant::now();
        let measured = started >= window.measure_from && finished <= window.end;
        let failed = match result {
            Ok(Ok(replica)) => {
                if measured {
                    let micros = finished.duration_since(started).as_micros();
                    tally.latencies_us.push(micros.min(u128::from(u32::MAX)) as u32);
                    tally.served[replica] += 1;
                }
                false
            }
            Ok(Err(e)) => {
                if measured {
                    tally.error(e);
                }
                true
            }
            Err(_) => {
                if measured {
                    tally.error(format!("timed out after {CALL_TIMEOUT:?}"));
                }
                true
            }
        };
        if failed {
            tokio::time::sleep(ERROR_PAUSE).await;
        }
    }
}

/// One unary call; returns the index of the replica that answered.
async fn call(send: &SendRequest<Bytes>, spec: &CallSpec, body: &mut Vec<u8>) -> Result<usize, String> {
    let h2_error = |e: h2::Error| format!("h2: {e}");
    let mut send = send.clone().ready().await.map_err(h2_error)?;
    let no_body = spec.body.is_empty();
    let (response, mut request_body) = send.send_request(spec.request(), no_body).map_err(h2_error)?;
    if !no_body {
        request_body.send_data(spec.body.clone(), true).map_err(h2_error)?;
    }
    let (head, mut response_body) = response.await.map_err(h2_error)?.into_parts();
    if head.status != http::StatusCode::OK {
        return Err(format!("HTTP status {}", head.status));
    }
    if spec.protocol != Protocol::Grpc {
        body.clear();
        while let Some(chunk) = response_body.data().await {
            let chunk = chunk.map_err(h2_error)?;
            let _ = response_body.flow_control().release_capacity(chunk.len());
            body.extend_from_slice(&chunk);
        }
        return match spec.protocol {
            Protocol::GrpcWeb => grpc_web_replica(&head.headers, body),
            _ => rest_replica(body),
        };
    }
    // A trailers-only answer (always an error here) has grpc-status in the head.
    if head.headers.contains_key("grpc-status") {
        check_grpc_status(&head.headers)?;
    }
    body.clear();
    while let Some(chunk) = response_body.data().await {
        let chunk = chunk.map_err(h2_error)?;
        // Give the window back, or the connection stalls after 64 KiB.
        let _ = response_body.flow_control().release_capacity(chunk.len());
        body.extend_from_slice(&chunk);
    }
    match response_body.trailers().await.map_err(h2_error)? {
        Some(trailers) => check_grpc_status(&trailers)?,
        None if head.headers.contains_key("grpc-status") => {}
        None => return Err("no grpc-status".into()),
    }
    replica_of(body)
}

fn check_grpc_status(headers: &http::HeaderMap) -> Result<(), String> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    match get("grpc-status") {
        "0" => Ok(()),
        code => {
            let message: String = get("grpc-message").chars().take(80).collect();
            Err(format!("grpc-status {code}: {message}"))
        }
    }
}

/// A gRPC-Web answer: the `Order` frame, then the trailer frame with
/// `grpc-status: 0` (or a trailers-only error in the headers).
fn grpc_web_replica(headers: &http::HeaderMap, body: &[u8]) -> Result<usize, String> {
    if headers.contains_key("grpc-status") {
        check_grpc_status(headers)?;
    }
    let Some(length) = body.get(1..5) else {
        return Err("gRPC-Web answer shorter than a frame header".into());
    };
    let end = 5 + u32::from_be_bytes([length[0], length[1], length[2], length[3]]) as usize;
    let (message, trailers) = body.split_at_checked(end).ok_or("gRPC-Web message frame truncated")?;
    let trailer_text = trailers.get(5..).map(String::from_utf8_lossy).unwrap_or_default();
    if trailers.first() != Some(&0x80) || !trailer_text.contains("grpc-status:0") {
        return Err(format!("gRPC-Web trailers are not OK: {trailer_text:?}"));
    }
    replica_of(message)
}

/// A REST answer: the `Order` as JSON.
fn rest_replica(body: &[u8]) -> Result<usize, String> {
    let order: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("bad JSON answer: {e}"))?;
    let served_by = order["servedBy"].as_str().unwrap_or_default();
    Ok(REPLICAS.iter().position(|r| *r == served_by).unwrap_or(UNKNOWN_REPLICA))
}

/// Decodes the `Order` in a single gRPC frame and maps `served_by` to a replica.
fn replica_of(frame: &[u8]) -> Result<usize, String> {
    let Some((&[0], rest)) = frame.split_first_chunk::<1>() else {
        return Err("answer is not one uncompressed gRPC frame".into());
    };
    let Some((length, message)) = rest.split_first_chunk::<4>() else {
        return Err("answer shorter than a gRPC frame header".into());
    };
    if message.len() != u32::from_be_bytes(*length) as usize {
        return Err("answer length does not match its frame header".into());
    }
    let order = pb::Order::decode(message).map_err(|e| format!("bad Order: {e}"))?;
    Ok(REPLICAS
        .iter()
        .position(|r| *r == order.served_by)
        .unwrap_or(UNKNOWN_REPLICA))
}

/// One call on a fresh connection: does the path work at all?
async fn probe(addr: SocketAddr, protocol: Protocol) -> Result<(), String> {
    let attempt = async {
        let (send, driver) = connect(addr).await?;
        let result = call(&send, &CallSpec::new(addr, protocol), &mut Vec::new()).await;
        driver.abort();
        result.map(drop)
    };
    tokio::time::timeout(CALL_TIMEOUT, attempt)
        .await
        .map_err(|_| format!("timed out after {CALL_TIMEOUT:?}"))?
}

// ---------------------------------------------------------------------------
// Results

/// One target's figures from one run.
struct Sample {
    closed: ClosedResult,
    open: OpenResult,
    errors: BTreeMap<String, u64>,
}

struct ClosedResult {
    calls_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    cpu_us_per_call: Option<f64>,
    /// How busy each core was: this process on CPU 0, the proxy on CPU 1.
    bench_cpu_pct: f64,
    proxy_cpu_pct: Option<f64>,
    /// CPU 0 and CPU 1 used by other processes, percent.
    other_pct: [f64; 2],
    idle_rss_mib: Option<f64>,
    peak_rss_mib: Option<f64>,
    /// Percent of answers per replica.
    shares: [f64; REPLICAS.len()],
}

struct OpenResult {
    calls_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    other_pct: [f64; 2],
    errors: u64,
}

impl ProfileRun {
    fn closed_result(&self, setup: &Setup, idle_rss_kib: Option<u64>, peak_rss_kib: Option<u64>) -> ClosedResult {
        let (p50_ms, p99_ms) = percentiles_ms(&self.tally.latencies_us);
        let calls = self.tally.latencies_us.len() as f64;
        let answered: u64 = self.tally.served.iter().sum();
        let mut shares = [0.0; REPLICAS.len()];
        for (share, n) in shares.iter_mut().zip(self.tally.served) {
            *share = 100.0 * n as f64 / answered.max(1) as f64;
        }
        let mib = |kib: u64| kib as f64 / 1024.0;
        let busy_pct = |ticks: u64| 100.0 * ticks as f64 / setup.clock_ticks / setup.duration.as_secs_f64();
        ClosedResult {
            calls_per_s: calls / setup.duration.as_secs_f64(),
            p50_ms,
            p99_ms,
            errors: self.tally.errors.values().sum(),
            cpu_us_per_call: self
                .cpu_ticks
                .filter(|_| calls > 0.0)
                .map(|ticks| ticks as f64 / setup.clock_ticks * 1e6 / calls),
            bench_cpu_pct: busy_pct(self.bench_ticks),
            proxy_cpu_pct: self.cpu_ticks.map(busy_pct),
            other_pct: self.other_pct,
            idle_rss_mib: idle_rss_kib.map(mib),
            peak_rss_mib: peak_rss_kib.map(mib),
            shares,
        }
    }

    fn open_result(&self, setup: &Setup) -> OpenResult {
        let (p50_ms, p99_ms) = percentiles_ms(&self.tally.latencies_us);
        OpenResult {
            calls_per_s: self.tally.latencies_us.len() as f64 / setup.duration.as_secs_f64(),
            p50_ms,
            p99_ms,
            other_pct: self.other_pct,
            errors: self.tally.errors.values().sum(),
        }
    }
}

/// p50 and p99 in milliseconds (NaN when nothing was measured).
fn percentiles_ms(latencies_us: &[u32]) -> (f64, f64) {
    if latencies_us.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut sorted = latencies_us.to_vec();
    sorted.sort_unstable();
    let at = |q: f64| {
        let index = ((sorted.len() - 1) as f64 * q).round() as usize;
        f64::from(sorted[index]) / 1000.0
    };
    (at(0.50), at(0.99))
}

fn merge_counts(mut a: BTreeMap<String, u64>, b: BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    for (kind, n) in b {
        *a.entry(kind).or_default() += n;
    }
    a
}

/// The median of the values present (None when there are none).
fn median(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let mut values: Vec<f64> = values.into_iter().flatten().filter(|v| !v.is_nan()).collect();
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// Median figures of one target over the runs that succeeded.
struct Summary {
    closed_calls_per_s: Option<f64>,
    closed_p50: Option<f64>,
    closed_p99: Option<f64>,
    closed_errors: Option<f64>,
    cpu_us_per_call: Option<f64>,
    bench_cpu_pct: Option<f64>,
    proxy_cpu_pct: Option<f64>,
    closed_other: [Option<f64>; 2],
    idle_rss_mib: Option<f64>,
    peak_rss_mib: Option<f64>,
    shares: Vec<Option<f64>>,
    open_calls_per_s: Option<f64>,
    open_p50: Option<f64>,
    open_p99: Option<f64>,
    open_other: [Option<f64>; 2],
    open_errors: Option<f64>,
}

impl Summary {
    fn of(samples: &[&Sample]) -> Summary {
        let m = |f: &dyn Fn(&Sample) -> Option<f64>| median(samples.iter().map(|s| f(s)));
        Summary {
            closed_calls_per_s: m(&|s| Some(s.closed.calls_per_s)),
            closed_p50: m(&|s| Some(s.closed.p50_ms)),
            closed_p99: m(&|s| Some(s.closed.p99_ms)),
            closed_errors: m(&|s| Some(s.closed.errors as f64)),
            cpu_us_per_call: m(&|s| s.closed.cpu_us_per_call),
            bench_cpu_pct: m(&|s| Some(s.closed.bench_cpu_pct)),
            proxy_cpu_pct: m(&|s| s.closed.proxy_cpu_pct),
            closed_other: [0, 1].map(|i| m(&|s| Some(s.closed.other_pct[i]))),
            idle_rss_mib: m(&|s| s.closed.idle_rss_mib),
            peak_rss_mib: m(&|s| s.closed.peak_rss_mib),
            shares: (0..REPLICAS.len()).map(|i| m(&|s| Some(s.closed.shares[i]))).collect(),
            open_calls_per_s: m(&|s| Some(s.open.calls_per_s)),
            open_p50: m(&|s| Some(s.open.p50_ms)),
            open_p99: m(&|s| Some(s.open.p99_ms)),
            open_other: [0, 1].map(|i| m(&|s| Some(s.open.other_pct[i]))),
            open_errors: m(&|s| Some(s.open.errors as f64)),
        }
    }
}

fn print_report(results: &BTreeMap<Target, Vec<Result<Sample, String>>>) {
    let mut summaries = BTreeMap::new();
    for (&target, samples) in results {
        let ok: Vec<&Sample> = samples.iter().filter_map(|s| s.as_ref().ok()).collect();
        let failed = samples.len() - ok.len();
        if failed > 0 {
            println!("\n{}: {failed} of {} runs failed", target.name(), samples.len());
        }
        if !ok.is_empty() {
            summaries.insert(target, Summary::of(&ok));
        }
    }
    print_closed_table(&summaries);
    print_ratios(&summaries);
    print_paired_ratios(results);
    print_open_table(&summaries);
    print_errors(results);
    warn_about_other_load(results);
}

/// CPU per call of grpc-edge against HAProxy within each run. A run
/// measures every target within a minute or two, so its ratio is not moved
/// by the machine getting slower or faster between runs, as the ratio of
/// the medians over all runs can be.
fn print_paired_ratios(results: &BTreeMap<Target, Vec<Result<Sample, String>>>) {
    let cpu = |target: Target| -> Vec<Option<f64>> {
        let samples = results.get(&target).map(Vec::as_slice).unwrap_or_default();
        samples
            .iter()
            .map(|s| s.as_ref().ok().and_then(|s| s.closed.cpu_us_per_call))
            .collect()
    };
    let haproxy = cpu(Target::Haproxy);
    for (target, label) in [
        (Target::GrpcEdge, "grpc-edge"),
        (Target::GrpcEdgeQuiet, "grpc-edge-quiet"),
    ] {
        let ratios: Vec<f64> = cpu(target)
            .iter()
            .zip(&haproxy)
            .filter_map(|(edge, haproxy)| match (edge, haproxy) {
                (Some(edge), Some(haproxy)) if *haproxy > 0.0 => Some(edge / haproxy),
                _ => None,
            })
            .collect();
        if ratios.len() < 2 {
            continue;
        }
        let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "{label} CPU/call ÷ haproxy CPU/call, run by run: {} (median {})",
            each.join(" "),
            fmt(median(ratios.iter().map(|r| Some(*r))), 2)
        );
    }
}

/// Other processes on the benchmark's cores skew every figure; say so.
fn warn_about_other_load(results: &BTreeMap<Target, Vec<Result<Sample, String>>>) {
    let worst = results
        .values()
        .flatten()
        .filter_map(|s| s.as_ref().ok())
        .flat_map(|s| s.closed.other_pct.into_iter().chain(s.open.other_pct))
        .fold(0.0, f64::max);
    if worst > OTHER_LOAD_WARNING_PCT {
        println!(
            "\nWARNING: other processes (or hypervisor steal) used up to {worst:.0}% of CPU 0 or CPU 1 \
             during measured windows; the figures above are skewed. Re-run on a quiet machine."
        );
    }
}

fn print_closed_table(summaries: &BTreeMap<Target, Summary>) {
    println!("\nclosed loop (max throughput), medians:");
    let header = [
        "target",
        "calls/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "proxy CPU µs/call",
        "CPU ms per 10k calls",
        "CPU0 % (bench)",
        "CPU1 % (proxy)",
        "other load CPU0/1 %",
        "idle RSS MiB",
        "peak RSS MiB",
        "backend share a/b/c %",
    ];
    let rows: Vec<Vec<String>> = summaries
        .iter()
        .map(|(target, s)| {
            let shares: Vec<String> = s.shares.iter().map(|v| fmt(*v, 0)).collect();
            vec![
                target.name().to_string(),
                fmt(s.closed_calls_per_s, 0),
                fmt(s.closed_p50, 2),
                fmt(s.closed_p99, 2),
                fmt(s.closed_errors, 0),
                fmt(s.cpu_us_per_call, 1),
                fmt(s.cpu_us_per_call.map(|us| us * 10.0), 0),
                fmt(s.bench_cpu_pct, 0),
                fmt(s.proxy_cpu_pct, 0),
                fmt_pair(s.closed_other),
                fmt(s.idle_rss_mib, 1),
                fmt(s.peak_rss_mib, 1),
                shares.join("/"),
            ]
        })
        .collect();
    print_table(&header, &rows);
}

fn print_ratios(summaries: &BTreeMap<Target, Summary>) {
    let get = |t: Target, f: fn(&Summary) -> Option<f64>| summaries.get(&t).and_then(f);
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    };
    let edge_cpu = get(Target::GrpcEdge, |s| s.cpu_us_per_call);
    let floor_cpu = get(Target::RelayFloor, |s| s.cpu_us_per_call);
    println!(
        "\ngrpc-edge calls/s ÷ direct calls/s:  {}",
        ratio(
            get(Target::GrpcEdge, |s| s.closed_calls_per_s),
            get(Target::Direct, |s| s.closed_calls_per_s)
        )
    );
    println!(
        "grpc-edge CPU/call ÷ haproxy CPU/call: {}",
        ratio(edge_cpu, get(Target::Haproxy, |s| s.cpu_us_per_call))
    );
    println!(
        "grpc-edge CPU/call ÷ nginx CPU/call:   {}",
        ratio(edge_cpu, get(Target::Nginx, |s| s.cpu_us_per_call))
    );
    println!(
        "grpc-edge CPU/call ÷ haproxy-logged CPU/call (both log every call): {}",
        ratio(edge_cpu, get(Target::HaproxyLogged, |s| s.cpu_us_per_call))
    );
    println!(
        "grpc-edge-quiet CPU/call ÷ haproxy CPU/call (neither logs): {}",
        ratio(
            get(Target::GrpcEdgeQuiet, |s| s.cpu_us_per_call),
            get(Target::Haproxy, |s| s.cpu_us_per_call)
        )
    );
    println!(
        "grpc-edge-h2 CPU/call ÷ grpc-edge CPU/call (the relay off ÷ on): {}",
        ratio(get(Target::GrpcEdgeH2, |s| s.cpu_us_per_call), edge_cpu)
    );
    println!(
        "grpc-edge CPU/call ÷ relay-floor CPU/call: {}",
        ratio(edge_cpu, floor_cpu)
    );
    println!(
        "relay-floor CPU/call ÷ haproxy CPU/call:   {}",
        ratio(floor_cpu, get(Target::Haproxy, |s| s.cpu_us_per_call))
    );
    println!(
        "grpc-edge CPU/call ÷ grpc-edge-quiet CPU/call (metrics + access log cost): {}",
        ratio(edge_cpu, get(Target::GrpcEdgeQuiet, |s| s.cpu_us_per_call))
    );
    println!(
        "gRPC-Web CPU/call ÷ native gRPC CPU/call (both through grpc-edge): {}",
        ratio(get(Target::GrpcEdgeWeb, |s| s.cpu_us_per_call), edge_cpu)
    );
    println!(
        "REST GET CPU/call ÷ native gRPC CPU/call (both through grpc-edge):  {}",
        ratio(get(Target::GrpcEdgeRest, |s| s.cpu_us_per_call), edge_cpu)
    );
    println!(
        "REST PATCH CPU/call ÷ native gRPC CPU/call (both through grpc-edge): {}",
        ratio(get(Target::GrpcEdgeRestBody, |s| s.cpu_us_per_call), edge_cpu)
    );
    // gRPC-Web and REST take the h2 path with the relay on or off: against
    // the native call on that same path, the ratio is the front end's own cost.
    let h2_cpu = get(Target::GrpcEdgeH2, |s| s.cpu_us_per_call);
    println!(
        "gRPC-Web, REST GET, REST PATCH CPU/call ÷ native gRPC on the h2 path (grpc-edge-h2): {} {} {}",
        ratio(get(Target::GrpcEdgeWeb, |s| s.cpu_us_per_call), h2_cpu),
        ratio(get(Target::GrpcEdgeRest, |s| s.cpu_us_per_call), h2_cpu),
        ratio(get(Target::GrpcEdgeRestBody, |s| s.cpu_us_per_call), h2_cpu)
    );
}

fn print_open_table(summaries: &BTreeMap<Target, Summary>) {
    let direct_p99 = summaries.get(&Target::Direct).and_then(|s| s.open_p99);
    let rate = summaries
        .values()
        .filter_map(|s| s.open_calls_per_s)
        .fold(0.0, f64::max);
    println!("\nfixed rate (open loop, about {rate:.0} calls/s achieved), medians:");
    let header = [
        "target",
        "calls/s",
        "p50 ms",
        "p99 ms",
        "p99 − direct p99 ms",
        "errors",
        "other load CPU0/1 %",
    ];
    let rows: Vec<Vec<String>> = summaries
        .iter()
        .map(|(target, s)| {
            let added = match (s.open_p99, direct_p99) {
                (Some(p99), Some(direct)) if *target != Target::Direct => fmt(Some(p99 - direct), 2),
                _ => "-".into(),
            };
            vec![
                target.name().to_string(),
                fmt(s.open_calls_per_s, 0),
                fmt(s.open_p50, 2),
                fmt(s.open_p99, 2),
                added,
                fmt(s.open_errors, 0),
                fmt_pair(s.open_other),
            ]
        })
        .collect();
    print_table(&header, &rows);
}

fn print_errors(results: &BTreeMap<Target, Vec<Result<Sample, String>>>) {
    let mut lines = Vec::new();
    for (target, samples) in results {
        let total = samples
            .iter()
            .filter_map(|s| s.as_ref().ok())
            .fold(BTreeMap::new(), |all, s| merge_counts(all, s.errors.clone()));
        for (kind, n) in total {
            lines.push(format!("  {:<19} {n:>8} × {kind}", target.name()));
        }
        for failure in samples.iter().filter_map(|s| s.as_ref().err()) {
            lines.push(format!("  {:<19} run failed: {failure}", target.name()));
        }
    }
    if lines.is_empty() {
        println!("\nerrors: none");
    } else {
        println!("\nerrors (all runs, both profiles, measured windows):");
        println!("{}", lines.join("\n"));
    }
}

fn fmt_pair(values: [Option<f64>; 2]) -> String {
    format!("{}/{}", fmt(values[0], 0), fmt(values[1], 0))
}

fn fmt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

/// A plain-text table: first column left-aligned, the rest right-aligned.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, &w))| {
                let pad = " ".repeat(w - cell.chars().count());
                if i == 0 {
                    format!("{cell}{pad}")
                } else {
                    format!("{pad}{cell}")
                }
            })
            .collect();
        println!("{}", padded.join(" | "));
    };
    line(header.to_vec());
    println!(
        "{}",
        widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("-|-")
    );
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let sigterm = async {
        match term.as_mut() {
            Some(term) => {
                term.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = sigterm => {}
    }
}
