//! The CLI against a broker with access control on: `--access-key` / `--secret-key` (or
//! `WEIR_ACCESS_KEY` / `WEIR_SECRET_KEY`) sign every request, `weir bench` too; without
//! them, or with a wrong secret, the broker's refusal is the one line printed.

use crate::common::{env_with, failed, ok, wait_route, weir, weir_env};

const ACL: &str = r#"
[[principal]]
access_key = "ops"
secret_key = "ops-secret"
admin = true

[[principal]]
access_key = "app"
secret_key = "app-secret"
topics = { "Acl*" = "pub|sub|admin" }
default_group = "pub|sub"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_signs_with_its_access_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("acl.toml");
    std::fs::write(&file, ACL).unwrap();
    let env = env_with(|c| c.acl.file = Some(file)).await;
    let ns = env.namesrv.as_str();
    let ops = ["--access-key", "ops", "--secret-key", "ops-secret"];

    let err = failed(&weir(ns, &["topic", "create", "AclT", "--queues", "2"], None).await);
    assert!(err.contains("not signed"), "{err}");
    let mut args = ops.to_vec();
    args.extend(["topic", "create", "AclT", "--queues", "2"]);
    ok(&weir(ns, &args, None).await);
    wait_route(ns, "AclT").await;

    // From the environment.
    let app = [
        ("WEIR_ACCESS_KEY", "app"),
        ("WEIR_SECRET_KEY", "app-secret"),
    ];
    let sent = ok(&weir_env(ns, &["send", "AclT", "--body", "hello"], None, &app).await);
    assert!(
        sent.contains("SEND_OK") || sent.contains("msg_id"),
        "{sent}"
    );
    let err = failed(&weir_env(ns, &["topic", "create", "Other"], None, &app).await);
    assert!(err.contains("lacks admin on topic \"Other\""), "{err}");
    let wrong = [("WEIR_ACCESS_KEY", "app"), ("WEIR_SECRET_KEY", "guess")];
    let err = failed(&weir_env(ns, &["send", "AclT", "--body", "x"], None, &wrong).await);
    assert!(err.contains("wrong signature"), "{err}");

    // The benchmark signs too (and creates its topic with the admin right on it).
    let bench = ok(&weir_env(
        ns,
        &[
            "bench",
            "produce",
            "AclBench",
            "--count",
            "300",
            "--size",
            "32",
            "--concurrency",
            "8",
            "--json",
        ],
        None,
        &app,
    )
    .await);
    let v: serde_json::Value = serde_json::from_str(bench.trim()).unwrap();
    assert_eq!(v["messages"], 300, "{v}");
}
