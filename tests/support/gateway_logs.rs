//! The `grpc-edge` binary as a child process whose log output a test reads:
//! `serve` with a chosen `--log-format` and `RUST_LOG`, every stderr line
//! kept, and a SIGTERM that lets it drain, flush its log and exit.
//!
//! Unlike [`super::GatewayProcess`] (JSON, `RUST_LOG=info`), the format and
//! filter are the test's, and the addresses are read from the start-up lines
//! in either format.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    pub fn as_arg(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The gateway binary running `serve`, its stderr collected line by line.
pub struct LoggedGateway {
    child: Child,
    pub addr: SocketAddr,
    /// The admin listener, when the configuration has one.
    pub admin: Option<SocketAddr>,
    pub format: LogFormat,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

/// The address a start-up line announces, in either format: JSON
/// `{"message":"<message>","addr":"..."}`, text `... <message> addr=...`.
fn announced(line: &str, format: LogFormat, message: &str) -> Option<SocketAddr> {
    match format {
        LogFormat::Json => {
            let json: serde_json::Value = serde_json::from_str(line).ok()?;
            if json["message"] != message {
                return None;
            }
            json["addr"].as_str()?.parse().ok()
        }
        LogFormat::Text => {
            let (_, rest) = line.split_once(&format!(" {message} "))?;
            let addr = rest.split_whitespace().find_map(|field| field.strip_prefix("addr="))?;
            addr.parse().ok()
        }
    }
}

impl LoggedGateway {
    /// Starts `grpc-edge --log-format <format> serve --config <config>` with
    /// `RUST_LOG=<rust_log>` and waits (at most 30 s) for its "grpc-edge
    /// listening" line, which `rust_log` must let through. With `admin`,
    /// also waits for the "admin listening" line.
    pub fn start(config: &Path, format: LogFormat, rust_log: &str, admin: bool) -> LoggedGateway {
        let mut child = Command::new(env!("CARGO_BIN_EXE_grpc-edge"))
            .args(["--log-format", format.as_arg(), "serve", "--config"])
            .arg(config)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("expected the grpc-edge binary to start");
        let stderr = child.stderr.take().expect("stderr is piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut gateway = LoggedGateway {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin: None,
            format,
            lines,
            reader: Some(reader),
        };
        let started = Instant::now();
        loop {
            let (addr, admin_addr) = {
                let lines = gateway.lines.lock().unwrap();
                let find = |message| lines.iter().find_map(|l| announced(l, format, message));
                (find("grpc-edge listening"), find("admin listening"))
            };
            if let Some(addr) = addr
                && (admin_addr.is_some() || !admin)
            {
                gateway.addr = addr;
                gateway.admin = admin_addr;
                return gateway;
            }
            if let Ok(Some(status)) = gateway.child.try_wait() {
                panic!(
                    "expected grpc-edge to serve; it exited ({status}): {:#?}",
                    gateway.lines()
                );
            }
            if started.elapsed() > Duration::from_secs(30) {
                panic!(
                    "expected grpc-edge to announce its listener within 30 s: {:#?}",
                    gateway.lines()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every stderr line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (at most `limit`) for the process to exit and
    /// for its stderr to close; returns the exit status and every line.
    pub fn terminate_and_wait(mut self, limit: Duration) -> (ExitStatus, Vec<String>) {
        let signalled = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("expected `kill` to run");
        assert!(signalled.success(), "expected `kill -TERM` to succeed");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("expected to wait for grpc-edge") {
                break status;
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "expected grpc-edge to exit within {limit:?} of SIGTERM: {:#?}",
                    self.lines()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // The process is gone, so its stderr is closed and the reader ends.
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        (status, self.lines())
    }
}

impl Drop for LoggedGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
