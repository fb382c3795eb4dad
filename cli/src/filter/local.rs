//! `weir filter test`: runs a filter locally, in the broker's own runtime, over messages
//! given as JSON lines, and prints each verdict; the filter's log lines go to standard
//! error as `[level] line`, under the broker's rate limit and length cap.

use std::sync::Arc;

use weir_broker::filter::FilterConfig;

use super::*;

/// Lines per filter call.
const TEST_BATCH: usize = 256;

/// One input line (see [`TEST_INPUT_HELP`]).
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct TestMessage {
    #[serde(default)]
    tags: String,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default, deserialize_with = "ordered_strings")]
    properties: Vec<(String, String)>,
    body: Option<String>,
    body_base64: Option<String>,
    queue_offset: Option<u64>,
    born_timestamp: Option<i64>,
    store_timestamp: Option<i64>,
    reconsume_count: Option<u32>,
}

/// A JSON object of strings, in the order written.
fn ordered_strings<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<(String, String)>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<(String, String)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object of string values")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut m: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(kv) = m.next_entry::<String, String>()? {
                out.push(kv);
            }
            Ok(out)
        }
    }
    d.deserialize_map(V)
}

/// Where the records of a test run are, as a store would place them.
struct TestLog {
    topic: String,
    queue: u32,
    now_ms: i64,
    /// Commit log offset of the next record: records are laid out back to back.
    next_offset: u64,
}

/// The host addresses test records carry.
const TEST_HOST: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// serde_json's message without its " at line 1 column N" (every input is one line).
fn json_error(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => format!("{} (column {})", &s[..i], e.column()),
        None => s,
    }
}

impl TestLog {
    /// The record of input line `index` (0-based); `Ok(None)` for a blank line.
    fn encode(&mut self, index: usize, line: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let n = index + 1;
        if line.trim().is_empty() {
            return Ok(None);
        }
        let m: TestMessage = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("line {n}: not a message: {}", json_error(&e)))?;
        let body = match (m.body, m.body_base64) {
            (Some(_), Some(_)) => bail!("line {n}: give body or body_base64, not both"),
            (Some(text), None) => text.into_bytes(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| anyhow::anyhow!("line {n}: body_base64 is not Base64: {e}"))?,
            (None, None) => Vec::new(),
        };
        let mut msg = record::Message::new(self.topic.clone(), self.queue, body);
        msg.tags = m.tags;
        msg.keys = m.keys;
        msg.properties = m.properties;
        msg.born_timestamp = m.born_timestamp.unwrap_or(self.now_ms);
        msg.born_host = TEST_HOST;
        msg.reconsume_times = m.reconsume_count.unwrap_or(0);
        let assigned = Assigned {
            queue_offset: m.queue_offset.unwrap_or(index as u64),
            commit_log_offset: self.next_offset,
            store_timestamp: m.store_timestamp.unwrap_or(self.now_ms),
            store_host: TEST_HOST,
        };
        let rec =
            record::encode_to_vec(&msg, &assigned).map_err(|e| anyhow::anyhow!("line {n}: {e}"))?;
        self.next_offset += rec.len() as u64;
        Ok(Some(rec))
    }
}

/// What the reader hands the filter: line numbers (1-based) and their records.
struct TestBatch {
    lines: Vec<usize>,
    records: Vec<Vec<u8>>,
}

