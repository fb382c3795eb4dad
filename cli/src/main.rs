//! `weir`: the command line for operators and developers. Names and output formats here are
//! a contract (scripts depend on them); errors are one line on stderr and a non-zero exit.

mod bench;
mod broker;
mod cluster;
mod consume;
mod filter;
mod group;
mod output;
mod send_lines;
mod topic;
mod transaction;

use std::path::PathBuf;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use weir_client::{
    Admin, ClientConfig, ClientInstance, Message, MessageQueue, Producer, ReceivedMessage,
    SendResult,
};

/// mimalloc: see the workspace's `Cargo.toml` for why not the system's allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "weir",
    version,
    about = "weir: topics, messages, groups, filters, brokers, cluster, benchmarks"
)]
struct Cli {
    /// Name servers, `host:port;host:port`.
    #[arg(
        long,
        global = true,
        env = "WEIR_NAMESRV",
        default_value = "127.0.0.1:9876"
    )]
    namesrv: String,
    /// Access key to sign requests with (brokers with access control on need one).
    #[arg(long, global = true, env = "WEIR_ACCESS_KEY", requires = "secret_key")]
    access_key: Option<String>,
    /// The access key's secret.
    #[arg(
        long,
        global = true,
        env = "WEIR_SECRET_KEY",
        hide_env_values = true,
        requires = "access_key"
    )]
    secret_key: Option<String>,
    /// Connect to name servers and brokers over TLS, verifying their certificates against
    /// the CA certificates of this PEM file.
    #[arg(long, global = true, env = "WEIR_TLS_CA")]
    tls_ca: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create, list, inspect, update and delete topics.
    Topic {
        #[command(subcommand)]
        cmd: topic::TopicCmd,
    },
    /// Send messages.
    Send(SendArgs),
    /// Consume a topic as a group, committing offsets (a second run continues).
    Consume(consume::ConsumeArgs),
    /// Consumer groups.
    Group {
        #[command(subcommand)]
        cmd: group::GroupCmd,
    },
    /// Look messages up.
    Message {
        #[command(subcommand)]
        cmd: MessageCmd,
    },
    /// Transactions: pending and dead ones, resolving dead ones by hand.
    Transaction {
        #[command(subcommand)]
        cmd: transaction::TransactionCmd,
    },
    /// Consumer groups' WebAssembly filters: upload, list, remove, test locally, start a
    /// new one.
    Filter {
        #[command(subcommand)]
        cmd: filter::FilterCmd,
    },
    /// Brokers' statistics and live settings.
    Broker {
        #[command(subcommand)]
        cmd: broker::BrokerCmd,
    },
    /// The brokers the name servers know.
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
    /// Serve the web console: cluster, topics, groups, messages, filters, transactions in
    /// a browser (signs in with an access key when the cluster has access control on).
    Console(ConsoleArgs),
    /// Measure produce and consume throughput and latency.
    Bench {
        #[command(subcommand)]
        cmd: bench::BenchCmd,
    },
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["body", "file", "lines"])))]
struct SendArgs {
    topic: String,
    #[arg(long)]
    tag: Option<String>,
    /// A key to find the message by (repeatable).
    #[arg(long = "key")]
    keys: Vec<String>,
    /// A property `K=V` (repeatable).
    #[arg(long = "prop", value_parser = parse_prop)]
    props: Vec<(String, String)>,
    /// Send to this queue id (on the first broker of the route that has it).
    #[arg(long, conflicts_with = "order_key")]
    queue: Option<u32>,
    /// Send every message with this key to the same queue.
    #[arg(long)]
    order_key: Option<String>,
    /// The body, as text.
    #[arg(long)]
    body: Option<String>,
    /// The body, from a file.
    #[arg(long)]
    file: Option<PathBuf>,
    /// One message per line of standard input (sent as each line is read).
    #[arg(long)]
    lines: bool,
    /// With --lines: each line is a JSON object with the message's own `key` (or `keys`),
    /// `tag`, `props` (string values) and `body`, e.g.
    /// `{"key": "order-1", "tag": "paid", "props": {"region": "eu"}, "body": "…"}`.
    /// --key and --prop add to every line's; a line's tag replaces --tag.
    #[arg(long, requires = "lines")]
    json_lines: bool,
    /// Deliver after the broker's delay level L (1-based: `1s 5s 10s 30s 1m …` by
    /// default; 0: at once).
    #[arg(long, value_name = "L", default_value_t = 0)]
    delay_level: u32,
    /// One JSON object per message sent.
    #[arg(long)]
    json: bool,
    /// Send each message in a transaction whose local outcome is this (unknown: the broker
    /// asks back later, and this stays up to answer --check-answer).
    #[arg(long, value_enum, value_name = "OUTCOME", conflicts_with_all = ["queue", "order_key"])]
    transaction: Option<transaction::Outcome>,
    /// With --transaction unknown: the answer to the broker's check-back.
    #[arg(long, value_enum, value_name = "DECISION", requires = "transaction")]
    check_answer: Option<transaction::Decision>,
    /// With --transaction unknown: how long to wait for the check-back, seconds.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 120,
        requires = "transaction"
    )]
    check_timeout: u64,
    /// The producer group (a transaction's check-backs go to a live producer of it).
    #[arg(long, default_value = "weir-cli")]
    producer_group: String,
}

