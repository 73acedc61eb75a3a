//! In-process vs network: what a REST call costs when the gateway hands it to
//! a tonic service in the same process, compared with calling that service
//! directly and with the same REST call sent to a backend over loopback.
//!
//! ```sh
//! cargo bench --bench in_process -- [--duration 3s] [--warmup 1s] [--concurrency 1] [--threads 2]
//!                                   [--item-bytes 65536] [--list-orders 1000]
//!                                   [--only direct,tonic,in-process,network,tonic-large,in-process-large,
//!                                           tonic-list,in-process-list]
//! ```
//!
//! # What it measures
//!
//! Every mode asks the demo `OrderDesk` for `orders/1` as fast as it can,
//! from `--concurrency` tasks, for `--warmup` (not counted) then `--duration`:
//!
//! - `direct`: `OrderService::get_order(&desk, Request)`: the service's own
//!   code, with no HTTP, no protobuf encoding: the floor;
//! - `tonic`: the tonic server called as a tower service with a prebuilt gRPC
//!   request (HTTP types, gRPC framing, protobuf decoding and encoding), still
//!   without the gateway;
//! - `in-process`: `GET /v1/orders/1` into the gateway's tower service
//!   (`Gateway::into_service`): REST routing, JSON ⇄ protobuf, and the call
//!   to the same tonic server in-process;
//! - `network`: the same REST call into a second gateway whose route goes to
//!   the demo backend (a tonic server in this process) over loopback HTTP/2,
//!   on a pooled connection.
//!
//! `in-process` and `network` start from the same tower call (no client
//! socket), so they differ only in how the gateway reaches the service.
//!
//! Two more modes isolate what JSON costs when messages are large: both
//! call `UpdateOrder` on `orders/3` with an `item` of `--item-bytes` bytes
//! (64 KiB by default; the answer carries it back):
//!
//! - `tonic-large`: as `tonic`, a prebuilt gRPC request;
//! - `in-process-large`: `PATCH /v1/orders/3` with the same order as a JSON
//!   body, into the in-process gateway: JSON → protobuf on the way in,
//!   protobuf → JSON on the way out.
//!
//! Their difference is the price of transcoding that much JSON both ways,
//! printed per MiB. That is the easy case for JSON: one long string. Two
//! more modes measure the hard one, many small fields: both desks are given
//! `--list-orders` more orders (1,000 by default), and
//!
//! - `tonic-list`: `ListOrders` for the placed ones, a prebuilt gRPC request;
//! - `in-process-list`: `GET /v1/orders?state=PLACED&pageSize=N` into the
//!   in-process gateway: the answer, N orders of six fields each (a
//!   timestamp and an enum among them), rendered as JSON.
//!
//! # How to read it
//!
//! - `calls/s`: completed calls per second over the measured window, all tasks together.
//! - `mean µs`: time from sending a call to holding its whole answer, averaged.
//! - `CPU µs/call`: this process's user+system CPU time (`/proc/self/stat`)
//!   in the window divided by the calls: what a call costs the machine, including
//!   the backend's share in `network`.
//! - `+µs vs direct` / `× direct`: the mean minus, and divided by, `direct`'s.
//! - The summary line gives what the in-process path saves against the network one.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use grpc_edge::config::{Route, Upstream};
use grpc_edge::demo::pb::order_service_server::{OrderService, OrderServiceServer};
use grpc_edge::demo::pb::{
    CreateOrderRequest, GetOrderRequest, ListOrdersRequest, Order, OrderState, UpdateOrderRequest,
};
use grpc_edge::demo::{Backend, DESCRIPTOR_SET, OrderDesk};
use grpc_edge::{Gateway, GatewayService};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;

const USAGE: &str = "usage: cargo bench --bench in_process -- [--duration 3s] [--warmup 1s] [--concurrency 1] \
[--threads 2] [--item-bytes 65536] [--list-orders 1000] \
[--only direct,tonic,in-process,network,tonic-large,in-process-large,tonic-list,in-process-list]";

/// What one mode does per call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Direct,
    Tonic,
    InProcess,
    Network,
    TonicLarge,
    InProcessLarge,
    TonicList,
    InProcessList,
}