/// Reads `input` into batches of [`TEST_BATCH`] records; a bad line ends the stream with
/// its error, after the lines before it.
fn read_batches(
    input: impl BufRead,
    mut log: TestLog,
    tx: &mpsc::Sender<anyhow::Result<TestBatch>>,
) {
    let mut batch = TestBatch {
        lines: Vec::new(),
        records: Vec::new(),
    };
    let mut failure = None;
    for (index, line) in input.lines().enumerate() {
        let rec = line
            .with_context(|| format!("reading line {} of standard input", index + 1))
            .and_then(|line| log.encode(index, &line));
        match rec {
            Ok(None) => {}
            Ok(Some(rec)) => {
                batch.lines.push(index + 1);
                batch.records.push(rec);
                if batch.records.len() == TEST_BATCH {
                    let full = std::mem::replace(
                        &mut batch,
                        TestBatch {
                            lines: Vec::new(),
                            records: Vec::new(),
                        },
                    );
                    if tx.blocking_send(Ok(full)).is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if !batch.records.is_empty() && tx.blocking_send(Ok(batch)).is_err() {
        return;
    }
    if let Some(e) = failure {
        let _ = tx.blocking_send(Err(e));
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Prints a filter's log line on standard error, as `[level] line`.
fn print_log_line(level: tracing::Level, line: &str) {
    eprintln!("[{}] {line}", level.as_str().to_ascii_lowercase());
}

/// Loads a filter component off the async threads (compiling takes a while). `memory` is
/// the instance's memory cap in bytes (`None`: the broker's default); with `print_log`,
/// its log lines go to standard error ([`print_log_line`]).
pub(crate) async fn load_local(
    path: &Path,
    params: Vec<(String, String)>,
    memory: Option<u64>,
    print_log: bool,
) -> anyhow::Result<LocalFilter> {
    let component = read_component(path)?;
    let mut config = FilterConfig::default();
    if let Some(m) = memory {
        config = config.with_memory(m).context("--memory")?;
    }
    let sink = print_log.then(|| Arc::new(print_log_line) as weir_broker::filter::LogSink);
    LocalFilter::load_in_background(component, params, config, sink)
        .await
        .with_context(|| format!("loading filter {}", path.display()))
}

pub async fn test(args: TestArgs) -> anyhow::Result<()> {
    record::validate_topic(&args.topic).context("--topic")?;
    if args.group.trim().is_empty() {
        bail!("--group is empty");
    }
    let filter = load_local(&args.file, args.params.clone(), args.memory, true).await?;

    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("weir: reading messages as JSON lines from standard input (end with Ctrl-D)");
    }
    let log = TestLog {
        topic: args.topic.clone(),
        queue: args.queue,
        now_ms: now_ms(),
        next_offset: 0,
    };
    let (tx, mut rx) = mpsc::channel(2);
    // A plain thread: when the run fails while standard input is still open, the process
    // ends without waiting for it.
    std::thread::spawn(move || read_batches(stdin.lock(), log, &tx));

    let (mut total, mut kept) = (0u64, 0u64);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut result = Ok(());
    while let Some(batch) = rx.recv().await {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        let (first, last) = (
            batch.lines.first().copied().unwrap_or(0),
            batch.lines.last().copied().unwrap_or(0),
        );
        let n = batch.records.len();
        let verdicts = match filter
            .run(&args.topic, args.queue, &args.group, batch.records)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                result = Err(anyhow::Error::new(e)
                    .context(format!("the filter failed on lines {first} to {last}")));
                break;
            }
        };
        if verdicts.len() != n {
            result = Err(anyhow::anyhow!(
                "the filter returned {} verdicts for the {n} messages of lines {first} to {last}",
                verdicts.len()
            ));
            break;
        }
        for (line, keep) in batch.lines.iter().zip(&verdicts) {
            let w = if args.json {
                writeln!(out, "{{\"line\":{line},\"keep\":{keep}}}")
            } else {
                writeln!(out, "{line} {}", if *keep { "keep" } else { "drop" })
            };
            w.context("writing standard output")?;
        }
        out.flush().context("writing standard output")?;
        total += n as u64;
        kept += verdicts.iter().filter(|k| **k).count() as u64;
    }
    out.flush().context("writing standard output")?;
    let dropped = filter.stats().log_lines_dropped;
    if dropped > 0 {
        eprintln!(
            "weir: {dropped} log lines dropped (the limit is {} lines a second)",
            filter.config().log_lines_per_sec
        );
    }
    // On failure the error is the last line on standard error.
    result?;
    eprintln!("{kept} of {total} kept");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> TestLog {
        TestLog {
            topic: "T".into(),
            queue: 3,
            now_ms: 1_700_000_000_000,
            next_offset: 0,
        }
    }

    fn view(rec: &[u8]) -> weir_protocol::RecordView<'_> {
        weir_protocol::RecordView::parse_verified(rec).unwrap()
    }

    #[test]
    fn lines_become_records() {
        let mut l = log();
        let a = l
            .encode(
                0,
                r#"{"tags": "TagA", "keys": ["k1", "k2"], "properties": {"z": "1", "a": "2"}, "body": "text"}"#,
            )
            .unwrap()
            .unwrap();
        let v = view(&a);
        assert_eq!(v.topic(), "T");
        assert_eq!(v.queue_id(), 3);
        assert_eq!(v.queue_offset(), 0);
        assert_eq!(v.commit_log_offset(), 0);
        assert_eq!(v.tags(), "TagA");
        assert_eq!(v.keys().collect::<Vec<_>>(), ["k1", "k2"]);
        assert_eq!(
            v.properties().collect::<Vec<_>>(),
            [("z", "1"), ("a", "2")],
            "properties keep their order"
        );
        assert_eq!(v.body(), b"text");
        assert_eq!(v.born_timestamp(), 1_700_000_000_000);
        assert_eq!(v.store_timestamp(), 1_700_000_000_000);

        let b = l
            .encode(
                4,
                r#"{"body_base64": "AAEC", "queue_offset": 99, "born_timestamp": 5, "store_timestamp": 6, "reconsume_count": 2}"#,
            )
            .unwrap()
            .unwrap();
        let v = view(&b);
        assert_eq!(v.body(), [0, 1, 2]);
        assert_eq!(v.queue_offset(), 99);
        assert_eq!(v.commit_log_offset(), a.len() as u64);
        assert_eq!((v.born_timestamp(), v.store_timestamp()), (5, 6));
        assert_eq!(v.reconsume_times(), 2);
        assert_eq!(v.tags(), "");

        assert!(l.encode(5, "   ").unwrap().is_none());
        let c = l.encode(6, "{}").unwrap().unwrap();
        assert_eq!(view(&c).queue_offset(), 6, "defaults to the line's index");
    }

    #[test]
    fn bad_lines_name_their_number() {
        for (line, want) in [
            ("{not json", "line 8: not a message"),
            (r#"{"tag": "A"}"#, "unknown field `tag`"),
            (r#"{"keys": "k1"}"#, "line 8"),
            (r#"{"properties": {"a": 1}}"#, "line 8"),
            (r#"{"body": "a", "body_base64": "YQ=="}"#, "not both"),
            (r#"{"body_base64": "%%%"}"#, "not Base64"),
            (r#"{"keys": [""]}"#, "line 8: invalid message"),
            ("[1, 2]", "line 8"),
        ] {
            let e = log().encode(7, line).unwrap_err().to_string();
            assert!(e.contains(want), "{line}: {e}");
            assert!(e.starts_with("line 8"), "{line}: {e}");
            assert!(!e.contains("line 1 column"), "{line}: {e}");
        }
    }

    #[test]
    fn input_is_cut_into_batches_and_stops_at_a_bad_line() {
        let mut input = String::new();
        for i in 0..600 {
            if i == 10 {
                input.push('\n');
            }
            input.push_str(&format!("{{\"body\": \"{i}\"}}\n"));
        }
        input.push_str("oops\n{}\n");
        let (tx, mut rx) = mpsc::channel(100);
        read_batches(input.as_bytes(), log(), &tx);
        drop(tx);
        let mut sizes = Vec::new();
        let mut lines = Vec::new();
        let mut err = None;
        while let Ok(b) = rx.try_recv() {
            match b {
                Ok(b) => {
                    sizes.push(b.records.len());
                    lines.extend(b.lines);
                }
                Err(e) => err = Some(e.to_string()),
            }
        }
        assert_eq!(sizes, [256, 256, 88]);
        assert_eq!(lines.len(), 600);
        assert!(!lines.contains(&11), "the blank line 11 is skipped");
        assert_eq!(lines[10], 12);
        let err = err.unwrap();
        assert!(err.starts_with("line 602:"), "{err}");
    }
}
