//! Log output for the `grpc-edge` binary: tracing with `RUST_LOG`-style
//! filtering, text or JSON lines on stderr.
//!
//! Lines are written by a background thread from a shared buffer, flushed
//! every few milliseconds, so a busy gateway writing an access-log line per
//! call does not pay a system call per line on its worker threads. Access
//! log lines skip the generic event formatter: they are formatted directly,
//! in the same shape. Colours are used only when stderr is a terminal.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// How often buffered lines are written out.
const FLUSH_EVERY: Duration = Duration::from_millis(20);

/// Above this many buffered bytes a writer waits for the flush, so a stuck
/// stderr slows the gateway down instead of growing memory without bound.
const MAX_BUFFERED: usize = 8 << 20;

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Default)]
struct Shared {
    buffer: Mutex<Vec<u8>>,
    drained: Condvar,
}

/// A `MakeWriter` appending to the shared buffer.
#[derive(Clone)]
struct BufferedStderr(Arc<Shared>);

/// One line being written.
struct Line {
    shared: Arc<Shared>,
    bytes: Vec<u8>,
}

impl Write for Line {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.bytes.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        self.shared.append(&self.bytes);
    }
}

impl Shared {
    /// Adds a whole line to the buffer, waiting while it is over its limit.
    fn append(&self, line: &[u8]) {
        let Ok(mut buffer) = self.buffer.lock() else {
            return;
        };
        while buffer.len() > MAX_BUFFERED {
            buffer = match self.drained.wait_timeout(buffer, FLUSH_EVERY) {
                Ok((guard, _)) => guard,
                Err(_) => return,
            };
        }
        buffer.extend_from_slice(line);
    }
}

/// The access log's direct writer (see `telemetry::access_log`).
fn append_access_line(line: &[u8]) {
    if let Some(shared) = SHARED.get() {
        shared.append(line);
    }
}

impl<'a> MakeWriter<'a> for BufferedStderr {
    type Writer = Line;
    fn make_writer(&'a self) -> Line {
        Line {
            shared: self.0.clone(),
            bytes: Vec::with_capacity(256),
        }
    }
}

static SHARED: std::sync::OnceLock<Arc<Shared>> = std::sync::OnceLock::new();

/// Writes out whatever is buffered (call before the process exits).
pub fn flush() {
    if let Some(shared) = SHARED.get()
        && let Ok(mut buffer) = shared.buffer.lock()
    {
        let _ = std::io::stderr().write_all(&buffer);
        buffer.clear();
    }
}

/// Installs the global subscriber. Call once, early.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let shared = SHARED.get_or_init(|| Arc::new(Shared::default())).clone();
    let flusher = shared.clone();
    std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || {
            let mut pending = Vec::new();
            loop {
                std::thread::sleep(FLUSH_EVERY);
                if let Ok(mut buffer) = flusher.buffer.lock() {
                    std::mem::swap(&mut *buffer, &mut pending);
                    flusher.drained.notify_all();
                }
                if !pending.is_empty() {
                    let _ = std::io::stderr().write_all(&pending);
                    pending.clear();
                }
            }
        })
        .ok();
    let line_format = match format {
        LogFormat::Text => crate::telemetry::access_log::LineFormat::Text,
        LogFormat::Json => crate::telemetry::access_log::LineFormat::Json,
    };
    crate::telemetry::access_log::write_directly(line_format, append_access_line);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(BufferedStderr(shared));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