const MODES: [Mode; 8] = [
    Mode::Direct,
    Mode::Tonic,
    Mode::InProcess,
    Mode::Network,
    Mode::TonicLarge,
    Mode::InProcessLarge,
    Mode::TonicList,
    Mode::InProcessList,
];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Tonic => "tonic",
            Mode::InProcess => "in-process",
            Mode::Network => "network",
            Mode::TonicLarge => "tonic-large",
            Mode::InProcessLarge => "in-process-large",
            Mode::TonicList => "tonic-list",
            Mode::InProcessList => "in-process-list",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Mode::Direct => "OrderService::get_order on the desk",
            Mode::Tonic => "tonic server as a tower service, prebuilt gRPC request",
            Mode::InProcess => "REST GET /v1/orders/1 → gateway → in-process tonic server",
            Mode::Network => "REST GET /v1/orders/1 → gateway → loopback HTTP/2 → tonic backend",
            Mode::TonicLarge => "tonic server, prebuilt UpdateOrder with a --item-bytes item",
            Mode::InProcessLarge => "REST PATCH /v1/orders/3, the same order as JSON → in-process tonic",
            Mode::TonicList => "tonic server, prebuilt ListOrders answered with --list-orders orders",
            Mode::InProcessList => "REST GET /v1/orders?state=PLACED&pageSize=N → in-process tonic, as JSON",
        }
    }

    fn parse(name: &str) -> Result<Mode, String> {
        MODES.into_iter().find(|m| m.name() == name).ok_or_else(|| {
            let names: Vec<_> = MODES.iter().map(|m| m.name()).collect();
            format!("--only: no mode named {name:?} ({})", names.join(", "))
        })
    }
}

struct Args {
    duration: Duration,
    warmup: Duration,
    concurrency: usize,
    threads: usize,
    item_bytes: usize,
    list_orders: usize,
    modes: Vec<Mode>,
}

/// Parses the arguments after `--`; `Ok(None)` means `--help`.
fn parse_args(raw: &[String]) -> Result<Option<Args>, String> {
    let mut args = Args {
        duration: Duration::from_secs(3),
        warmup: Duration::from_secs(1),
        concurrency: 1,
        threads: 2,
        item_bytes: 64 * 1024,
        list_orders: 1000,
        modes: MODES.to_vec(),
    };
    let mut raw = raw.iter();
    while let Some(arg) = raw.next() {
        // cargo passes `--bench` to harness-less benches.
        if arg == "--bench" {
            continue;
        }
        if arg == "--help" || arg == "-h" {
            return Ok(None);
        }
        let (flag, value) = match arg.split_once('=') {
            Some((flag, value)) => (flag, value.to_string()),
            None => (
                arg.as_str(),
                raw.next().ok_or_else(|| format!("{arg} needs a value"))?.clone(),
            ),
        };
        match flag {
            "--duration" => args.duration = parse_duration(&value)?,
            "--warmup" => args.warmup = parse_duration(&value)?,
            "--concurrency" => args.concurrency = parse_positive(flag, &value)?,
            "--threads" => args.threads = parse_positive(flag, &value)?,
            "--item-bytes" => args.item_bytes = parse_positive(flag, &value)?.min(3 << 20),
            "--list-orders" => args.list_orders = parse_positive(flag, &value)?.min(20_000),
            "--only" => args.modes = value.split(',').map(Mode::parse).collect::<Result<_, _>>()?,
            _ => return Err(format!("unknown argument {arg}")),
        }
    }
    if args.duration.is_zero() {
        return Err("--duration must be more than zero".into());
    }
    if args.duration > Duration::from_secs(600) || args.warmup > Duration::from_secs(600) {
        return Err("--duration and --warmup are limited to 10m".into());
    }
    Ok(Some(args))
}

/// `3s`, `500ms`, `1.5s`, or a bare number of seconds.
fn parse_duration(value: &str) -> Result<Duration, String> {
    let (number, scale) = match value.strip_suffix("ms") {
        Some(n) => (n, 0.001),
        None => (value.strip_suffix('s').unwrap_or(value), 1.0),
    };
    number
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
        .map(|n| Duration::from_secs_f64(n * scale))
        .ok_or_else(|| format!("expected a duration like 3s or 500ms, got {value:?}"))
}

fn parse_positive(flag: &str, value: &str) -> Result<usize, String> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{flag}: expected a positive integer, got {value:?}"))
}

