//! The name server over real sockets: registration, routes, expiry, connection close.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use weir_namesrv::NamesrvConfig;
use weir_protocol::route::{
    GetAllTopics, GetClusterInfo, GetRoute, GetTopicSummaries, RegisterBroker, RegisteredTopics,
    TopicConfig, UnregisterBroker, perm,
};
use weir_protocol::{CallError, ConnConfig, Connection, ErrorCode, NoHandler};

const T: Duration = Duration::from_secs(10);

async fn namesrv(expiry_ms: u64) -> weir_namesrv::RunningNameServer {
    weir_namesrv::start(NamesrvConfig {
        listen: "127.0.0.1:0".into(),
        broker_expiry_ms: expiry_ms,
        scan_interval_ms: 20,
        ..Default::default()
    })
    .await
    .unwrap()
}

async fn connect(ns: &weir_namesrv::RunningNameServer) -> Connection {
    Connection::connect(
        &ns.local_addr().to_string(),
        Arc::new(NoHandler),
        ConnConfig::default(),
        T,
    )
    .await
    .unwrap()
}

/// A registration: the header, and the topics as the body.
fn register(name: &str, id: u64, addr: &str, topics: &[(&str, u32)]) -> (RegisterBroker, Bytes) {
    let header = RegisterBroker {
        cluster: "DefaultCluster".into(),
        broker_name: name.into(),
        broker_id: id,
        addr: addr.into(),
        ha: Default::default(),
    };
    let topics = topics
        .iter()
        .map(|(t, q)| TopicConfig {
            name: (*t).into(),
            read_queues: *q,
            write_queues: *q,
            perm: perm::READ_WRITE,
        })
        .collect();
    (header, RegisteredTopics { topics }.encode().unwrap())
}

async fn route(
    conn: &Connection,
    topic: &str,
) -> Result<weir_protocol::route::TopicRoute, CallError> {
    conn.call(
        &GetRoute {
            topic: topic.into(),
        },
        Bytes::new(),
        T,
    )
    .await
    .map(|(r, _)| r)
}

/// Polls until `cond` holds, or fails after a deadline.
async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + T;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn routes_clusters_and_topic_lists() {
    let ns = namesrv(120_000).await;
    let a = connect(&ns).await;
    let b = connect(&ns).await;
    let (resp, _) = a
        .call(
            &register(
                "broker-a",
                0,
                "10.0.0.1:10911",
                &[("orders", 8), ("audit", 2)],
            )
            .0,
            register(
                "broker-a",
                0,
                "10.0.0.1:10911",
                &[("orders", 8), ("audit", 2)],
            )
            .1,
            T,
        )
        .await
        .unwrap();
    assert_eq!(resp.master_addr.as_deref(), Some("10.0.0.1:10911"));
    b.call(
        &register("broker-b", 0, "10.0.0.2:10911", &[("orders", 4)]).0,
        register("broker-b", 0, "10.0.0.2:10911", &[("orders", 4)]).1,
        T,
    )
    .await
    .unwrap();
    // A slave of broker-a: learns its master, does not change the topic list.
    let (resp, _) = b
        .call(
            &register("broker-a", 1, "10.0.0.3:10911", &[("ignored", 1)]).0,
            register("broker-a", 1, "10.0.0.3:10911", &[("ignored", 1)]).1,
            T,
        )
        .await
        .unwrap();
    assert_eq!(resp.master_addr.as_deref(), Some("10.0.0.1:10911"));

    let client = connect(&ns).await;
    let r = route(&client, "orders").await.unwrap();
    let queues: Vec<_> = r
        .queues
        .iter()
        .map(|q| (q.broker_name.as_str(), q.write_queues))
        .collect();
    assert_eq!(queues, vec![("broker-a", 8), ("broker-b", 4)]);
    assert_eq!(r.brokers[0].master_addr(), Some("10.0.0.1:10911"));
    assert_eq!(r.brokers[0].addrs.len(), 2);
    match route(&client, "nope").await {
        Err(CallError::Remote {
            code: ErrorCode::TopicNotExist,
            message,
        }) => assert!(message.contains("nope")),
        other => panic!("{other:?}"),
    }
    let (info, _) = client.call(&GetClusterInfo, Bytes::new(), T).await.unwrap();
    let names: Vec<_> = info
        .brokers
        .iter()
        .map(|b| b.broker_name.as_str())
        .collect();
    assert_eq!(names, vec!["broker-a", "broker-b"]);
    let (list, _) = client.call(&GetAllTopics, Bytes::new(), T).await.unwrap();
    assert_eq!(list.topics, vec!["audit", "orders"]);
    // The same topics with each broker's queues, in one request.
    let ((), body) = client
        .call(&GetTopicSummaries, Bytes::new(), T)
        .await
        .unwrap();
    let summaries = weir_protocol::route::TopicSummaries::decode(&body).unwrap();
    let seen: Vec<(&str, Vec<(&str, u32)>)> = summaries
        .topics
        .iter()
        .map(|t| {
            let queues = t
                .queues
                .iter()
                .map(|q| (q.broker_name.as_str(), q.write_queues))
                .collect();
            (t.name.as_str(), queues)
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("audit", vec![("broker-a", 2)]),
            ("orders", vec![("broker-a", 8), ("broker-b", 4)])
        ]
    );

    // Re-registration replaces the master's topic list.
    a.call(
        &register("broker-a", 0, "10.0.0.1:10911", &[("orders", 16)]).0,
        register("broker-a", 0, "10.0.0.1:10911", &[("orders", 16)]).1,
        T,
    )
    .await
    .unwrap();
    assert!(route(&client, "audit").await.is_err());
    assert_eq!(
        route(&client, "orders").await.unwrap().queues[0].write_queues,
        16
    );

    // Unregistering the last member of a group removes it from every route.
    b.call(
        &UnregisterBroker {
            cluster: "DefaultCluster".into(),
            broker_name: "broker-b".into(),
            broker_id: 0,
            addr: "10.0.0.2:10911".into(),
        },
        Bytes::new(),
        T,
    )
    .await
    .unwrap();
    let r = route(&client, "orders").await.unwrap();
    assert_eq!(r.queues.len(), 1);
}

