//! JavaScript and Python filters end to end, and the per-upload memory cap.
//!
//! The components are built from `filters/js` (componentize-js) and `filters/python`
//! (componentize-py) by weir-filter-artifacts' build script; `scripts/test` installs both
//! tools, and a test whose component could not be built fails saying how to install it.
//! Each language's property filter and JSON body filter must keep exactly what the Rust
//! filters keep, and what the predicates written here (independently of all of them) say.

use std::collections::BTreeSet;

use weir_protocol::ErrorCode;
use weir_tests::artifacts::{
    self, HOSTILE, JS_JSON_FIELD, JS_SQL92, JSON_FIELD, PY_JSON_FIELD, PY_SQL92, SQL92,
};
use weir_tests::filter_cases::TIER_BODIES;
use weir_tests::{Client, Env, Msg, assert_keys, gzip, key_set, remote_error};

const MIB: u64 = 1 << 20;

/// One test at a time: each compiles engines of 12-19 MB (tens of seconds in a test build,
/// on every core); two at once would double every upload's time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// What the JavaScript and Python engines are given: their heaps start at several MiB.
const ENGINE_MEMORY: u64 = 64 * MIB;

const EXPR: &str = "(region = 'eu' AND amount > 500) OR priority IN ('high', 'urgent') \
                    OR (TAGS = 'vip' AND NOT amount BETWEEN 10 AND 20)";

/// What [`EXPR`] keeps, written out in Rust (a missing or non-numeric `amount` is UNKNOWN).
fn expr_keeps(m: &Msg) -> bool {
    let amount = m.get("amount").and_then(|a| a.trim().parse::<f64>().ok());
    let eu_big = m.get("region") == Some("eu") && amount.is_some_and(|a| a > 500.0);
    let urgent = matches!(m.get("priority"), Some("high" | "urgent"));
    let vip = m.tag == "vip" && amount.is_some_and(|a| !(10.0..=20.0).contains(&a));
    eu_big || urgent || vip
}

/// Messages covering [`EXPR`]'s cases: each property present, absent, or not a number.
fn property_messages() -> Vec<Msg> {
    let regions = [None, Some("eu"), Some("us")];
    let amounts = [
        None,
        Some("7"),
        Some("15"),
        Some("600"),
        Some(" 501 "),
        Some("lots"),
    ];
    let priorities = [None, Some("low"), Some("high"), Some("urgent")];
    let tags = ["", "vip", "plain"];
    let mut out = Vec::new();
    for (i, region) in regions.iter().enumerate() {
        for (j, amount) in amounts.iter().enumerate() {
            for (k, priority) in priorities.iter().enumerate() {
                for (l, tag) in tags.iter().enumerate() {
                    let mut m = Msg::new(format!("p{i}{j}{k}{l}")).tag(*tag);
                    for (name, v) in [
                        ("region", region),
                        ("amount", amount),
                        ("priority", priority),
                    ] {
                        if let Some(v) = v {
                            m = m.prop(name, *v);
                        }
                    }
                    out.push(m.prop("tenant", format!("t{}", out.len() % 5)));
                }
            }
        }
    }
    out
}

