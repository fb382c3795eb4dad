//! `weir console`: serves its pages on the address given, reads the cluster through the
//! name servers given, and stops on Ctrl-C (the pages themselves: console/tests).

use std::io::{Read, Write};
use std::time::Duration;

use crate::common::{Running, env, until};

/// One GET over a new connection: (status line, body).
fn get(addr: &str, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_console_serves_the_cluster_and_stops_on_ctrl_c() {
    let e = env().await;
    let mut console = Running::spawn(&e.namesrv, &["console", "--listen", "127.0.0.1:0"]);
    let mut addr = String::new();
    until(
        Duration::from_secs(30),
        "the console prints its address",
        async || {
            let found = console
                .stderr()
                .lines()
                .find_map(|l| l.strip_prefix("weir console: http://").map(str::to_owned));
            found.map(|a| addr = a).is_some()
        },
    )
    .await;
    let (status, page) = get(&addr, "/");
    assert!(status.contains("200"), "{status}");
    assert!(page.contains("<script src=\"/assets/app.js\""), "{page}");
    let (status, body) = get(&addr, "/api/cluster");
    assert!(status.contains("200"), "{status}: {body}");
    let cluster: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(cluster["brokers"].as_array().unwrap().len(), 1, "{cluster}");
    assert!(
        cluster["brokers"][0]["stats"]["uptime_ms"].is_u64(),
        "{cluster}"
    );
    console.interrupt();
    let exit = console.wait(Duration::from_secs(10)).await;
    assert!(exit.success(), "{exit}: {}", console.stderr());
}
