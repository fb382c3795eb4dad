//! `weir filter upload|list|reset|remove|test`, and `weir consume` and `weir bench consume`
//! with filters (failing ones too): the binary
//! against an in-process name server and broker, and real filter components
//! (`weir-filter-artifacts`).
//!
//! Over ~600 lines on purpose: each test is one scenario of the `weir` binary end to end,
//! and the helpers they share already live in `tests/common`.

use crate::common::{Running, env, env_with, failed, json_lines, ok, until, wait_route, weir};

use std::time::Duration;

use weir_filter_artifacts::{HOSTILE, JSON_FIELD, KEEP_ALL, KEY_SAMPLE, SQL92};

const NO_NAMESRV: &str = "127.0.0.1:1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_test_prints_a_verdict_per_line() {
    let three = "{\"tags\": \"TagA\", \"keys\": [\"k1\"], \"properties\": {\"region\": \"eu\"}, \"body\": \"text\"}\n\
                 {}\n\
                 \n\
                 {\"body_base64\": \"AAEC\", \"queue_offset\": 7}\n";
    let out = weir(NO_NAMESRV, &["filter", "test", KEEP_ALL], Some(three)).await;
    assert_eq!(ok(&out), "1 keep\n2 keep\n4 keep\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "3 of 3 kept\n");

    let regions = "{\"properties\": {\"region\": \"us\"}}\n\
                   {\"properties\": {\"region\": \"eu\", \"tier\": \"gold\"}}\n\
                   {\"properties\": {\"region\": \"eu\"}}\n";
    let out = weir(
        NO_NAMESRV,
        &[
            "filter",
            "test",
            SQL92,
            "--param",
            "expr=region = 'eu'",
            "--topic",
            "Orders",
            "--queue",
            "3",
            "--group",
            "g",
            "--json",
        ],
        Some(regions),
    )
    .await;
    assert_eq!(
        ok(&out),
        "{\"line\":1,\"keep\":false}\n{\"line\":2,\"keep\":true}\n{\"line\":3,\"keep\":true}\n"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "2 of 3 kept\n");

    // Bodies, as text and as Base64 (JSON_FIELD reads them).
    let bodies = "{\"body\": \"{\\\"a\\\": 1}\"}\n{\"body\": \"not json\"}\n{\"body_base64\": \"eyJhIjogMX0=\"}\n";
    let out = weir(
        NO_NAMESRV,
        &[
            "filter", "test", JSON_FIELD, "--param", "path=a", "--param", "value=1",
        ],
        Some(bodies),
    )
    .await;
    assert_eq!(ok(&out), "1 keep\n2 drop\n3 keep\n");

    // More than one batch of 256.
    let many = "{}\n".repeat(600);
    let out = weir(NO_NAMESRV, &["filter", "test", KEEP_ALL], Some(&many)).await;
    let lines: Vec<String> = ok(&out).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 600);
    assert_eq!(lines[599], "600 keep");
    // No input at all.
    let out = weir(NO_NAMESRV, &["filter", "test", KEEP_ALL], None).await;
    assert_eq!(ok(&out), "");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "0 of 0 kept\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_test_errors_name_the_line_and_fail() {
    // A malformed line: the verdicts before it, then one error line naming it.
    let out = weir(
        NO_NAMESRV,
        &["filter", "test", KEEP_ALL],
        Some("{}\n{\"body\": \"x\"}\n{\"body\": \n{}\n"),
    )
    .await;
    let err = failed(&out);
    assert!(err.contains("line 3"), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1 keep\n2 keep\n");
    for (input, want) in [
        (
            "{\"tag\": \"A\"}\n",
            "line 1: not a message: unknown field `tag`",
        ),
        ("\n\n{\"keys\": [\"\"]}\n", "line 3: invalid message"),
        ("{\"body\": \"a\", \"body_base64\": \"YQ==\"}\n", "line 1"),
        ("[]\n", "line 1"),
    ] {
        let err = failed(&weir(NO_NAMESRV, &["filter", "test", KEEP_ALL], Some(input)).await);
        assert!(err.contains(want), "{input:?}: {err}");
    }

    // Arguments.
    let dir = tempfile::tempdir().unwrap();
    let not_wasm = dir.path().join("not.wasm");
    std::fs::write(&not_wasm, b"hello").unwrap();
    let not_wasm = not_wasm.to_str().unwrap();
    let missing = dir.path().join("missing.wasm");
    let missing = missing.to_str().unwrap();
    for (args, want) in [
        (vec!["filter", "test", missing], "reading filter"),
        (vec!["filter", "test", not_wasm], "loading filter"),
        (
            vec!["filter", "test", KEEP_ALL, "--param", "unknown=1"],
            "loading filter",
        ),
        (
            vec!["filter", "test", KEEP_ALL, "--topic", "a/b"],
            "--topic",
        ),
    ] {
        let err = failed(&weir(NO_NAMESRV, &args, Some("{}\n")).await);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // clap's own errors (several lines) still fail.
    for args in [
        vec!["filter", "test", KEEP_ALL, "--param", "novalue"],
        vec!["filter", "test"],
        vec!["filter", "test", KEEP_ALL, "--queue", "-1"],
    ] {
        let out = weir(NO_NAMESRV, &args, Some("{}\n")).await;
        assert!(!out.status.success(), "{args:?} succeeded");
    }
    let help = ok(&weir(NO_NAMESRV, &["filter", "test", "--help"], None).await);
    for field in [
        "body_base64",
        "queue_offset",
        "reconsume_count",
        "Blank lines",
    ] {
        assert!(help.contains(field), "--help lacks {field}: {help}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_list_and_remove_through_the_binary() {
    let env = env().await;
    let ns = env.namesrv.as_str();

    // No route yet: a clear error.
    let err = failed(
        &weir(
            ns,
            &[
                "filter", "upload", "--group", "g", "--topic", "Flt", KEEP_ALL,
            ],
            None,
        )
        .await,
    );
    assert!(
        err.contains("Flt") && err.contains("create the topic first"),
        "{err}"
    );

    ok(&weir(ns, &["topic", "create", "Flt", "--queues", "2"], None).await);
    wait_route(ns, "Flt").await;
    let listed = ok(&weir(ns, &["filter", "list"], None).await);
    assert!(listed.starts_with("no filter is registered\n"), "{listed}");

    let up = ok(&weir(
        ns,
        &[
            "filter", "upload", "--group", "g", "--topic", "Flt", KEEP_ALL,
        ],
        None,
    )
    .await);
    let line = up.trim();
    assert!(
        line.starts_with("broker-a: version 1, sha256 ") && line.ends_with(", needs body: no"),
        "{up}"
    );
    assert!(
        line.contains(", compiled,") || line.contains(", cached,"),
        "{up}"
    );
    let sha = line
        .split("sha256 ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap()
        .to_owned();
    assert_eq!(sha.len(), 64, "{up}");

    let up = json_lines(&ok(&weir(
        ns,
        &[
            "filter", "upload", "--group", "g2", "--topic", "Flt", JSON_FIELD, "--param", "path=a",
            "--param", "value=1", "--memory", "32MiB", "--json",
        ],
        None,
    )
    .await));
    assert_eq!(up.len(), 1);
    assert_eq!(up[0]["broker"], "broker-a");
    assert_eq!(up[0]["version"], 1);
    assert_eq!(up[0]["needs_body"], true);

    // A parameter the filter refuses: the broker rejects the upload.
    let err = failed(
        &weir(
            ns,
            &[
                "filter", "upload", "--group", "g3", "--topic", "Flt", SQL92, "--param", "bogus=1",
            ],
            None,
        )
        .await,
    );
    assert!(err.contains("filter rejected"), "{err}");

    // A memory cap above the broker's maximum (256 MiB by default) is refused, naming it.
    let err = failed(
        &weir(
            ns,
            &[
                "filter",
                "upload",
                "--group",
                "g3",
                "--topic",
                "Flt",
                SQL92,
                "--param",
                "expr=a = 1",
                "--memory",
                "1GiB",
            ],
            None,
        )
        .await,
    );
    assert!(
        err.contains("1073741824") && err.contains("filter.max_memory_limit"),
        "{err}"
    );
    // A size clap cannot read is a usage error (clap's own, several lines).
    let out = weir(
        ns,
        &[
            "filter", "upload", "--group", "g3", "--topic", "Flt", SQL92, "--memory", "lots",
        ],
        None,
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("expected a size such as 64MiB"),
        "{err}"
    );

    let table = ok(&weir(ns, &["filter", "list"], None).await);
    let rows: Vec<&str> = table.lines().collect();
    assert!(rows[0].starts_with("BROKER"), "{table}");
    for col in [
        "GROUP", "TOPIC", "VERSION", "SHA256", "PARAMS", "MEMORY", "STATE", "NS/MSG",
    ] {
        assert!(rows[0].contains(col), "{table}");
    }
    let g = rows
        .iter()
        .find(|r| r.split_whitespace().nth(1) == Some("g"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(g.contains(&sha[..12]) && !g.contains(&sha[..13]), "{table}");
    assert!(g.contains("active"), "{table}");
    let g2 = rows
        .iter()
        .find(|r| r.split_whitespace().nth(1) == Some("g2"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(g2.contains("path=a,value=1"), "{table}");
    assert!(g2.contains("32MiB") && g.contains("16MiB"), "{table}");
    assert!(rows.last().unwrap().starts_with("broker-a: "), "{table}");

    let only_g = ok(&weir(ns, &["filter", "list", "--group", "g"], None).await);
    assert!(!only_g.contains("g2"), "{only_g}");
    let full = json_lines(&ok(&weir(ns, &["filter", "list", "--json"], None).await));
    assert_eq!(full.len(), 1);
    assert_eq!(full[0]["broker"], "broker-a");
    let filters = full[0]["filters"].as_array().unwrap();
    assert_eq!(filters.len(), 2);
    assert_eq!(filters[0]["group"], "g");
    assert_eq!(filters[0]["sha256"], sha.as_str());
    assert_eq!(filters[0]["state"], "active");
    assert_eq!(filters[0]["memory"], 16 << 20);
    assert_eq!(filters[1]["memory"], 32 << 20);
    assert_eq!(
        filters[1]["params"],
        serde_json::json!([["path", "a"], ["value", "1"]])
    );
    for key in ["calls", "messages_in", "messages_kept", "failures", "traps"] {
        assert!(
            filters[0]["stats"].get(key).is_some(),
            "no {key}: {}",
            full[0]
        );
    }

    let removed = ok(&weir(
        ns,
        &["filter", "remove", "--group", "g", "--topic", "Flt"],
        None,
    )
    .await);
    assert_eq!(removed, "broker-a: removed version 1\n");
    let err = failed(
        &weir(
            ns,
            &["filter", "remove", "--group", "g", "--topic", "Flt"],
            None,
        )
        .await,
    );
    assert!(err.contains("filter not found"), "{err}");
    let left = ok(&weir(ns, &["filter", "list", "--group", "g"], None).await);
    assert!(
        left.starts_with("no filter is registered for group g"),
        "{left}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_consume_with_a_server_side_and_a_client_side_filter() {
    let env = env().await;
    let ns = env.namesrv.as_str();
    let produced = json_lines(&ok(&weir(
        ns,
        &[
            "bench", "produce", "BenchF", "--count", "300", "--size", "32", "--queues", "2",
            "--batch", "10", "--json",
        ],
        None,
    )
    .await));
    assert_eq!(produced[0]["messages"], 300);
    // Bench messages have no keys: KEY_SAMPLE drops them all (by default).
    ok(&weir(
        ns,
        &[
            "filter", "upload", "--group", "srv", "--topic", "BenchF", KEY_SAMPLE, "--param", "n=1",
        ],
        None,
    )
    .await);

    let bench = |args: Vec<&'static str>| async move {
        let mut all = vec!["bench", "consume", "BenchF", "--idle-exit", "1", "--json"];
        all.extend(args);
        let v = json_lines(&ok(&weir(ns, &all, None).await));
        assert_eq!(v.len(), 1);
        v.into_iter().next().unwrap()
    };

    // Server-side: the brokers drop everything; every offset is still read.
    let srv = bench(vec!["--group", "srv"]).await;
    assert_eq!(srv["filter"]["side"], "server", "{srv}");
    assert_eq!(srv["filter"]["brokers"][0]["broker"], "broker-a", "{srv}");
    assert_eq!(srv["read"], 300, "{srv}");
    assert_eq!(srv["pulled"], 0, "{srv}");
    assert_eq!(srv["delivered"], 0, "{srv}");
    assert_eq!(srv["messages"], 0, "{srv}");

    // Client-side: everything is pulled, the filter decides here.
    for (args, kept, needs_body) in [
        (
            vec![
                "--local-filter",
                KEY_SAMPLE,
                "--param",
                "n=1",
                "--param",
                "missing=keep",
            ],
            300,
            false,
        ),
        (
            vec!["--local-filter", KEY_SAMPLE, "--param", "n=1"],
            0,
            false,
        ),
        (
            vec![
                "--local-filter",
                JSON_FIELD,
                "--param",
                "path=a",
                "--param",
                "op=exists",
            ],
            0,
            true,
        ),
    ] {
        let cli = bench(args).await;
        assert_eq!(cli["filter"]["side"], "client", "{cli}");
        assert_eq!(cli["filter"]["needs_body"], needs_body, "{cli}");
        assert_eq!(cli["read"], 300, "{cli}");
        assert_eq!(cli["pulled"], 300, "{cli}");
        assert_eq!(cli["delivered"], kept, "{cli}");
        assert_eq!(cli["messages"], kept, "{cli}");
        assert!(
            cli["filter_latency_ms"]["p50"].as_f64().unwrap() > 0.0,
            "{cli}"
        );
        assert!(cli["elapsed_secs"].as_f64().unwrap() < 1.0, "{cli}");
    }
    let cli = bench(vec!["--local-filter", KEEP_ALL, "--count", "100"]).await;
    assert_eq!(cli["delivered"], 100, "{cli}");

    // Without a filter: as before, no filter fields.
    let plain = bench(vec![]).await;
    assert_eq!(plain["messages"], 300, "{plain}");
    assert!(plain.get("filter").is_none(), "{plain}");
    assert!(plain.get("delivered").is_none(), "{plain}");

    // The text summary names both counts.
    let text = ok(&weir(
        ns,
        &[
            "bench",
            "consume",
            "BenchF",
            "--idle-exit",
            "1",
            "--local-filter",
            KEEP_ALL,
        ],
        None,
    )
    .await);
    assert!(text.contains("messages pulled: 300"), "{text}");
    assert!(text.contains("messages delivered (kept): 300"), "{text}");
    assert!(text.contains("delivered msgs/s"), "{text}");
    // --param needs --local-filter.
    let out = weir(ns, &["bench", "consume", "BenchF", "--param", "a=b"], None).await;
    assert!(!out.status.success());
}

/// The stderr of a run that failed, its last line the error (`failed` wants only that).
fn failed_with_lines(out: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "weir succeeded: {err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("weir: "), "{err}");
    err
}

/// The lines `weir consume` printed about filter failures.
fn failure_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("weir consume: filter failed: "))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_filter_is_visible_to_consume_and_bench() {
    // Marked at the first failure, so each run sees both kinds within a second or two.
    let env = env_with(|c| c.filter.failures_before_marked = 1).await;
    let ns = env.namesrv.as_str();
    ok(&weir(ns, &["topic", "create", "Bad", "--queues", "1"], None).await);
    wait_route(ns, "Bad").await;
    let upload = |group: &'static str, mode: &'static str| async move {
        let param = format!("mode={mode}");
        ok(&weir(
            ns,
            &[
                "filter", "upload", "--group", group, "--topic", "Bad", HOSTILE, "--param", &param,
            ],
            None,
        )
        .await);
    };
    upload("g", "trap").await;
    upload("bg", "trap").await;
    ok(&weir(ns, &["send", "Bad", "--lines"], Some("hello\n")).await);

    // Each distinct failure once on stderr; at --idle-exit, non-zero while still marked.
    let out = weir(
        ns,
        &["consume", "Bad", "--group", "g", "--idle-exit", "3"],
        None,
    )
    .await;
    let err = failed_with_lines(&out);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "",
        "nothing delivered"
    );
    let lines = failure_lines(&err);
    let marked: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("marked failed"))
        .collect();
    assert_eq!(marked.len(), 1, "printed once: {err}");
    assert!(lines.len() <= 2, "each distinct failure once: {err}");
    for part in ["group \"g\"", "version 1", "unreachable"] {
        assert!(marked[0].contains(part), "no {part:?} in {err}");
    }
    assert!(
        err.contains("the filter of group g on topic Bad is marked failed"),
        "{err}"
    );

    // A reset clears the mark.
    let reset = ok(&weir(
        ns,
        &["filter", "reset", "--group", "g", "--topic", "Bad"],
        None,
    )
    .await);
    assert!(
        reset.starts_with("broker-a: version 1: failed mark cleared (it was: "),
        "{reset}"
    );
    let again = ok(&weir(
        ns,
        &["filter", "reset", "--group", "g", "--topic", "Bad"],
        None,
    )
    .await);
    assert_eq!(again, "broker-a: version 1: was not marked failed\n");

    // The same version fails (and is marked) again; the consumer keeps waiting, and a new
    // version delivers.
    let mut consume = Running::spawn(
        ns,
        &[
            "consume",
            "Bad",
            "--group",
            "g",
            "--idle-exit",
            "30",
            "--count",
            "1",
        ],
    );
    until(
        Duration::from_secs(20),
        "the consumer reports the mark",
        async || consume.stderr().contains("marked failed"),
    )
    .await;
    upload("g", "keep").await;
    let status = consume.wait(Duration::from_secs(40)).await;
    assert!(status.success(), "{}", consume.stderr());
    let printed = consume.lines();
    assert!(
        printed.len() == 1 && printed[0].ends_with(" body=hello"),
        "{printed:?}"
    );
    let err = consume.stderr();
    let marked = failure_lines(&err)
        .iter()
        .filter(|l| l.contains("marked failed"))
        .count();
    assert_eq!(marked, 1, "{err}");

    // The benchmark counts the failures, names the cause, and fails.
    let out = weir(
        ns,
        &[
            "bench",
            "consume",
            "Bad",
            "--group",
            "bg",
            "--idle-exit",
            "1",
            "--json",
        ],
        None,
    )
    .await;
    let err = failed_with_lines(&out);
    assert!(err.contains("the group's filter failed"), "{err}");
    let summary = json_lines(&String::from_utf8_lossy(&out.stdout));
    let failures = &summary[0]["filter_failures"];
    assert!(failures["count"].as_u64().unwrap() >= 1, "{failures}");
    let last = failures["last"].as_str().unwrap();
    assert!(
        last.contains("group \"bg\"") && last.contains("marked failed"),
        "{last}"
    );
    assert_eq!(summary[0]["delivered"], 0, "{summary:?}");
    // With push consumers too.
    let out = weir(
        ns,
        &[
            "bench",
            "consume",
            "Bad",
            "--group",
            "bg",
            "--members",
            "1",
            "--idle-exit",
            "2",
            "--json",
        ],
        None,
    )
    .await;
    let err = failed_with_lines(&out);
    assert!(err.contains("the group's filter failed"), "{err}");
    let summary = json_lines(&String::from_utf8_lossy(&out.stdout));
    let failures = &summary[0]["filter_failures"];
    assert!(failures["count"].as_u64().unwrap() >= 1, "{failures}");
    assert!(
        failures["last"].as_str().unwrap().contains("group \"bg\""),
        "{failures}"
    );
    assert_eq!(summary[0]["consumed"], 0, "{summary:?}");
}
