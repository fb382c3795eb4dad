//! `weir-broker`: runs a broker. With no name server configured it runs standalone: its
//! own name server on 127.0.0.1:9876 beside the broker on 127.0.0.1:10911, data in
//! `./weir-data`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use weir_broker::BrokerConfig;
use weir_namesrv::server_main;
use weir_protocol::ha::BrokerRole;
use weir_store::FlushMode;

/// mimalloc: see the workspace's `Cargo.toml` for why not the system's allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// weir broker. No arguments: standalone (name server + broker), data in ./weir-data.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// TOML file: broker keys at the top level, store keys under [store].
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:10911].
    #[arg(long)]
    listen: Option<String>,
    /// Data folder [default: ./weir-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Name servers, `host:port;host:port`. Without any, an embedded name server runs on
    /// --standalone-namesrv. (Not read from `$WEIR_NAMESRV`: that is the CLI's setting, and
    /// exporting it for `weir` must not turn a standalone broker into one that waits for
    /// an external name server.)
    #[arg(long)]
    namesrv: Option<String>,
    /// Where the embedded name server listens in standalone mode.
    #[arg(long, default_value = "127.0.0.1:9876")]
    standalone_namesrv: String,
    #[arg(long)]
    cluster: Option<String>,
    #[arg(long)]
    broker_name: Option<String>,
    #[arg(long)]
    broker_id: Option<u64>,
    #[arg(long, value_enum)]
    flush_mode: Option<Flush>,
    /// Create topics on first send [default: true].
    #[arg(long)]
    auto_create_topic: Option<bool>,
    /// Replication role [default: async-master]; a slave takes --broker-id 1 or more.
    #[arg(long, value_enum)]
    role: Option<Role>,
    /// A master: where its slaves connect (its HA port) [default: none, no slaves].
    #[arg(long)]
    ha_listen: Option<String>,
    /// A slave: its master's HA address [default: as the name servers report it].
    #[arg(long)]
    master_ha_addr: Option<String>,
    /// Serve Prometheus metrics (`GET /metrics`) on this address, e.g. 127.0.0.1:9100
    /// [default: off; `[metrics] listen` in the config file].
    #[arg(long)]
    metrics_listen: Option<String>,
    /// TLS on the client port, the HA port and the embedded name server: disabled,
    /// permissive (TLS and plaintext) or enforcing (TLS only) [default: disabled; `[tls]
    /// mode` in the config file].
    #[arg(long)]
    tls_mode: Option<weir_protocol::TlsMode>,
    /// The server's certificate chain, PEM [`[tls] cert_file`].
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// The server's private key, PEM [`[tls] key_file`].
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// CA certificates, PEM, that the broker verifies name servers and its master with;
    /// its own connections then use TLS [`[tls] ca_file`; default: plaintext].
    #[arg(long)]
    tls_ca: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Role {
    AsyncMaster,
    SyncMaster,
    Slave,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Flush {
    Async,
    Sync,
}

fn main() -> std::process::ExitCode {
    server_main::exit_code("weir-broker", run())
}

fn load(args: &Args) -> anyhow::Result<BrokerConfig> {
    let mut config = match &args.config {
        Some(path) => server_main::read_toml::<BrokerConfig>(path)?,
        None => BrokerConfig::default(),
    };
    if let Some(v) = &args.listen {
        config.listen = v.clone();
    }
    if let Some(v) = &args.data_dir {
        config.store.data_dir = v.clone();
    }
    if let Some(v) = &args.namesrv {
        config.namesrv = v.clone();
    }
    if let Some(v) = &args.cluster {
        config.cluster = v.clone();
    }
    if let Some(v) = &args.broker_name {
        config.broker_name = v.clone();
    }
    if let Some(v) = args.broker_id {
        config.broker_id = v;
    }
    if let Some(v) = args.flush_mode {
        config.store.flush_mode = match v {
            Flush::Async => FlushMode::Async,
            Flush::Sync => FlushMode::Sync,
        };
    }
    if let Some(v) = args.auto_create_topic {
        config.auto_create_topic = v;
    }
    if let Some(v) = args.role {
        config.role = match v {
            Role::AsyncMaster => BrokerRole::AsyncMaster,
            Role::SyncMaster => BrokerRole::SyncMaster,
            Role::Slave => BrokerRole::Slave,
        };
    }
    if let Some(v) = &args.ha_listen {
        config.ha_listen = Some(v.clone());
    }
    if let Some(v) = &args.master_ha_addr {
        config.master_ha_addr = Some(v.clone());
    }
    if let Some(v) = &args.metrics_listen {
        config.metrics.listen = Some(v.clone());
    }
    if let Some(v) = args.tls_mode {
        config.tls.mode = v;
    }
    if let Some(v) = &args.tls_cert {
        config.tls.cert_file = Some(v.clone());
    }
    if let Some(v) = &args.tls_key {
        config.tls.key_file = Some(v.clone());
    }
    if let Some(v) = &args.tls_ca {
        config.tls.ca_file = Some(v.clone());
    }
    Ok(config)
}

/// Open files a broker should be allowed (RocketMQ's deployment guide asks 655,350).
const OPEN_FILES_ADVISED: u64 = 65_536;

fn run() -> anyhow::Result<()> {
    server_main::init_logging();
    if let Err(e) = server_main::heap_on_small_pages() {
        tracing::debug!(error = %e, "transparent huge pages stay as the system has them");
    }
    match server_main::open_files_at_hard_limit() {
        Ok(n) if n < OPEN_FILES_ADVISED => tracing::warn!(
            limit = n,
            "this process may open only {n} files: every consume queue holding messages keeps one open, so past about that many queues sends to new queues and new connections are refused; raise the limit (ulimit -n, systemd LimitNOFILE) to {OPEN_FILES_ADVISED} or more"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
    let args = Args::parse();
    let mut config = load(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        // Before anything that takes time: a stop asked for while starting is honoured
        // once started, cleanly.
        let mut stop = server_main::StopSignal::listen();
        tracing::info!(data = %config.store.data_dir.display(), "weir broker starting");
        let embedded = if config.namesrv_addrs().is_empty() {
            if config.tls.mode == weir_protocol::TlsMode::Enforcing && config.tls.ca_file.is_none()
            {
                anyhow::bail!(
                    "a standalone broker with tls.mode = \"enforcing\" registers with its embedded name server over TLS: set tls.ca_file (--tls-ca) to the CA of its certificate"
                );
            }
            let ns = weir_namesrv::start(weir_namesrv::NamesrvConfig {
                listen: args.standalone_namesrv.clone(),
                net: config.net.clone(),
                cluster_secret: config.cluster_secret.clone(),
                // The same certificate as the broker's port.
                tls: weir_protocol::TlsConfig {
                    ca_file: None,
                    ..config.tls.clone()
                },
                ..Default::default()
            })
            .await
            .context("starting the embedded name server")?;
            config.namesrv = ns.local_addr().to_string();
            Some(ns)
        } else {
            None
        };
        let data_dir = config.store.data_dir.clone();
        let flush = config.store.flush_mode;
        let broker = weir_broker::start(config.clone()).await?;
        tracing::info!(
            broker = %broker.local_addr(),
            name_servers = %config.namesrv,
            embedded_name_server = embedded.is_some(),
            data = %data_dir.display(),
            flush = ?flush,
            "weir broker {}/{} (id {}, {}) listening",
            config.cluster,
            config.broker_name,
            config.broker_id,
            config.role.as_str(),
        );
        stop.recv().await;
        tracing::info!("stopping: no new connections, flushing the store");
        broker.shutdown().await?;
        if let Some(ns) = embedded {
            ns.shutdown().await;
        }
        tracing::info!("stopped cleanly");
        anyhow::Ok(())
    })
}
