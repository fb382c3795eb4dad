//! The console in a real browser: Debian's Chromium (scripts/install-chromium) driven by
//! playwright-core (`npm ci --prefix console/e2e`), both installed by `scripts/test`. A name
//! server, a broker and the console run here; `e2e/console.mjs` clicks through the pages
//! and asks this test, over its stdin and stdout, to start and stop consumers. Screenshots
//! of every page land in `$CARGO_TARGET_TMPDIR/console-screenshots/`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::common::Console;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use weir_client::{
    ClientConfig, ClientInstance, ConsumeConcurrentlyContext, ConsumeConcurrentlyStatus,
    ConsumeFrom, Listener, MessageExt, PushConsumer, PushConsumerConfig,
};
use weir_tests::{Env, artifacts};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The whole click-through, as a bound on a hung browser (each wait inside is shorter).
const DEADLINE: Duration = Duration::from_secs(600);

fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e")
}

async fn start_consumer(namesrv: &str, group: &str) -> PushConsumer {
    let client = ClientInstance::new(ClientConfig::new(namesrv)).expect("client");
    let mut config = PushConsumerConfig::new(group);
    config.consume_from = ConsumeFrom::FirstOffset;
    PushConsumer::start(
        client,
        config,
        vec![("ConsoleT".into(), "*".into())],
        Listener::concurrently(|_: &[MessageExt], _: &mut ConsumeConcurrentlyContext| {
            ConsumeConcurrentlyStatus::ConsumeSuccess
        }),
    )
    .await
    .expect("consumer starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_clicked_through_in_chromium() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/install-chromium (scripts/test does)"
    );
    assert!(
        e2e_dir().join("node_modules/playwright-core").exists(),
        "playwright-core is missing: run `npm ci --prefix console/e2e` (scripts/test does)"
    );
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    // No screenshot of an earlier run left to mislead.
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).expect("screenshot folder");
    let env = Env::start().await;
    let console = Console::start(&env.namesrv()).await;

    let mut node = tokio::process::Command::new("node")
        .arg(e2e_dir().join("console.mjs"))
        .env("CONSOLE_URL", console.url())
        .env("SHOT_DIR", &shots)
        .env("CHROMIUM", CHROMIUM)
        .env("FILTER_KEEP", artifacts::KEEP_ALL)
        .env("FILTER_HOSTILE", artifacts::HOSTILE)
        .env("FILTER_SQL92", artifacts::SQL92)
        .env("WEIR_VERSION", env!("CARGO_PKG_VERSION"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (Debian's nodejs)");
    let mut stdin = node.stdin.take().expect("stdin");
    let mut lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
    let mut consumers: HashMap<String, PushConsumer> = HashMap::new();
    let drive = async {
        while let Some(line) = lines.next_line().await.expect("node's output") {
            println!("node: {line}");
            let Some(ask) = line.strip_prefix("@@ ") else {
                continue;
            };
            let reply = match ask.split_once(' ') {
                Some(("start-consumer", g)) => {
                    consumers.insert(g.to_owned(), start_consumer(&env.namesrv(), g).await);
                    "ok".to_owned()
                }
                Some(("stop-consumer", g)) => match consumers.remove(g) {
                    Some(c) => match c.shutdown().await {
                        Ok(()) => "ok".to_owned(),
                        Err(e) => format!("error {e}"),
                    },
                    None => format!("error no consumer of {g} runs"),
                },
                _ => format!("error unknown request {ask:?}"),
            };
            stdin
                .write_all(format!("{reply}\n").as_bytes())
                .await
                .expect("node's stdin");
        }
        node.wait().await.expect("node exits")
    };
    let status = tokio::time::timeout(DEADLINE, drive)
        .await
        .expect("the browser test finishes within its deadline");
    for (_, c) in consumers.drain() {
        let _ = c.shutdown().await;
    }
    assert!(
        status.success(),
        "the browser test failed ({status}); screenshots in {}",
        shots.display()
    );
    for page in [
        "cluster",
        "topics",
        "topic",
        "messages",
        "group",
        "groups",
        "filters",
        "filters-preview",
        "trail",
        "transactions",
    ] {
        let shot = shots.join(format!("{page}.png"));
        let len = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
        assert!(
            len > 1000,
            "no screenshot of the {page} page at {}",
            shot.display()
        );
    }
    console.stop().await;
}
