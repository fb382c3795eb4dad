//! The CLI against a name server and broker that take TLS only: `--tls-ca` (or
//! `WEIR_TLS_CA`) makes every connection TLS, verified against the CA, `weir bench` too;
//! without it, the server's refusal is the one line printed; a CA file that cannot be read
//! is named.

use std::time::Duration;

use crate::common::{failed, json_lines, ok, weir, weir_env};
use weir_protocol::TlsMode;
use weir_tests::Env;
use weir_tests::tls::Pki;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_and_consumes_over_tls() {
    let pki = Pki::new("weir CLI test CA");
    let env = Env::start_tls(&pki, TlsMode::Enforcing, |_| {}).await;
    let ns = env.namesrv();
    let ca = pki.ca.display().to_string();
    let tls = ["--tls-ca", ca.as_str()];
    let with = |args: &[&'static str]| {
        let mut a: Vec<&str> = tls.to_vec();
        a.extend_from_slice(args);
        a
    };

    ok(&weir(
        &ns,
        &with(&["topic", "create", "TlsT", "--queues", "2"]),
        None,
    )
    .await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !weir(&ns, &with(&["topic", "route", "TlsT"]), None)
        .await
        .status
        .success()
    {
        assert!(tokio::time::Instant::now() < deadline, "no route for TlsT");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = json_lines(&ok(&weir(
        &ns,
        &with(&["send", "TlsT", "--lines", "--json"]),
        Some("one\ntwo\nthree\n"),
    )
    .await));
    assert_eq!(sent.len(), 3);
    // From the environment.
    let var = [("WEIR_TLS_CA", ca.as_str())];
    let got = json_lines(&ok(&weir_env(
        &ns,
        &[
            "consume", "TlsT", "--group", "tls-g", "--count", "3", "--json",
        ],
        None,
        &var,
    )
    .await));
    let mut bodies: Vec<&str> = got.iter().filter_map(|m| m["body"].as_str()).collect();
    bodies.sort();
    assert_eq!(bodies, ["one", "three", "two"], "{got:?}");

    // Without TLS: the name server's refusal, on one line.
    let err = failed(&weir(&ns, &["topic", "route", "TlsT"], None).await);
    assert!(err.contains("TLS connections only"), "{err}");
    // Another CA: the handshake fails, naming the CA file.
    let other = Pki::new("another CA");
    let other_ca = other.ca.display().to_string();
    let err = failed(
        &weir(
            &ns,
            &["--tls-ca", &other_ca, "topic", "route", "TlsT"],
            None,
        )
        .await,
    );
    assert!(
        err.contains("invalid peer certificate") && err.contains(&other_ca),
        "{err}"
    );
    let err = failed(
        &weir(
            &ns,
            &["--tls-ca", "/nonexistent/ca.pem", "cluster", "list"],
            None,
        )
        .await,
    );
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");

    // The benchmark connects over TLS too.
    let bench = ok(&weir(
        &ns,
        &with(&[
            "bench",
            "produce",
            "TlsBench",
            "--count",
            "300",
            "--size",
            "32",
            "--concurrency",
            "8",
            "--json",
        ]),
        None,
    )
    .await);
    let v: serde_json::Value = serde_json::from_str(bench.trim()).unwrap();
    assert_eq!(v["messages"], 300, "{v}");
}
