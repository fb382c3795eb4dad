//! `weir-namesrv`: runs a name server.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use weir_namesrv::NamesrvConfig;

/// weir name server: the route table brokers register with and clients read.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// TOML file with any of: listen, broker_expiry_ms, scan_interval_ms.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:9876].
    #[arg(long)]
    listen: Option<String>,
    /// Drop a broker not heard from for this many seconds [default: 120].
    #[arg(long)]
    broker_expiry_secs: Option<u64>,
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes.
            eprintln!("weir-namesrv: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str::<NamesrvConfig>(&text)
                .with_context(|| format!("parsing {}", path.display()))?
        }
        None => NamesrvConfig::default(),
    };
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(s) = args.broker_expiry_secs {
        config.broker_expiry_ms = s.saturating_mul(1000);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let ns = weir_namesrv::start(config.clone()).await?;
        tracing::info!(listen = %ns.local_addr(), expiry_ms = config.broker_expiry_ms, "weir name server listening");
        wait_for_stop().await;
        tracing::info!("stopping");
        ns.shutdown().await;
        anyhow::Ok(())
    })
}

async fn wait_for_stop() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
