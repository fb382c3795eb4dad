//! `weir-namesrv`: runs a name server.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use weir_namesrv::{NamesrvConfig, server_main};

/// mimalloc: see the workspace's `Cargo.toml` for why not the system's allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// weir name server: the route table brokers register with and clients read.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// TOML file with any of: listen, broker_expiry_ms, scan_interval_ms, a [net]
    /// table (max_connections, max_pending_requests, max_pending_bytes,
    /// max_pending_bytes_total, frame_read_timeout_ms, idle_timeout_ms), a [metrics] table (listen) and a [tls]
    /// table (mode, cert_file, key_file).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:9876].
    #[arg(long)]
    listen: Option<String>,
    /// Drop a broker not heard from for this many seconds [default: 120].
    #[arg(long)]
    broker_expiry_secs: Option<u64>,
    /// Serve Prometheus metrics (`GET /metrics`) on this address, e.g. 127.0.0.1:9101
    /// [default: off; `[metrics] listen` in the config file].
    #[arg(long)]
    metrics_listen: Option<String>,
    /// TLS on the port: disabled, permissive (TLS and plaintext) or enforcing (TLS only)
    /// [default: disabled; `[tls] mode` in the config file].
    #[arg(long)]
    tls_mode: Option<weir_protocol::TlsMode>,
    /// The server's certificate chain, PEM [`[tls] cert_file`].
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// The server's private key, PEM [`[tls] key_file`].
    #[arg(long)]
    tls_key: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    server_main::exit_code("weir-namesrv", run())
}

fn run() -> anyhow::Result<()> {
    server_main::init_logging();
    if let Err(e) = server_main::heap_on_small_pages() {
        tracing::debug!(error = %e, "transparent huge pages stay as the system has them");
    }
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => server_main::read_toml::<NamesrvConfig>(path)?,
        None => NamesrvConfig::default(),
    };
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(m) = args.metrics_listen {
        config.metrics.listen = Some(m);
    }
    if let Some(m) = args.tls_mode {
        config.tls.mode = m;
    }
    if let Some(c) = args.tls_cert {
        config.tls.cert_file = Some(c);
    }
    if let Some(k) = args.tls_key {
        config.tls.key_file = Some(k);
    }
    if let Some(s) = args.broker_expiry_secs {
        config.broker_expiry_ms = s.saturating_mul(1000);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let mut stop = server_main::StopSignal::listen();
        let ns = weir_namesrv::start(config.clone()).await?;
        tracing::info!(listen = %ns.local_addr(), expiry_ms = config.broker_expiry_ms, "weir name server listening");
        stop.recv().await;
        tracing::info!("stopping");
        ns.shutdown().await;
        anyhow::Ok(())
    })
}