/// Everything the modes call.
#[derive(Clone)]
struct Targets {
    desk: OrderDesk,
    tonic: OrderServiceServer<OrderDesk>,
    in_process: GatewayService,
    network: GatewayService,
    /// `GetOrderRequest { name: "orders/1" }` as one gRPC frame.
    frame: Bytes,
    /// `UpdateOrderRequest` for `orders/3` with a large item: as one gRPC
    /// frame, and as the REST body (the order as JSON).
    large_frame: Bytes,
    large_json: Bytes,
    /// `ListOrdersRequest` for every placed order, as one gRPC frame, and the
    /// same as a REST path; how many orders answer.
    list_frame: Bytes,
    list_path: String,
    listed: usize,
}

impl Targets {
    /// One call in `mode`; panics on a wrong answer, so that errors cannot look fast.
    async fn call(&self, mode: Mode) {
        match mode {
            Mode::Direct => {
                let request = tonic::Request::new(GetOrderRequest {
                    name: "orders/1".into(),
                });
                let order = self.desk.get_order(request).await.expect("direct call failed");
                assert_eq!(order.get_ref().name, "orders/1");
            }
            Mode::Tonic => {
                let body = self.tonic_call("GetOrder", &self.frame).await;
                assert!(body.len() > 5);
            }
            Mode::TonicLarge => {
                let body = self.tonic_call("UpdateOrder", &self.large_frame).await;
                assert!(body.len() > self.large_frame.len() / 2);
            }
            Mode::TonicList => {
                let body = self.tonic_call("ListOrders", &self.list_frame).await;
                assert!(body.len() > self.listed * 20);
            }
            Mode::InProcess | Mode::Network => {
                let service = if mode == Mode::InProcess {
                    &self.in_process
                } else {
                    &self.network
                };
                let body = rest_call(service, http::Request::get("/v1/orders/1"), Bytes::new()).await;
                assert!(body.starts_with(b"{\"name\":\"orders/1\""));
            }
            Mode::InProcessLarge => {
                let request =
                    http::Request::patch("/v1/orders/3").header(http::header::CONTENT_TYPE, "application/json");
                let body = rest_call(&self.in_process, request, self.large_json.clone()).await;
                assert!(body.len() > self.large_json.len() / 2);
            }
            Mode::InProcessList => {
                let body = rest_call(
                    &self.in_process,
                    http::Request::get(self.list_path.as_str()),
                    Bytes::new(),
                )
                .await;
                assert!(body.len() > self.listed * 40);
            }
        }
    }

    /// A prebuilt gRPC request for `method` into the tonic server; its
    /// response body, once the trailers said OK.
    async fn tonic_call(&self, method: &str, frame: &Bytes) -> Bytes {
        let request = http::Request::post(format!("/demo.v1.OrderService/{method}"))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(Full::new(frame.clone()))
            .expect("a valid request");
        let response = self.tonic.clone().oneshot(request).await.expect("tonic call failed");
        let body = response.into_body().collect().await.expect("tonic body failed");
        let status = body.trailers().and_then(|t| t.get("grpc-status")).cloned();
        assert_eq!(
            status.as_ref().map(|s| s.as_bytes()),
            Some(&b"0"[..]),
            "{method} failed"
        );
        body.to_bytes()
    }
}

/// A REST request into a gateway's tower service; its body, once it answered 200.
async fn rest_call(service: &GatewayService, request: http::request::Builder, body: Bytes) -> Bytes {
    let request = request.body(Full::new(body)).expect("a valid request");
    let response = service.clone().oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), http::StatusCode::OK, "a REST call failed");
    response
        .into_body()
        .collect()
        .await
        .expect("REST body failed")
        .to_bytes()
}

/// What one measured window gave.
struct Measured {
    calls: u64,
    elapsed: Duration,
    /// Sum of every call's time.
    busy: Duration,
    cpu: Option<Duration>,
}

impl Measured {
    fn calls_per_second(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }
    fn mean_us(&self) -> f64 {
        self.busy.as_secs_f64() * 1e6 / self.calls as f64
    }
    fn cpu_us(&self) -> Option<f64> {
        self.cpu.map(|cpu| cpu.as_secs_f64() * 1e6 / self.calls as f64)
    }
}