pub(crate) fn parse_prop(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not K=V")),
    }
}

#[derive(Args, Debug)]
struct ConsoleArgs {
    /// Where the console listens (keep it on loopback or behind a TLS proxy: it serves
    /// plain HTTP).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// A host name (no port) the console answers to besides IP addresses and `localhost`,
    /// as the browser's address bar names it (repeatable). Requests naming any other host
    /// are refused: a page cannot reach the console through a name of its own.
    #[arg(long = "allowed-host", value_name = "NAME")]
    allowed_hosts: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum MessageCmd {
    /// Messages of a topic by key.
    Key { topic: String, key: String },
    /// A message by id.
    Id { msg_id: String },
}

#[derive(Subcommand, Debug)]
enum ClusterCmd {
    /// Brokers by cluster: id, address, role, and replication lag in bytes and seconds
    /// (a master: its slowest slave's; a slave: its own).
    List {
        /// One JSON object per broker.
        #[arg(long)]
        json: bool,
    },
}

/// Exit status of a run whose reader went away (`weir topic list | head`), as a process
/// killed by SIGPIPE reports in a shell.
const READER_GONE: i32 = 141;

/// `println!` panics when stdout's reader has gone; that is how a pipeline ends, not a
/// fault: the run ends quietly, as tools killed by SIGPIPE do. Other panics are reported
/// as usual.
fn end_quietly_when_stdout_closes() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if text.starts_with("failed printing to stdout") && text.contains("Broken pipe") {
            std::process::exit(READER_GONE);
        }
        report(info);
    }));
}

fn main() -> std::process::ExitCode {
    end_quietly_when_stdout_closes();
    // As the servers do: a consumer's first catch-up read grows its heap quickly. (Kernels
    // without the switch keep their setting; nothing to say about it.)
    let _ = weir_namesrv::server_main::heap_on_small_pages();
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Cmd::Bench { cmd } = &cli.cmd
        && let Some(workers) = cmd.runtime_workers()
    {
        runtime.worker_threads(workers);
    }
    let rt = match runtime.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weir: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let line = format!("{e:#}").replace('\n', " ");
            eprintln!("weir: {line}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Cmd::Console(args) = &cli.cmd {
        return console(args, &cli).await;
    }
    // Filter commands that run without any broker or name server.
    let cmd = match cli.cmd {
        Cmd::Filter { cmd } => match filter::run_local(cmd).await? {
            None => return Ok(()),
            Some(cmd) => Cmd::Filter { cmd },
        },
        other => other,
    };
    let mut config = ClientConfig::new(&cli.namesrv);
    if let (Some(key), Some(secret)) = (&cli.access_key, &cli.secret_key) {
        config = config.with_credentials(key, secret)?;
    }
    if let Some(ca) = &cli.tls_ca {
        config = config.with_tls_ca(ca)?;
    }
    let client = ClientInstance::new(config)?;
    match cmd {
        Cmd::Topic { cmd } => topic::run(cmd, client).await,
        Cmd::Send(args) => send(args, client).await,
        Cmd::Consume(args) => consume::run(args, client).await,
        Cmd::Group { cmd } => group::run(cmd, client).await,
        Cmd::Broker { cmd } => broker::run(cmd, client).await,
        Cmd::Message { cmd } => message(cmd, client).await,
        Cmd::Transaction { cmd } => transaction::run(cmd, client).await,
        Cmd::Filter { cmd } => filter::run(cmd, client).await,
        Cmd::Cluster {
            cmd: ClusterCmd::List { json },
        } => cluster::list(client, json).await,
        Cmd::Bench { cmd } => bench::run(cmd, client).await,
        Cmd::Console(_) => bail!("the console is started before any client"),
    }
}

