//! `weir filter upload|list|reset|remove|test|new|component`: consumer groups'
//! WebAssembly filters (`wit/filter.wit`). `test` runs a filter locally, in the broker's
//! own runtime, over messages given as JSON lines; `new` writes a filter project and
//! `component` wraps a C filter's module; the others talk to the brokers.

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine;
use bytes::Bytes;
use clap::{Args, Subcommand};
use serde::Deserialize;
use tokio::sync::mpsc;
use weir_client::{Admin, ClientInstance, FilterInfo, FilterList};
use weir_protocol::record::{self, Assigned};

pub(crate) use weir_broker::filter::{LocalFilter, parse_memory};

use crate::output;

mod component;
mod local;
mod new;
pub(crate) use local::load_local;
pub use local::test;

#[derive(Subcommand, Debug)]
pub enum FilterCmd {
    /// Upload a filter component (.wasm) for a consumer group and topic, to every broker
    /// that serves the topic; uploading again makes a new version.
    Upload(UploadArgs),
    /// The filters brokers run, with their counters.
    #[command(after_long_help = LIST_HELP)]
    List(ListArgs),
    /// Remove a group's filter for a topic from every broker that serves the topic.
    Remove(RemoveArgs),
    /// Clear the failed mark of a group's filter for a topic on every broker that serves
    /// the topic: its pulls run the same version again.
    Reset(RemoveArgs),
    /// Run a filter locally (no broker) over messages given as JSON lines on standard
    /// input; prints one verdict per message.
    #[command(after_long_help = TEST_INPUT_HELP)]
    Test(TestArgs),
    /// Write a new filter project (Rust or C) into a new folder: it builds with one
    /// command, outside any checkout of weir, has a native test, and says how to upload.
    New(new::NewArgs),
    /// Make a filter component of a core WebAssembly module (a C filter built with clang
    /// for wasm32-wasi, as `weir filter new --lang c` sets up).
    Component(component::ComponentArgs),
}