#[tokio::test]
async fn a_silent_broker_expires_and_a_refreshed_one_stays() {
    let ns = namesrv(300).await;
    let silent = connect(&ns).await;
    let alive = connect(&ns).await;
    silent
        .call(
            &register("quiet", 0, "10.0.0.9:1", &[("t", 1)]).0,
            register("quiet", 0, "10.0.0.9:1", &[("t", 1)]).1,
            T,
        )
        .await
        .unwrap();
    alive
        .call(
            &register("chatty", 0, "10.0.0.8:1", &[("t", 1)]).0,
            register("chatty", 0, "10.0.0.8:1", &[("t", 1)]).1,
            T,
        )
        .await
        .unwrap();
    let client = connect(&ns).await;
    // Keep "chatty" registering while "quiet" goes silent (its connection stays open).
    eventually("the silent broker expires", async || {
        alive
            .call(
                &register("chatty", 0, "10.0.0.8:1", &[("t", 1)]).0,
                register("chatty", 0, "10.0.0.8:1", &[("t", 1)]).1,
                T,
            )
            .await
            .unwrap();
        let r = route(&client, "t").await.unwrap();
        r.queues.len() == 1
    })
    .await;
    let r = route(&client, "t").await.unwrap();
    assert_eq!(r.queues[0].broker_name, "chatty");
    assert!(!silent.is_closed());
}