/// Runs `mode` from `concurrency` tasks for `window`; returns calls and time spent in them.
///
/// Each task watches the clock itself rather than waiting for a timer: a
/// call that never waits (`direct`) would keep the worker threads from ever
/// firing one. A task yields every few calls so that all of them take turns.
async fn drive(targets: &Targets, mode: Mode, concurrency: usize, window: Duration) -> (u64, Duration) {
    let deadline = Instant::now() + window;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let targets = targets.clone();
            tokio::spawn(async move {
                let (mut calls, mut busy) = (0u64, Duration::ZERO);
                loop {
                    let started = Instant::now();
                    if started >= deadline {
                        return (calls, busy);
                    }
                    targets.call(mode).await;
                    busy += started.elapsed();
                    calls += 1;
                    if calls % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    let (mut calls, mut busy) = (0, Duration::ZERO);
    for task in tasks {
        let (c, b) = task.await.expect("a load task panicked");
        calls += c;
        busy += b;
    }
    (calls, busy)
}

async fn measure(targets: &Targets, mode: Mode, args: &Args) -> Measured {
    if !args.warmup.is_zero() {
        drive(targets, mode, args.concurrency, args.warmup).await;
    }
    let cpu_before = process_cpu();
    let started = Instant::now();
    let (calls, busy) = drive(targets, mode, args.concurrency, args.duration).await;
    let elapsed = started.elapsed();
    let cpu = process_cpu()
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    Measured {
        calls: calls.max(1),
        elapsed,
        busy,
        cpu,
    }
}

/// User + system CPU time of this process so far (Linux; clock ticks of 10 ms).
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// One gRPC frame (uncompressed) around `message`.
fn grpc_frame(message: &impl prost::Message) -> Bytes {
    let message = message.encode_to_vec();
    let mut frame = vec![0];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    Bytes::from(frame)
}

/// Places `n` more orders on `desk`.
async fn place_orders(desk: &OrderDesk, n: usize) -> Result<(), String> {
    for i in 0..n {
        let order = Order {
            item: format!("item {i}"),
            quantity: 1 + (i % 5) as i32,
            ..Order::default()
        };
        desk.create_order(tonic::Request::new(CreateOrderRequest { order: Some(order) }))
            .await
            .map_err(|e| format!("cannot place order {i}: {e}"))?;
    }
    Ok(())
}

async fn setup(item_bytes: usize, list_orders: usize) -> Result<(Targets, Backend), String> {
    let backend = Backend::spawn(([127, 0, 0, 1], 0).into(), "network-backend")
        .await
        .map_err(|e| format!("cannot start the demo backend: {e}"))?;
    let in_process_desk = OrderDesk::new("in-process");
    place_orders(&in_process_desk, list_orders).await?;
    let in_process = Gateway::builder()
        .descriptor_set(DESCRIPTOR_SET)
        .service(in_process_desk.into_server())
        .build()
        .map_err(|e| e.to_string())?;
    let network = Gateway::builder()
        .descriptor_set(DESCRIPTOR_SET)
        .upstream("orders", Upstream::with_endpoints([backend.addr().to_string()]))
        .route(Route::new("demo.v1.OrderService", "orders"))
        .build()
        .map_err(|e| e.to_string())?;
    let frame = grpc_frame(&GetOrderRequest {
        name: "orders/1".into(),
    });
    // Text that JSON carries as it is (no escapes), like most payloads.
    let item: String = "lorem ipsum dolor sit amet ".chars().cycle().take(item_bytes).collect();
    let large_frame = grpc_frame(&UpdateOrderRequest {
        order: Some(Order {
            name: "orders/3".into(),
            item: item.clone(),
            quantity: 1,
            ..Order::default()
        }),
        update_mask: None,
    });
    let large_json = Bytes::from(format!(r#"{{"item":"{item}","quantity":1}}"#));
    let listed = listed(list_orders);
    let list_frame = grpc_frame(&ListOrdersRequest {
        page_size: listed as i32,
        state: OrderState::Placed as i32,
    });
    let list_path = format!("/v1/orders?state=PLACED&pageSize={listed}");
    // The tonic modes get a desk of their own, as the in-process gateway has.
    let desk = OrderDesk::new("direct");
    place_orders(&desk, list_orders).await?;
    let targets = Targets {
        tonic: desk.clone().into_server(),
        desk,
        in_process: in_process.into_service(),
        network: network.into_service(),
        frame,
        large_frame,
        large_json,
        list_frame,
        list_path,
        listed,
    };
    Ok((targets, backend))
}

/// How many orders `ListOrders` answers with: those placed plus the seeded `orders/2`.
fn listed(list_orders: usize) -> usize {
    list_orders + 1
}

fn report(args: &Args, results: &[(Mode, Measured)]) {
    println!(
        "\n{} task(s) calling, {} tokio worker thread(s), {:?} measured after {:?} warm-up\n",
        args.concurrency, args.threads, args.duration, args.warmup
    );
    let direct = results
        .iter()
        .find(|(m, _)| *m == Mode::Direct)
        .map(|(_, r)| r.mean_us());
    println!(
        "{:<11} {:>11} {:>9} {:>12} {:>14} {:>9}   what one call is",
        "mode", "calls/s", "mean µs", "CPU µs/call", "+µs vs direct", "× direct"
    );
    for (mode, r) in results {
        let cpu = r.cpu_us().map_or_else(|| "n/a".into(), |c| format!("{c:.2}"));
        let (over, times) = match direct {
            Some(d) => (format!("{:+.2}", r.mean_us() - d), format!("{:.1}", r.mean_us() / d)),
            None => ("n/a".into(), "n/a".into()),
        };
        println!(
            "{:<11} {:>11.0} {:>9.2} {:>12} {:>14} {:>9}   {}",
            mode.name(),
            r.calls_per_second(),
            r.mean_us(),
            cpu,
            over,
            times,
            mode.describe()
        );
    }
    let find = |mode| results.iter().find(|(m, _)| *m == mode).map(|(_, r)| r);
    if let (Some(local), Some(net)) = (find(Mode::InProcess), find(Mode::Network)) {
        println!(
            "\nnetwork / in-process: {:.2}× the time per call ({:.2} µs more), {:.2}× the CPU per call; in-process makes {:.2}× the calls/s",
            net.mean_us() / local.mean_us(),
            net.mean_us() - local.mean_us(),
            net.cpu_us().zip(local.cpu_us()).map_or(f64::NAN, |(n, l)| n / l),
            local.calls_per_second() / net.calls_per_second(),
        );
    }
    if let (Some(local), Some(tonic)) = (find(Mode::InProcess), find(Mode::Tonic)) {
        println!(
            "in-process / tonic: the gateway's REST front end adds {:.2} µs per call ({:.2}× a bare tonic call)",
            local.mean_us() - tonic.mean_us(),
            local.mean_us() / tonic.mean_us()
        );
    }
    if let (Some(local), Some(tonic)) = (find(Mode::InProcessLarge), find(Mode::TonicLarge)) {
        // The JSON crosses the gateway twice: the request body in, the answer out.
        let mib = 2.0 * args.item_bytes as f64 / f64::from(1 << 20);
        let extra_us = local.mean_us() - tonic.mean_us();
        println!(
            "in-process-large / tonic-large ({} B item): transcoding adds {:.1} µs per call ({:.2}× a bare tonic call), \
             {:.0} µs per MiB of JSON ({:.0} MiB/s)",
            args.item_bytes,
            extra_us,
            local.mean_us() / tonic.mean_us(),
            extra_us / mib,
            mib / (extra_us / 1e6)
        );
    }
    if let (Some(local), Some(tonic)) = (find(Mode::InProcessList), find(Mode::TonicList)) {
        let extra_us = local.mean_us() - tonic.mean_us();
        println!(
            "in-process-list / tonic-list ({} orders): rendering them as JSON adds {:.1} µs per call \
             ({:.2}× a bare tonic call), {:.2} µs per order",
            listed(args.list_orders),
            extra_us,
            local.mean_us() / tonic.mean_us(),
            extra_us / listed(args.list_orders) as f64
        );
    }
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
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
    println!("command: cargo bench --bench in_process -- {}", user_args.join(" "));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let (targets, backend) = match setup(args.item_bytes, args.list_orders).await {
            Ok(set) => set,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut results = Vec::new();
        for &mode in &args.modes {
            eprintln!("measuring {} ...", mode.name());
            results.push((mode, measure(&targets, mode, &args).await));
        }
        report(&args, &results);
        drop(targets);
        let _ = tokio::time::timeout(Duration::from_secs(5), backend.shutdown()).await;
        ExitCode::SUCCESS
    })
}