const TEST_INPUT_HELP: &str = "\
Input: one message per line of standard input, a JSON object such as
  {\"tags\": \"TagA\", \"keys\": [\"k1\"], \"properties\": {\"region\": \"eu\"}, \"body\": \"text\"}
Every field is optional:
  tags             the message's tag (default: none)
  keys             list of keys (each non-empty)
  properties       object of string values, kept in the order given
  body             the body as UTF-8 text; or
  body_base64      the body in Base64 (not with body)
  queue_offset     default: the line's index, counting from 0
  born_timestamp   milliseconds since the Unix epoch (default: now)
  store_timestamp  milliseconds since the Unix epoch (default: now)
  reconsume_count  default: 0
Unknown fields are errors. Blank lines are skipped. Messages go to the filter in batches
of 256 lines, all of --topic and --queue.

Output: per message, its line number and `keep` or `drop` (`1 keep`), or with --json
{\"line\":1,\"keep\":true}; then `N of M kept` on standard error. A malformed line stops
the run with an error naming the line (verdicts already printed stay printed).

The filter's log lines (`log` in the SDK, `host.log` in wit/filter.wit) go to standard
error as `[level] line`, under the broker's own limits: at most 10 lines in any one-second
interval (later ones are dropped, and a count of them is printed at the end), each cut at
1024 bytes, control characters escaped.";

const LIST_HELP: &str = "\
Counters, per broker and filter version, since the broker loaded that version:
  CALLS     successful batch calls
  IN        messages judged in those calls; KEPT: those the filter kept. Each stored
            message counts once while the group consumes a queue in order (a pull cut
            at its message count hands the verdicts beyond the cut to the pull that
            resumes there). It is judged and counted again only when a pull re-reads it:
            an offset reset, a retry after a pull the client gave up on, a rebalance
            before the offset was committed, another consumer of a broadcasting group.
  FAILURES  failed batches (guest errors, traps, deadlines, memory, wrong verdicts);
            their messages are not counted in IN
  NS/MSG    time in the filter per message judged
--json adds each cause, instances created and log lines dropped (over 10 in any
one-second interval, the broker's filter.log_lines_per_sec).";

fn parse_param(s: &str) -> Result<(String, String), String> {
    crate::parse_prop(s)
}

/// `n` bytes for people: a whole number of GiB, MiB or KiB when it is one.
fn human_bytes(n: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    format!("{n}B")
}

#[derive(Args, Debug)]
pub struct UploadArgs {
    /// The consumer group whose pulls the filter runs for.
    #[arg(long)]
    group: String,
    /// The topic it filters.
    #[arg(long)]
    topic: String,
    /// The filter component (a .wasm file of the `message-filter` world).
    file: PathBuf,
    /// A parameter `K=V` for the filter's `init` (repeatable; order kept).
    #[arg(long = "param", value_parser = parse_param)]
    params: Vec<(String, String)>,
    /// Memory cap of each instance, e.g. `64MiB` (B, KiB, MiB, GiB; or plain bytes).
    /// Default: the broker's `filter.memory_limit` (16 MiB unless configured); at most its
    /// `filter.max_memory_limit`. JavaScript and Python filters need 32-64 MiB.
    #[arg(long, value_parser = parse_memory)]
    memory: Option<u64>,
    /// One JSON object per broker.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only this consumer group's filters.
    #[arg(long)]
    group: Option<String>,
    /// One JSON object per broker, with every field and counter.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct RemoveArgs {
    #[arg(long)]
    group: String,
    #[arg(long)]
    topic: String,
    /// One JSON object per broker.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct TestArgs {
    /// The filter component (a .wasm file of the `message-filter` world).
    file: PathBuf,
    /// A parameter `K=V` for the filter's `init` (repeatable; order kept).
    #[arg(long = "param", value_parser = parse_param)]
    params: Vec<(String, String)>,
    /// The topic the filter sees.
    #[arg(long, default_value = "test")]
    topic: String,
    /// The queue id the filter sees.
    #[arg(long, default_value_t = 0)]
    queue: u32,
    /// The consumer group the filter sees.
    #[arg(long, default_value = "weir-filter-test")]
    group: String,
    /// Memory cap of the instance, as for `upload` (default 16 MiB).
    #[arg(long, value_parser = parse_memory)]
    memory: Option<u64>,
    /// One JSON object per verdict: {"line":1,"keep":true}.
    #[arg(long)]
    json: bool,
}

/// Runs the commands that need no broker; gives the others back.
pub async fn run_local(cmd: FilterCmd) -> anyhow::Result<Option<FilterCmd>> {
    match cmd {
        FilterCmd::Test(args) => test(args).await.map(|()| None),
        FilterCmd::New(args) => new::run(args).map(|()| None),
        FilterCmd::Component(args) => component::run(args).map(|()| None),
        other => Ok(Some(other)),
    }
}

pub async fn run(cmd: FilterCmd, client: ClientInstance) -> anyhow::Result<()> {
    match cmd {
        FilterCmd::Upload(args) => upload(args, client).await,
        FilterCmd::List(args) => list(args, client).await,
        FilterCmd::Remove(args) => remove(args, client).await,
        FilterCmd::Reset(args) => reset(args, client).await,
        local @ (FilterCmd::Test(_) | FilterCmd::New(_) | FilterCmd::Component(_)) => {
            run_local(local).await.map(|_| ())
        }
    }
}

fn read_component(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading filter {}", path.display()))?;
    if bytes.is_empty() {
        bail!("filter {} is an empty file", path.display());
    }
    Ok(bytes)
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn params_json(params: &[(String, String)]) -> serde_json::Value {
    params
        .iter()
        .map(|(k, v)| serde_json::json!([k, v]))
        .collect()
}

async fn upload(args: UploadArgs, client: ClientInstance) -> anyhow::Result<()> {
    let component = read_component(&args.file)?;
    let done = Admin::new(client)
        .upload_filter_with_memory(
            &args.group,
            &args.topic,
            Bytes::from(component),
            args.params.clone(),
            args.memory,
        )
        .await
        .with_context(|| {
            format!(
                "uploading {} for group {} on topic {}",
                args.file.display(),
                args.group,
                args.topic
            )
        })?;
    for (broker, up) in done {
        if args.json {
            let v = serde_json::json!({
                "broker": broker,
                "group": args.group,
                "topic": args.topic,
                "version": up.version,
                "sha256": up.sha256,
                "compiled": up.compiled,
                "needs_body": up.needs_body,
            });
            println!("{v}");
        } else {
            println!(
                "{broker}: version {}, sha256 {}, {}, needs body: {}",
                up.version,
                up.sha256,
                if up.compiled { "compiled" } else { "cached" },
                yes_no(up.needs_body)
            );
        }
    }
    Ok(())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn filter_json(f: &FilterInfo) -> serde_json::Value {
    let s = &f.stats;
    serde_json::json!({
        "group": f.group,
        "topic": f.topic,
        "version": f.version,
        "sha256": f.sha256,
        "params": params_json(&f.params),
        "size": f.size,
        "needs_body": f.needs_body,
        "memory": f.memory,
        "uploaded_at": f.uploaded_at,
        "state": if f.failed.is_some() { "failed" } else { "active" },
        "failed": f.failed,
        "stats": {
            "calls": s.calls,
            "messages_in": s.messages_in,
            "messages_kept": s.messages_kept,
            "call_nanos": s.call_nanos,
            "nanos_per_message": s.nanos_per_message(),
            "failures": s.failures(),
            "guest_errors": s.guest_errors,
            "traps": s.traps,
            "deadlines": s.deadlines,
            "memory_exhausted": s.memory_exhausted,
            "wrong_verdicts": s.wrong_verdicts,
            "instantiations": s.instantiations,
            "log_lines_dropped": s.log_lines_dropped,
        },
    })
}

fn list_table(lists: &[(String, FilterList)]) -> Vec<Vec<String>> {
    let mut rows = vec![
        [
            "BROKER", "GROUP", "TOPIC", "VERSION", "SHA256", "PARAMS", "MEMORY", "STATE", "CALLS",
            "IN", "KEPT", "FAILURES", "NS/MSG",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for (broker, list) in lists {
        for f in &list.filters {
            let params = if f.params.is_empty() {
                "-".to_owned()
            } else {
                f.params
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let state = match &f.failed {
                None => "active".to_owned(),
                Some(cause) => format!("failed: {}", one_line(cause)),
            };
            let s = &f.stats;
            rows.push(vec![
                broker.clone(),
                f.group.clone(),
                f.topic.clone(),
                f.version.to_string(),
                f.sha256.chars().take(12).collect(),
                params,
                human_bytes(f.memory),
                state,
                s.calls.to_string(),
                s.messages_in.to_string(),
                s.messages_kept.to_string(),
                s.failures().to_string(),
                s.nanos_per_message()
                    .map_or_else(|| "-".to_owned(), |n| n.to_string()),
            ]);
        }
    }
    rows
}

async fn list(args: ListArgs, client: ClientInstance) -> anyhow::Result<()> {
    let lists = Admin::new(client)
        .list_filters(args.group.as_deref())
        .await
        .context("listing filters")?;
    if args.json {
        for (broker, list) in &lists {
            let v = serde_json::json!({
                "broker": broker,
                "compilations": list.compilations,
                "cache_loads": list.cache_loads,
                "filters": list.filters.iter().map(filter_json).collect::<Vec<_>>(),
            });
            println!("{v}");
        }
        return Ok(());
    }
    if lists.iter().all(|(_, l)| l.filters.is_empty()) {
        match &args.group {
            Some(g) => println!("no filter is registered for group {g}"),
            None => println!("no filter is registered"),
        }
    } else {
        output::table(&list_table(&lists));
    }
    for (broker, list) in &lists {
        println!(
            "{broker}: {} compilations, {} loaded from the cache",
            list.compilations, list.cache_loads
        );
    }
    Ok(())
}

async fn remove(args: RemoveArgs, client: ClientInstance) -> anyhow::Result<()> {
    let done = Admin::new(client)
        .remove_filter(&args.group, &args.topic)
        .await
        .with_context(|| {
            format!(
                "removing the filter of group {} on topic {}",
                args.group, args.topic
            )
        })?;
    for (broker, r) in done {
        if args.json {
            let v = serde_json::json!({
                "broker": broker,
                "group": args.group,
                "topic": args.topic,
                "removed_version": r.version,
            });
            println!("{v}");
        } else {
            println!("{broker}: removed version {}", r.version);
        }
    }
    Ok(())
}

async fn reset(args: RemoveArgs, client: ClientInstance) -> anyhow::Result<()> {
    let done = Admin::new(client)
        .reset_filter(&args.group, &args.topic)
        .await
        .with_context(|| {
            format!(
                "resetting the filter of group {} on topic {}",
                args.group, args.topic
            )
        })?;
    for (broker, r) in done {
        if args.json {
            let v = serde_json::json!({
                "broker": broker,
                "group": args.group,
                "topic": args.topic,
                "version": r.version,
                "cleared": r.cleared,
            });
            println!("{v}");
        } else {
            match &r.cleared {
                Some(cause) => println!(
                    "{broker}: version {}: failed mark cleared (it was: {cause})",
                    r.version
                ),
                None => println!("{broker}: version {}: was not marked failed", r.version),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn memory_sizes_for_people() {
        // Parsing them: weir_broker::filter::parse_memory's tests.
        assert_eq!(human_bytes(64 << 20), "64MiB");
        assert_eq!(human_bytes(1 << 30), "1GiB");
        assert_eq!(human_bytes(1536 << 10), "1536KiB");
        assert_eq!(human_bytes(1000), "1000B");
    }
}