/// Uploads `component` gzip-compressed, as the client does for large ones.
async fn upload(
    c: &Client,
    group: &str,
    topic: &str,
    component: &str,
    params: &[(&str, &str)],
    memory: Option<u64>,
) {
    let bytes = gzip(&artifacts::read(component));
    c.upload_with_memory(group, topic, &bytes, params, memory)
        .await
        .unwrap_or_else(|e| panic!("{group}: upload of {component}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_and_python_keep_what_rust_keeps() {
    let _one = ONE_AT_A_TIME.lock().await;
    let env = Env::start().await;
    let c = env.client().await;

    // The property filter, three languages, one expression.
    c.create_topic("Props", 2).await;
    let msgs = property_messages();
    for q in 0..2 {
        let mine: Vec<Msg> = msgs.iter().skip(q).step_by(2).cloned().collect();
        c.send("Props", q as u32, &mine).await;
    }
    let expected: BTreeSet<String> = msgs
        .iter()
        .filter(|m| expr_keeps(m))
        .map(|m| m.key.clone())
        .collect();
    assert!(
        expected.len() > msgs.len() / 5 && expected.len() < msgs.len() * 4 / 5,
        "test data: {} of {} kept",
        expected.len(),
        msgs.len()
    );
    c.upload(
        "G-rust",
        "Props",
        &artifacts::read(SQL92),
        &[("expr", EXPR)],
    )
    .await
    .expect("rust sql92");
    upload(
        &c,
        "G-js",
        "Props",
        JS_SQL92,
        &[("expr", EXPR)],
        Some(ENGINE_MEMORY),
    )
    .await;
    upload(
        &c,
        "G-py",
        "Props",
        PY_SQL92,
        &[("expr", EXPR)],
        Some(ENGINE_MEMORY),
    )
    .await;
    for group in ["G-rust", "G-js", "G-py"] {
        let got = key_set(&c.drain_topic(group, "Props", 2).await);
        assert_keys(
            &got,
            &expected,
            &format!("{group} keeps what the expression keeps"),
        );
        let info = c.filter_info(group, "Props").await.expect("registered");
        assert_eq!(info.stats.failures(), 0, "{group}: {:?}", info.stats);
        assert!(!info.needs_body, "{group}");
    }

    // The JSON body filter.
    c.create_topic("Bodies", 1).await;
    let bodies: Vec<Msg> = TIER_BODIES
        .iter()
        .enumerate()
        .map(|(i, (body, _))| Msg::new(format!("b{i}")).body(body.as_bytes()))
        .collect();
    c.send("Bodies", 0, &bodies).await;
    let expected: BTreeSet<String> = TIER_BODIES
        .iter()
        .enumerate()
        .filter(|(_, (_, keep))| *keep)
        .map(|(i, _)| format!("b{i}"))
        .collect();
    let params = [
        ("path", "order.tier"),
        ("op", "in"),
        ("value", "gold,platinum"),
    ];
    c.upload("J-rust", "Bodies", &artifacts::read(JSON_FIELD), &params)
        .await
        .expect("rust json-field");
    upload(
        &c,
        "J-js",
        "Bodies",
        JS_JSON_FIELD,
        &params,
        Some(ENGINE_MEMORY),
    )
    .await;
    upload(
        &c,
        "J-py",
        "Bodies",
        PY_JSON_FIELD,
        &params,
        Some(ENGINE_MEMORY),
    )
    .await;
    for group in ["J-rust", "J-js", "J-py"] {
        let got = key_set(&c.drain_topic(group, "Bodies", 1).await);
        assert_keys(
            &got,
            &expected,
            &format!("{group} keeps the gold and platinum orders"),
        );
        assert!(
            c.filter_info(group, "Bodies")
                .await
                .expect("registered")
                .needs_body,
            "{group}"
        );
    }

    // Parameters are checked at upload by the filter's own `init`, in every language.
    for (group, component) in [("E-js", JS_SQL92), ("E-py", PY_SQL92)] {
        let bytes = gzip(&artifacts::read(component));
        let msg = remote_error(
            c.upload_with_memory(
                group,
                "Props",
                &bytes,
                &[("expr", "amount > AND x = 1")],
                Some(ENGINE_MEMORY),
            )
            .await,
            ErrorCode::FilterRejected,
        );
        assert!(
            msg.contains("init rejected the parameters") && msg.contains("column 10"),
            "{group}: {msg}"
        );
        let msg = remote_error(
            c.upload_with_memory(
                group,
                "Props",
                &bytes,
                &[("expr", "a = 1"), ("colour", "red")],
                Some(ENGINE_MEMORY),
            )
            .await,
            ErrorCode::FilterRejected,
        );
        assert!(msg.contains("colour"), "{group}: {msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_cap_is_per_upload_bounded_by_the_operator() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut env = Env::start_with(|c| c.filter.max_memory_limit = 128 << 20).await;
    let c = env.client().await;
    c.create_topic("M", 1).await;
    c.send("M", 0, &[Msg::new("m0").prop("region", "eu")]).await;
    let js = gzip(&artifacts::read(JS_SQL92));
    let expr = [("expr", "region = 'eu'")];

    // Above the operator's maximum: refused, naming both numbers and the setting.
    let msg = remote_error(
        c.upload_with_memory("G", "M", &js, &expr, Some(256 * MIB))
            .await,
        ErrorCode::FilterRejected,
    );
    for part in ["268435456", "134217728", "filter.max_memory_limit"] {
        assert!(msg.contains(part), "no {part} in {msg}");
    }
    assert!(c.filter_info("G", "M").await.is_none());

    // The JavaScript engine's memory starts at 9 MiB: a smaller cap refuses it at upload,
    // naming the cap ...
    let msg = remote_error(
        c.upload_with_memory("G", "M", &js, &expr, Some(8 * MIB))
            .await,
        ErrorCode::FilterRejected,
    );
    assert!(msg.contains("memory cap of 8388608 bytes"), "{msg}");
    assert!(c.filter_info("G", "M").await.is_none());
    // ... and runs with the cap it asks for, which is kept and shown.
    c.upload_with_memory("G", "M", &js, &expr, Some(ENGINE_MEMORY))
        .await
        .expect("JS filter with 64 MiB");
    let info = c.filter_info("G", "M").await.expect("registered");
    assert_eq!(info.memory, ENGINE_MEMORY);
    assert_eq!(
        key_set(&c.drain_topic("G", "M", 1).await),
        BTreeSet::from(["m0".to_owned()])
    );

    // A filter that outgrows its own cap fails with MemoryExhausted, naming that cap.
    c.upload_with_memory(
        "H",
        "M",
        &artifacts::read(HOSTILE),
        &[("mode", "memory")],
        Some(8 * MIB),
    )
    .await
    .expect("hostile upload (init is fine)");
    let msg = remote_error(c.pull("H", "M", 0, 0, 0).await, ErrorCode::FilterFailed);
    assert!(msg.contains("memory cap of 8388608 bytes"), "{msg}");
    let h = c.filter_info("H", "M").await.expect("registered");
    assert_eq!((h.memory, h.stats.memory_exhausted), (8 * MIB, 1));

    // The cap is persisted: a restart keeps it; an operator who lowers the maximum below
    // it sees the filter refuse to load, saying why, rather than run with less.
    env.restart().await;
    let c = env.client().await;
    assert_eq!(
        c.filter_info("G", "M").await.expect("registered").memory,
        ENGINE_MEMORY
    );
    assert_eq!(key_set(&c.drain_topic("G", "M", 1).await).len(), 1);
    env.restart_with(|c| c.filter.max_memory_limit = 32 << 20)
        .await;
    let c = env.client().await;
    let info = c.filter_info("G", "M").await.expect("still registered");
    let failed = info.failed.expect("cannot load");
    assert!(failed.contains("filter.max_memory_limit"), "{failed}");
    let msg = remote_error(
        c.pull("G", "M", 0, 0, 0).await,
        ErrorCode::FilterMarkedFailed,
    );
    assert!(msg.contains("filter.max_memory_limit"), "{msg}");
    // The hostile filter's 8 MiB still fits.
    assert_eq!(
        c.filter_info("H", "M").await.expect("registered").failed,
        None
    );
}
