//! Scraping a metrics endpoint in tests: a plain HTTP/1.1 GET, a strict parser of the
//! Prometheus text format (every sample's family declared, labels and values well
//! formed), and `promtool check metrics` (Debian's `prometheus` package, which
//! `scripts/install-promtool` installs).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` on `addr`: (status, headers lowercased, body). The server closes after
/// answering.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the metrics endpoint");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send request");
    let mut raw = Vec::new();
    tokio::time::timeout(crate::T, s.read_to_end(&mut raw))
        .await
        .expect("answer within the timeout")
        .expect("read answer");
    let text = String::from_utf8(raw).expect("answer is UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .and_then(|v| v.trim().parse().ok())
        .expect("a Content-Length");
    assert_eq!(len, body.len(), "Content-Length matches the body");
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// Scrapes `/metrics`, checks the answer's status and type, parses it strictly and runs
/// `promtool check metrics` on it.
pub async fn scrape(addr: SocketAddr) -> Samples {
    let (status, head, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    promtool_check(&body);
    parse(&body)
}

/// Samples by `name{label="value",…}` (labels sorted).
#[derive(Debug, Default)]
pub struct Samples(pub BTreeMap<String, f64>);

impl Samples {
    /// The sample named so with exactly these labels.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        labels.sort();
        self.0.get(&key(name, &labels)).copied()
    }

    /// Like [`Samples::get`], panicking when absent.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| {
            panic!(
                "no sample {name} {labels:?}; have:\n{}",
                self.0.keys().cloned().collect::<Vec<_>>().join("\n")
            )
        })
    }
}

fn key(name: &str, labels: &[(String, String)]) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{name}{{{}}}", inner.join(","))
}

/// Parses the text format, panicking on anything malformed: a sample of an undeclared
/// family, a bad name, label or value, a duplicate series.
pub fn parse(text: &str) -> Samples {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Samples::default();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                matches!(kind, "counter" | "gauge" | "histogram"),
                "kind {kind}"
            );
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "{name} declared twice"
            );
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line:?}");
        let name_end = line
            .find(['{', ' '])
            .expect("a name then labels or a value");
        let name = &line[..name_end];
        assert!(
            !name.is_empty()
                && name.starts_with("weir_")
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name {name:?}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name);
        let kind = types
            .get(family)
            .unwrap_or_else(|| panic!("sample {name} of an undeclared family"));
        if kind == "counter" {
            assert!(
                name.ends_with("_total"),
                "counter {name} must end in _total"
            );
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = parse_labels(r, &mut labels);
        }
        let value = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .unwrap_or_else(|e| panic!("value {v:?} of {line:?}: {e}")),
        };
        labels.sort();
        assert!(
            samples.0.insert(key(name, &labels), v).is_none(),
            "duplicate series {line:?}"
        );
    }
    samples
}

/// Parses `k="v",…}` into `out`; returns what follows the `}`.
fn parse_labels<'a>(mut r: &'a str, out: &mut Vec<(String, String)>) -> &'a str {
    loop {
        if let Some(after) = r.strip_prefix('}') {
            return after;
        }
        let (k, after) = r.split_once("=\"").expect("label=\"value\"");
        assert!(
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "label name {k:?}"
        );
        let mut v = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().expect("closed label value") {
                (i, '"') => break i,
                (_, '\\') => match chars.next().expect("escape").1 {
                    'n' => v.push('\n'),
                    c @ ('\\' | '"') => v.push(c),
                    c => panic!("bad escape \\{c}"),
                },
                (_, c) => v.push(c),
            }
        };
        out.push((k.to_owned(), v));
        r = &after[end + 1..];
        r = r.strip_prefix(',').unwrap_or(r);
    }
}

/// Runs `promtool check metrics` on `text`; panics with its findings, or saying how to
/// install it when it is missing.
pub fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): install it with scripts/install-promtool (Debian's prometheus package)")
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics found problems:\n{}{}\n--- the text ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