#[tokio::test]
async fn a_closed_connection_drops_its_brokers_at_once() {
    let ns = namesrv(120_000).await;
    let broker = connect(&ns).await;
    broker
        .call(
            &register("gone", 0, "10.0.0.7:1", &[("t", 2)]).0,
            register("gone", 0, "10.0.0.7:1", &[("t", 2)]).1,
            T,
        )
        .await
        .unwrap();
    let client = connect(&ns).await;
    assert!(route(&client, "t").await.is_ok());
    broker.close();
    eventually("the closed broker leaves the route", async || {
        route(&client, "t").await.is_err()
    })
    .await;
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let ns = namesrv(120_000).await;
    let conn = connect(&ns).await;
    let (mut empty, body) = register("", 0, "", &[]);
    empty.cluster.clear();
    match conn.call(&empty, body, T).await {
        Err(CallError::Remote {
            code: ErrorCode::BadRequest,
            message,
        }) => assert!(message.contains("empty")),
        other => panic!("{other:?}"),
    }
    // A request the name server does not serve (a broker's) is refused by name.
    #[derive(bincode::Encode, bincode::Decode)]
    struct Foreign;
    impl weir_protocol::Rpc for Foreign {
        const CODE: weir_protocol::RequestCode = weir_protocol::RequestCode::PullMessage;
        type Response = ();
    }
    match conn.call(&Foreign, Bytes::new(), T).await {
        Err(CallError::Remote {
            code: ErrorCode::RequestCodeNotSupported,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    assert!(
        route(&conn, "x").await.is_err(),
        "the connection still serves"
    );
}

#[test]
fn the_binary_reports_a_bad_config_clearly() {
    let dir = std::env::temp_dir().join(format!("weir-ns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("bad.toml");
    std::fs::write(&cfg, "listen = 5\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir-namesrv"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml"), "{err}");
    // The first line names the file; the parser's snippet points at the bad value.
    assert!(err.lines().next().unwrap().contains("bad.toml"), "{err}");
    assert!(err.contains("expected a string"), "{err}");
}

#[tokio::test]
async fn a_broker_with_fifty_thousand_topics_registers() {
    let ns = namesrv(120_000).await;
    let conn = connect(&ns).await;
    let names: Vec<String> = (0..50_000)
        .map(|i| format!("topic-{i:06}-{}", "x".repeat(20)))
        .collect();
    let topics: Vec<(&str, u32)> = names.iter().map(|n| (n.as_str(), 8)).collect();
    let (header, body) = register("big", 0, "10.0.0.5:10911", &topics);
    assert!(body.len() > 1 << 20, "more than a header may hold");
    conn.call(&header, body, T).await.unwrap();
    let client = connect(&ns).await;
    for name in [&names[0], &names[49_999]] {
        let r = route(&client, name).await.unwrap();
        assert_eq!(r.queues[0].write_queues, 8);
    }
}

/// Registrations stop at `max_brokers` addresses and `max_topics` routed topics, refused
/// whole with a clear error (a broker past them keeps its earlier routes); one client
/// registering broker names with 50,000 topics each took 1.8 GB before.
#[tokio::test]
async fn registrations_stop_at_the_brokers_and_topics_bounds() {
    let ns = weir_namesrv::start(NamesrvConfig {
        listen: "127.0.0.1:0".into(),
        max_brokers: 2,
        max_topics: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    let conn = connect(&ns).await;
    let send = async |(h, b): (RegisterBroker, Bytes)| conn.call(&h, b, T).await.map(|_| ());
    send(register("a", 0, "127.0.0.1:1", &[("A1", 1), ("A2", 1)]))
        .await
        .unwrap();
    // Two more new topics would make four.
    match send(register(
        "b",
        0,
        "127.0.0.1:2",
        &[("A1", 1), ("B1", 1), ("B2", 1)],
    ))
    .await
    {
        Err(CallError::Remote { code, message }) => {
            assert_eq!(code, ErrorCode::SystemBusy);
            assert!(message.contains("max_topics"), "{message}");
        }
        other => panic!("past max_topics: {other:?}"),
    }
    // One new topic fits; a broker's registering again with the same topics too.
    send(register("b", 0, "127.0.0.1:2", &[("A1", 1), ("B1", 1)]))
        .await
        .unwrap();
    send(register("a", 0, "127.0.0.1:1", &[("A1", 1), ("A2", 1)]))
        .await
        .unwrap();
    match send(register("c", 0, "127.0.0.1:3", &[])).await {
        Err(CallError::Remote { code, message }) => {
            assert_eq!(code, ErrorCode::SystemBusy);
            assert!(message.contains("max_brokers"), "{message}");
        }
        other => panic!("past max_brokers: {other:?}"),
    }
    assert_eq!(route(&conn, "A2").await.unwrap().brokers.len(), 1);
    assert_eq!(route(&conn, "A1").await.unwrap().brokers.len(), 2);
    assert!(route(&conn, "B2").await.is_err());
}
