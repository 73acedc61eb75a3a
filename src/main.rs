//! The `grpc-edge` command: parses arguments, sets up logging, and calls the
//! library. Every subcommand ends in one library call.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use grpc_edge::config::Config;
use grpc_edge::{Gateway, ServeOptions};

#[derive(Parser)]
#[command(
    name = "grpc-edge",
    version,
    about = "One small edge server for gRPC: REST/JSON, gRPC-Web and native gRPC on one port, balanced per request."
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve until SIGTERM or SIGINT, then drain gracefully.
    Serve {
        /// Configuration file.
        #[arg(long, default_value = "config/gateway.yaml")]
        config: PathBuf,
    },
    /// Validate the configuration and descriptors and print the route table.
    Check {
        /// Configuration file.
        #[arg(long, default_value = "config/gateway.yaml")]
        config: PathBuf,
    },
    /// Print every route: METHOD  /path  →  pkg.Service/Method.
    Routes {
        /// Configuration file.
        #[arg(long, default_value = "config/gateway.yaml")]
        config: PathBuf,
    },
    /// Start three example backends on loopback and the gateway in front of them.
    Demo {
        /// Where the gateway listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    grpc_edge::logging::init(match cli.log_format {
        LogFormat::Text => grpc_edge::logging::LogFormat::Text,
        LogFormat::Json => grpc_edge::logging::LogFormat::Json,
    });
    if matches!(cli.command, Command::Serve { .. } | Command::Demo { .. })
        && let Some((from, to)) = grpc_edge::raise_open_file_limit()
    {
        tracing::debug!(from, to, "raised the open-file limit");
    }
    // On one CPU (a container limited to one core) the single-threaded
    // scheduler runs woken tasks in order: a connection's writer runs after
    // the calls that queued frames on it, so their frames leave in one write
    // instead of one write each (the multi-threaded scheduler's LIFO slot
    // runs the writer right after every call).
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { config } => serve(config).await,
            Command::Check { config } => check(config),
            Command::Routes { config } => routes(config),
            Command::Demo { listen } => grpc_edge::demo::run(listen, shutdown_signal())
                .await
                .map_err(|e| e.to_string()),
        }
    });
    grpc_edge::logging::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn load(config: &PathBuf) -> Result<Gateway, String> {
    tracing::info!(config = %config.display(), "loading configuration and descriptors");
    let config = Config::from_file(config).map_err(|e| e.to_string())?;
    Gateway::from_config(config).map_err(|e| e.to_string())
}

async fn serve(config: PathBuf) -> Result<(), String> {
    let gateway = load(&config)?;
    let listen = gateway.config().listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let admin = match &gateway.config().admin {
        Some(admin) => {
            let listener = tokio::net::TcpListener::bind(admin.listen)
                .await
                .map_err(|e| format!("admin.listen: cannot listen on {}: {e}", admin.listen))?;
            tracing::info!(addr = %listener.local_addr().unwrap_or(admin.listen), "admin listening");
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(grpc_edge::serve_admin(gateway.clone(), listener, async {
                let _ = stopped.await;
            }));
            Some((stop, task))
        }
        None => None,
    };
    let methods = gateway.descriptors().registry().len();
    tracing::info!(addr = %listener.local_addr().unwrap_or(listen), methods, "grpc-edge listening");
    grpc_edge::serve(gateway, listener, shutdown_signal(), ServeOptions::default()).await;
    if let Some((stop, task)) = admin {
        let _ = stop.send(());
        let _ = task.await;
    }
    tracing::info!("stopped");
    Ok(())
}

fn check(config: PathBuf) -> Result<(), String> {
    let gateway = load(&config)?;
    let certificates = grpc_edge::tls::certificate_report(gateway.config(), grpc_edge::tls::DEFAULT_EXPIRY_WARNING);
    if !certificates.errors.is_empty() {
        return Err(certificates.errors.join("\nerror: "));
    }
    println!("{}: OK", config.display());
    print_routes(&gateway);
    for warning in grpc_edge::check_warnings(&gateway)
        .into_iter()
        .chain(certificates.warnings)
    {
        println!("warning: {warning}");
    }
    Ok(())
}

fn routes(config: PathBuf) -> Result<(), String> {
    let gateway = load(&config)?;
    print_routes(&gateway);
    Ok(())
}

fn print_routes(gateway: &Gateway) {
    for line in grpc_edge::route_lines(gateway) {
        println!("{line}");
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the server");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => tracing::info!("SIGINT received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
