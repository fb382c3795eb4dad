//! Running RocketMQ's own clients against weir: the probes in `interop/` (built by
//! `scripts/test`; `interop/README.md` has the scenarios and the lines they print), each
//! in its own process. The probes check what they can see themselves (every send
//! `SEND_OK`, no duplicate delivery, order within an order key); the tests in the
//! per-client modules check the rest against weir's own view.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// A probe's whole run at most (its own waits are bounded well below this).
pub const RUN_LIMIT: Duration = Duration::from_secs(120);

pub fn interop(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../interop")
        .join(path)
}

/// Which client runs a scenario.
#[derive(Clone, Copy)]
pub enum Lang {
    /// RocketMQ's Java client 4.9.x (`interop/java`).
    Java,
    /// The same probe built against the newest 5.x remoting client (`interop/java5`).
    Java5,
    Go,
    /// ali-ons, RocketMQ's pure-JavaScript 4.x client.
    Node,
    /// PyPI's `rocketmq`, RocketMQ's C++ client underneath.
    Python,
}

/// The Java probe built in `interop/<dir>`: one JVM command for every client version.
fn java(dir: &str) -> Command {
    let target = interop(dir).join("target");
    let jar = target.join("interop.jar");
    assert!(
        jar.exists(),
        "{} is missing: scripts/test builds the RocketMQ client probes (mvn)",
        jar.display()
    );
    let cp = format!("{}:{}/*", jar.display(), target.join("lib").display());
    let mut c = Command::new("java");
    c.args([
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-Xmx256m",
        "-cp",
        &cp,
        "weir.interop.Main",
    ]);
    c
}

impl Lang {
    /// The probe's command, before its scenario and arguments.
    fn command(self) -> Command {
        match self {
            Lang::Java => java("java"),
            Lang::Java5 => java("java5"),
            Lang::Go => {
                let probe = interop("go/target/probe");
                assert!(
                    probe.exists(),
                    "{} is missing: scripts/test builds the RocketMQ client probes (go build)",
                    probe.display()
                );
                Command::new(probe)
            }
            Lang::Node => {
                let modules = interop("node/node_modules/ali-ons");
                assert!(
                    modules.exists(),
                    "{} is missing: scripts/test installs the Node.js probe's packages (npm ci --prefix interop/node)",
                    modules.display()
                );
                let mut c = Command::new("node");
                c.arg(interop("node/probe.js"));
                c
            }
            Lang::Python => {
                let python = interop("python/target/venv/bin/python");
                assert!(
                    python.exists(),
                    "{} is missing: scripts/test installs RocketMQ's Python client into this \
                     venv (python3 -m venv, then pip install -r interop/python/requirements.txt)",
                    python.display()
                );
                let mut c = Command::new(python);
                c.arg(interop("python/probe.py"));
                c
            }
        }
    }
}

/// What a probe printed: its fact lines, split on tabs, and whether it said `DONE ok`.
pub struct Run {
    pub lines: Vec<Vec<String>>,
    pub ok: bool,
    pub stderr: String,
}

impl Run {
    pub fn of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Vec<String>> + 'a {
        self.lines.iter().filter(move |l| l[0] == kind)
    }

    /// RECV lines' keys (field 8).
    pub fn received_keys(&self) -> Vec<String> {
        self.of("RECV").map(|l| l[8].clone()).collect()
    }

    pub fn assert_ok(&self, what: &str) {
        assert!(
            self.ok,
            "{what}: the probe did not finish DONE ok\n--- stdout\n{}\n--- stderr\n{}",
            self.lines
                .iter()
                .map(|l| l.join("\t"))
                .collect::<Vec<_>>()
                .join("\n"),
            self.stderr
        );
    }
}

/// A probe running in its own process.
pub struct Probe {
    child: tokio::process::Child,
}

impl Probe {
    pub fn start(lang: Lang, scenario: &str, namesrv: &str, args: &[&str]) -> Probe {
        let mut cmd = lang.command();
        cmd.arg(scenario)
            .arg(namesrv)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        Probe {
            child: cmd
                .spawn()
                .expect("start the probe (java, go, node and python3 must be installed)"),
        }
    }

    /// Waits for a READY line (the probe then consumes), returning the lines before it.
    pub async fn ready(&mut self) -> Vec<Vec<String>> {
        let stdout = self.child.stdout.as_mut().expect("piped");
        let mut reader = BufReader::new(stdout);
        let mut before = Vec::new();
        let mut line = String::new();
        let found = tokio::time::timeout(RUN_LIMIT, async {
            loop {
                line.clear();
                if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return false;
                }
                let fields: Vec<String> = line.trim_end().split('\t').map(str::to_owned).collect();
                if fields[0] == "READY" {
                    return true;
                }
                before.push(fields);
            }
        })
        .await
        .unwrap_or(false);
        assert!(found, "the probe ended or stalled before READY: {before:?}");
        before
    }

    /// Waits for the probe to end and collects what it printed.
    pub async fn finish(mut self) -> Run {
        let mut out = String::new();
        let mut err = String::new();
        let read = async {
            use tokio::io::AsyncReadExt;
            if let Some(o) = self.child.stdout.as_mut() {
                o.read_to_string(&mut out).await.ok();
            }
            if let Some(e) = self.child.stderr.as_mut() {
                e.read_to_string(&mut err).await.ok();
            }
            self.child.wait().await
        };
        let status = tokio::time::timeout(RUN_LIMIT, read)
            .await
            .expect("the probe ends in time")
            .expect("the probe's exit status");
        let lines: Vec<Vec<String>> = out
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('\t').map(str::to_owned).collect())
            .collect();
        let ok = status.success()
            && lines
                .iter()
                .any(|l| l[0] == "DONE" && l.get(1).map(String::as_str) == Some("ok"));
        Run {
            lines,
            ok,
            stderr: err,
        }
    }
}

pub async fn run(lang: Lang, scenario: &str, namesrv: &str, args: &[&str]) -> Run {
    Probe::start(lang, scenario, namesrv, args).finish().await
}

/// Props of a RECV line (field 9, `k=v;k=v` with `%XX` escapes), as a map.
pub fn props(line: &[String]) -> BTreeMap<String, String> {
    let unescape = |s: &str| {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c == '%' {
                let hex: String = chars.by_ref().take(2).collect();
                if let Ok(b) = u8::from_str_radix(&hex, 16) {
                    out.push(b as char);
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    line[9]
        .split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (unescape(k), unescape(v)))
        .collect()
}

/// Two members of one clustering group: together they received `n` distinct messages,
/// each exactly once.
pub fn assert_shared_once(a: &Run, b: &Run, n: usize) {
    let mut all: Vec<String> = a.received_keys();
    all.extend(b.received_keys());
    let distinct: std::collections::BTreeSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), n, "every message delivered: {all:?}");
    assert_eq!(all.len(), n, "each exactly once: {all:?}");
}

/// A member (`instance`) of broadcasting `group` on `topic`, ending once it has `expect`.
pub fn broadcast_member(
    lang: Lang,
    namesrv: &str,
    topic: &str,
    group: &str,
    expect: usize,
    instance: &str,
) -> Probe {
    let args = [
        format!("topic={topic}"),
        format!("group={group}"),
        format!("expect={expect}"),
        "grace=500".to_owned(),
        format!("instance={instance}"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Probe::start(lang, "broadcast", namesrv, &args)
}