/// `weir console`: serves until Ctrl-C or SIGTERM. Operators log in through the page:
/// the console does not act with `--access-key` (no anonymous admin for whoever can reach
/// it).
async fn console(args: &ConsoleArgs, cli: &Cli) -> anyhow::Result<()> {
    if cli.access_key.is_some() {
        eprintln!("weir console: --access-key is not used: operators log in on the page");
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!(
        "weir console: http://{}",
        listener.local_addr().context("the listener's address")?
    );
    let config = weir_console::ConsoleConfig {
        namesrv: cli.namesrv.clone(),
        tls_ca: cli.tls_ca.clone(),
        allowed_hosts: args.allowed_hosts.clone(),
    };
    weir_console::serve(listener, &config, stop_signal()).await?;
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// One line per sent message; an error when standard output is gone (a closed pipe), which
/// stops the sending.
fn print_sent(r: &SendResult, json: bool) -> anyhow::Result<()> {
    print_sent_with(r, &[], json)
}

/// A sent message's line, with `extra` fields after the common ones (a transaction's id
/// and local state).
pub(crate) fn print_sent_with(
    r: &SendResult,
    extra: &[(&str, &str)],
    json: bool,
) -> anyhow::Result<()> {
    use std::io::Write;
    let status = r.status.as_str();
    if json {
        let mut v = serde_json::json!({
            "status": status,
            "msg_id": r.msg_id,
            "broker": r.broker_name,
            "queue": r.queue_id,
            "queue_offset": r.queue_offset,
        });
        if let Some(obj) = v.as_object_mut() {
            for (k, val) in extra {
                obj.insert((*k).to_owned(), (*val).into());
            }
        }
        writeln!(std::io::stdout(), "{v}")
    } else {
        let mut line = format!(
            "{status} msg_id={} broker={} queue={} queue_offset={}",
            r.msg_id, r.broker_name, r.queue_id, r.queue_offset
        );
        for (k, val) in extra {
            line.push_str(&format!(" {k}={val}"));
        }
        writeln!(std::io::stdout(), "{line}")
    }
    .context("writing to standard output")
}

async fn send(args: SendArgs, client: ClientInstance) -> anyhow::Result<()> {
    if let Some(outcome) = args.transaction {
        return transaction::send(args, outcome, client).await;
    }
    let producer = Producer::new(args.producer_group.clone(), client.clone());
    let target = match args.queue {
        Some(q) => {
            let admin = Admin::new(client.clone());
            let route = admin.route(&args.topic).await?;
            let broker = route
                .queues
                .iter()
                .find(|d| q < d.write_queues)
                .map(|d| d.broker_name.clone())
                .with_context(|| format!("no broker of topic {} has a queue {q}", args.topic))?;
            Some(MessageQueue {
                topic: args.topic.clone(),
                broker_name: broker,
                queue_id: q,
            })
        }
        None => None,
    };
    let make = |body: Bytes| {
        let mut m = Message::new(args.topic.clone(), body);
        m.tags = args.tag.clone().unwrap_or_default();
        m.keys = args.keys.clone();
        m.properties = args.props.clone();
        m.with_delay_level(args.delay_level)
    };
    let send_one = async |m: Message| -> anyhow::Result<SendResult> {
        let r = match (&target, &args.order_key) {
            (Some(mq), _) => producer.send_to_queue(&m, mq).await?,
            (None, Some(k)) => producer.send_with_order_key(&m, k).await?,
            (None, None) => producer.send(&m).await?,
        };
        Ok(r)
    };
    if let Some(body) = &args.body {
        print_sent(&send_one(make(Bytes::from(body.clone()))).await?, args.json)?;
    } else if let Some(path) = &args.file {
        let body = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        print_sent(&send_one(make(Bytes::from(body))).await?, args.json)?;
    } else {
        send_lines::for_each_line(args.json_lines, async |line| {
            let mut m = make(line.body);
            if let Some(tag) = line.tag {
                m.tags = tag;
            }
            m.keys.extend(line.keys);
            m.properties.extend(line.props);
            print_sent(&send_one(m).await?, args.json)
        })
        .await?;
    }
    Ok(())
}

fn message_json(m: &ReceivedMessage) -> serde_json::Value {
    let props: serde_json::Map<String, serde_json::Value> = m
        .properties
        .iter()
        .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v.to_owned())))
        .collect();
    serde_json::json!({
        "topic": m.topic,
        "broker": m.broker_name,
        "queue": m.queue_id,
        "queue_offset": m.queue_offset,
        "msg_id": m.msg_id.to_string(),
        "tags": m.tags,
        "keys": m.keys.to_vec(),
        "props": props,
        "body": output::body_text(&m.body),
        "reconsume_times": m.reconsume_times,
        "born_ts": m.born_timestamp,
        "store_ts": m.store_timestamp,
    })
}

async fn message(cmd: MessageCmd, client: ClientInstance) -> anyhow::Result<()> {
    let admin = Admin::new(client);
    match cmd {
        MessageCmd::Key { topic, key } => {
            let found = admin.messages_by_key(&topic, &key, 32).await?;
            if found.is_empty() {
                bail!("no message of topic {topic} has key {key}");
            }
            for m in &found {
                println!("{}", message_json(m));
            }
        }
        MessageCmd::Id { msg_id } => {
            println!("{}", message_json(&admin.message_by_id(&msg_id).await?))
        }
    }
    Ok(())
}
