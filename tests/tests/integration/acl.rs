//! Access control end to end: a broker with an ACL file, clients signing as different
//! principals over real sockets; each permission allowed and denied, forged, replayed and
//! stale requests refused, the file reloaded live; a name server refusing a rogue broker.
//!
//! Over ~600 lines on purpose: one end-to-end scenario per test over the shared set-up at
//! the top.

use std::path::Path;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use weir_broker::acl::AclCounts;
use weir_protocol::ErrorCode;
use weir_protocol::auth::{Credentials, Signed, Stamp, now_ms};
use weir_protocol::broker::{
    ConsumerData, GetQueueOffsets, Heartbeat, MessageModel, PullMessage, QueryConsumerOffset,
    UnregisterClient, UpdateConsumerOffset,
};
use weir_protocol::frame::{self, Frame, Kind};
use weir_protocol::route::{
    GetAllTopics, GetClusterInfo, RegisterBroker, RegisteredTopics, TopicConfig, perm,
};
use weir_protocol::rpc::encode_header;
use weir_protocol::{ConnConfig, Connection, NoHandler, Rpc};
use weir_tests::artifacts::{self, KEEP_ALL};
use weir_tests::{Client, Env, Msg, T, eventually, remote_error};

const ACL: &str = r#"
window_secs = 120

[[principal]]
access_key = "root"
secret_key = "root-secret"
admin = true

[[principal]]
access_key = "producer"
secret_key = "producer-secret"
topics = { "orders*" = "pub" }
groups = { "order-producers" = "pub" }

[[principal]]
access_key = "consumer"
secret_key = "consumer-secret"
topics = { "orders*" = "sub" }
groups = { "billing" = "sub" }

[[principal]]
access_key = "filterer"
secret_key = "filterer-secret"
topics = { "orders" = "sub" }
groups = { "billing" = "sub|admin" }

[[principal]]
access_key = "mixed"
secret_key = "mixed-secret"
default_topic = "pub|sub"
topics = { "orders.secret*" = "deny", "mine*" = "admin" }
"#;

/// Replaces the ACL file at once (a new file renamed over it: never seen half written).
fn write_acl(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write the ACL file");
    std::fs::rename(&tmp, path).expect("rename the ACL file");
}

/// A broker whose ACL file is `text`, checked for changes every 20 ms.
async fn acl_env(text: &str) -> (Env, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("acl.toml");
    write_acl(&file, text);
    let env = Env::start_with(|c| {
        c.acl.file = Some(file);
        c.acl.reload_interval_ms = 20;
    })
    .await;
    (env, dir)
}

fn counts(env: &Env) -> AclCounts {
    env.broker().broker().acl.stats.counts()
}

fn pull(group: &str, topic: &str) -> PullMessage {
    PullMessage {
        group: group.into(),
        topic: topic.into(),
        queue_id: 0,
        offset: 0,
        max_msgs: 32,
        expression: "*".into(),
        suspend_ms: 0,
        commit_offset: None,
    }
}

async fn call<R: Rpc>(c: &Client, req: &R) -> Result<R::Response, weir_protocol::CallError> {
    c.conn.call(req, Bytes::new(), T).await.map(|(r, _)| r)
}

/// The permission named in an access-denied answer.
fn denied<T: std::fmt::Debug>(r: Result<T, weir_protocol::CallError>, names: &str) {
    let message = remote_error(r, ErrorCode::AccessDenied);
    assert!(message.contains(names), "{message:?} should name {names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_permission_allowed_and_denied() {
    let (env, _dir) = acl_env(ACL).await;
    let root = env.client_as("root", "root-secret").await;
    let producer = env.client_as("producer", "producer-secret").await;
    let consumer = env.client_as("consumer", "consumer-secret").await;
    let filterer = env.client_as("filterer", "filterer-secret").await;
    let mixed = env.client_as("mixed", "mixed-secret").await;

    // Topic admin: creating a topic.
    let create = |name: &str| weir_protocol::broker::CreateTopic {
        topic: TopicConfig {
            name: name.into(),
            read_queues: 1,
            write_queues: 1,
            perm: perm::READ | perm::WRITE,
        },
    };
    denied(
        call(&producer, &create("orders")).await,
        "lacks admin on topic \"orders\"; it has pub",
    );
    root.create_topic("orders", 1).await;
    root.create_topic("orders.secret", 1).await;
    // Admin on a topic, without cluster admin.
    mixed.create_topic("mine", 1).await;
    denied(
        call(&mixed, &create("yours")).await,
        "admin on topic \"yours\"; it has pub|sub",
    );
    assert_eq!(counts(&env).denied_topic_admin, 2);

    // Topic pub.
    producer.send("orders", 0, &[Msg::new("a")]).await;
    let send = weir_protocol::broker::SendBatch {
        producer_group: "p".into(),
        topic: "orders".into(),
        queue_id: 0,
        messages: vec![weir_protocol::broker::BatchEntry {
            tags: String::new(),
            keys: vec!["k".into()],
            properties: Vec::new(),
            flag: 0,
            born_timestamp: 1,
            body_len: 1,
        }],
    };
    denied(
        consumer.conn.call(&send, Bytes::from_static(b"x"), T).await,
        "access key \"consumer\" lacks pub on topic \"orders\"; it has sub",
    );

    // Topic sub and group sub: pulls, offsets.
    let got = consumer
        .pull("billing", "orders", 0, 0, 0)
        .await
        .expect("pull");
    assert_eq!(got.msgs.len(), 1);
    denied(
        producer.pull("billing", "orders", 0, 0, 0).await,
        "sub on group \"billing\"",
    );
    denied(
        consumer.pull("other", "orders", 0, 0, 0).await,
        "sub on group \"other\"",
    );
    denied(
        filterer.pull_raw(&pull("billing", "orders.x")).await,
        "sub on topic \"orders.x\"",
    );
    let update = UpdateConsumerOffset {
        group: "billing".into(),
        topic: "orders".into(),
        queue_id: 0,
        offset: 1,
    };
    call(&consumer, &update).await.expect("commit an offset");
    denied(call(&producer, &update).await, "sub on group \"billing\"");
    let query = QueryConsumerOffset {
        group: "billing".into(),
        topic: "orders".into(),
        queue_id: 0,
    };
    assert_eq!(
        call(&consumer, &query).await.expect("query").offset,
        Some(1)
    );
    let offsets = GetQueueOffsets {
        topic: "orders".into(),
        queue_id: 0,
    };
    call(&consumer, &offsets).await.expect("queue offsets");
    denied(call(&producer, &offsets).await, "sub on topic \"orders\"");

    // A group's retry topic belongs to the group.
    let retry = weir_protocol::names::retry_topic("billing");
    denied(
        producer.pull_raw(&pull("billing", &retry)).await,
        "sub on group \"billing\"",
    );
    if let Err(weir_protocol::CallError::Remote { code, message }) =
        consumer.pull_raw(&pull("billing", &retry)).await
    {
        assert_ne!(code, ErrorCode::AccessDenied, "{message}");
    }

    // Heartbeats: producer groups need pub, consumer groups and their topics sub.
    let hb = |producers: &[&str], group: &str, topic: &str| Heartbeat {
        client_id: "c1".into(),
        producer_groups: producers.iter().map(|s| (*s).to_owned()).collect(),
        consumers: vec![ConsumerData {
            group: group.into(),
            model: MessageModel::Clustering,
            subscriptions: vec![(topic.into(), "*".into())],
        }],
    };
    call(&consumer, &hb(&[], "billing", "orders"))
        .await
        .expect("heartbeat");
    denied(
        call(&consumer, &hb(&[], "billing", "audit")).await,
        "sub on topic \"audit\"",
    );
    denied(
        call(&consumer, &hb(&["order-producers"], "billing", "orders")).await,
        "pub on group \"order-producers\"",
    );
    let producer_hb = Heartbeat {
        client_id: "p1".into(),
        producer_groups: vec!["order-producers".into()],
        consumers: Vec::new(),
    };
    call(&producer, &producer_hb)
        .await
        .expect("producer heartbeat");
    // A heartbeat naming no group needs no right, but under another key's client id it
    // is refused: it would take that client out of its groups (and its leases with it).
    let hijack = Heartbeat {
        client_id: "p1".into(),
        producer_groups: Vec::new(),
        consumers: Vec::new(),
    };
    let message = remote_error(call(&mixed, &hijack).await, ErrorCode::NoPermission);
    assert!(message.contains("another access key"), "{message}");
    // Only a principal in all of a client's groups unregisters it.
    let unregister = UnregisterClient::whole("p1");
    denied(
        call(&consumer, &unregister).await,
        "pub on group \"order-producers\"",
    );
    call(&producer, &unregister)
        .await
        .expect("unregister its own client");

    // Wildcards with a deny: the longest matching pattern wins.
    mixed.send("orders", 0, &[Msg::new("b")]).await;
    denied(
        mixed
            .conn
            .call(
                &weir_protocol::broker::SendBatch {
                    topic: "orders.secret".into(),
                    ..send.clone()
                },
                Bytes::from_static(b"x"),
                T,
            )
            .await,
        "pub on topic \"orders.secret\"; it has deny",
    );

    // Cluster admin.
    denied(call(&consumer, &GetAllTopics).await, "cluster admin");
    let all = call(&root, &GetAllTopics).await.expect("all topics");
    assert!(all.topics.contains(&"orders".to_owned()));

    // Filters: only a principal with admin on the group uploads, resets or removes its
    // filter.
    let keep_all = artifacts::read(KEEP_ALL);
    denied(
        consumer.upload("billing", "orders", &keep_all, &[]).await,
        "admin on group \"billing\"; it has sub",
    );
    denied(
        filterer.upload("other", "orders", &keep_all, &[]).await,
        "admin on group \"other\"",
    );
    filterer
        .upload("billing", "orders", &keep_all, &[])
        .await
        .expect("the group's admin uploads its filter");
    denied(
        consumer.reset("billing", "orders").await,
        "admin on group \"billing\"",
    );
    let reset = filterer
        .reset("billing", "orders")
        .await
        .expect("the group's admin resets its filter");
    assert_eq!((reset.version, reset.cleared), (1, None));
    denied(
        consumer.remove("billing", "orders").await,
        "admin on group \"billing\"",
    );
    filterer
        .remove("billing", "orders")
        .await
        .expect("the group's admin removes its filter");

    let c = counts(&env);
    assert!(c.allowed >= 12, "{c:?}");
    assert_eq!(c.denied_topic_admin, 2, "{c:?}");
    assert_eq!(c.denied_topic_pub, 2, "{c:?}");
    assert_eq!(c.denied_topic_sub, 3, "{c:?}");
    assert_eq!(c.denied_group_sub, 4, "{c:?}");
    assert_eq!(c.denied_group_pub, 2, "{c:?}");
    assert_eq!(c.denied_group_admin, 4, "{c:?}");
    assert_eq!(c.denied_cluster, 1, "{c:?}");
    assert_eq!(c.denied, 18, "{c:?}");
}

/// Writes `frame` on a new connection and reads the answer's status and message.
async fn raw_call(addr: &str, frame: &Frame) -> (u16, String) {
    let mut out = BytesMut::new();
    frame
        .encode(&mut out, frame::DEFAULT_MAX_FRAME)
        .expect("encode");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(&out).await.expect("write");
    let answer = tokio::time::timeout(T, frame::read_frame(&mut s, frame::DEFAULT_MAX_FRAME))
        .await
        .expect("an answer in time")
        .expect("a frame")
        .expect("not closed");
    let message = weir_protocol::rpc::decode_header::<weir_protocol::rpc::ErrorHeader>(
        &answer.header,
        "error",
    )
    .map(|h| h.message)
    .unwrap_or_default();
    (answer.code, message)
}

/// A frame of `req` signed by `creds` with `stamp`.
fn signed_frame<R: Rpc>(req: &R, creds: &Credentials, stamp: Stamp) -> Frame {
    let header = encode_header(req, "test").expect("header");
    let auth = creds.sign(
        stamp,
        &Signed {
            oneway: false,
            code: R::CODE as u16,
            header: &header,
            body: &[],
        },
    );
    Frame {
        kind: Kind::Request,
        request_id: 1,
        code: R::CODE as u16,
        auth,
        header,
        body: Bytes::new(),
    }
}

/// A send-back copies a record by its offset into the group's retry or dead-letter topic,
/// which the group may read: so the record must be one its principal may read too, and
/// never the broker's own (a pending half message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_back_copies_only_what_its_principal_may_read() {
    use weir_protocol::broker::ConsumerSendMsgBack;
    let (env, _dir) = acl_env(ACL).await;
    let root = env.client_as("root", "root-secret").await;
    let filterer = env.client_as("filterer", "filterer-secret").await;
    root.create_topic("orders", 1).await;
    root.create_topic("orders.secret", 1).await;
    let at = |r: &[weir_protocol::broker::SendResult]| {
        r[0].msg_id
            .parse::<weir_protocol::MessageId>()
            .unwrap()
            .offset
    };
    let secret = at(&root.send("orders.secret", 0, &[Msg::new("payroll")]).await);
    let order = at(&root.send("orders", 0, &[Msg::new("order")]).await);
    let back = |commit_log_offset| ConsumerSendMsgBack {
        group: "billing".into(),
        commit_log_offset,
        delay_level: -1,
        max_reconsume_times: 16,
    };
    denied(
        call(&filterer, &back(secret)).await,
        "lacks sub on topic \"orders.secret\"",
    );
    call(&filterer, &back(order))
        .await
        .expect("its own topic's record");
    let dlq = filterer
        .pull("billing", "%DLQ%billing", 0, 0, 0)
        .await
        .expect("pull the dead-letter topic");
    let bodies: Vec<&[u8]> = dlq.msgs.iter().map(|m| &m.body[..]).collect();
    assert_eq!(bodies, vec![&b"order"[..]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_stale_and_unsigned_requests_are_refused() {
    let before_start = now_ms();
    let (env, _dir) = acl_env(ACL).await;
    let addr = env.broker().local_addr().to_string();
    let root = Credentials::new("root", "root-secret").expect("creds");
    let stamp = |ts: u64, seq: u64| Stamp {
        timestamp_ms: ts,
        session: 42,
        seq,
    };
    let code = |e: ErrorCode| e as u16;

    // A signed request is taken once; the same bytes again, on this connection or a new
    // one, are refused.
    let f = signed_frame(&GetAllTopics, &root, stamp(now_ms(), 1));
    assert_eq!(raw_call(&addr, &f).await.0, 0);
    let (status, message) = raw_call(&addr, &f).await;
    assert_eq!(status, code(ErrorCode::RequestReplayed), "{message}");
    assert!(message.contains("replayed"), "{message}");
    // The next number of the session is new.
    assert_eq!(
        raw_call(
            &addr,
            &signed_frame(&GetAllTopics, &root, stamp(now_ms(), 2))
        )
        .await
        .0,
        0
    );

    // A request changed on the way no longer verifies.
    let offsets = |topic: &str| GetQueueOffsets {
        topic: topic.into(),
        queue_id: 0,
    };
    let mut changed = signed_frame(&offsets("orders"), &root, stamp(now_ms(), 3));
    changed.header = encode_header(&offsets("orderz"), "test").expect("header");
    let (status, message) = raw_call(&addr, &changed).await;
    assert_eq!(status, code(ErrorCode::AuthFailed), "{message}");

    // Outside the window, either way.
    for ts in [now_ms() - 121_000, now_ms() + 121_000] {
        let (status, message) =
            raw_call(&addr, &signed_frame(&GetAllTopics, &root, stamp(ts, 4))).await;
        assert_eq!(status, code(ErrorCode::RequestExpired), "{message}");
        assert!(message.contains("outside the window"), "{message}");
    }
    // Signed before the broker started (within the window): a request captured before a
    // restart, which the broker no longer remembers seeing.
    let (status, message) = raw_call(
        &addr,
        &signed_frame(&GetAllTopics, &root, stamp(before_start - 1, 5)),
    )
    .await;
    assert_eq!(status, code(ErrorCode::RequestExpired), "{message}");
    assert!(message.contains("before this server started"), "{message}");

    // A wrong secret, an unknown key, no signature at all.
    let wrong = env.client_as("root", "not-the-secret").await;
    let message = remote_error(call(&wrong, &GetAllTopics).await, ErrorCode::AuthFailed);
    assert!(message.contains("wrong signature"), "{message}");
    let stranger = env.client_as("stranger", "x").await;
    let message = remote_error(call(&stranger, &GetAllTopics).await, ErrorCode::AuthFailed);
    assert!(
        message.contains("unknown access key \"stranger\""),
        "{message}"
    );
    let anonymous = env.client().await;
    let message = remote_error(call(&anonymous, &GetAllTopics).await, ErrorCode::AuthFailed);
    assert!(message.contains("not signed"), "{message}");

    let c = counts(&env);
    assert_eq!(
        (
            c.replayed,
            c.bad_signature,
            c.expired,
            c.unknown_key,
            c.unsigned
        ),
        (1, 2, 3, 1, 1),
        "{c:?}"
    );
    assert_eq!(c.allowed, 2, "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acl_file_reloads_without_restart_and_a_bad_file_keeps_the_rules() {
    let (env, dir) = acl_env(ACL).await;
    let file = dir.path().join("acl.toml");
    let late = env.client_as("late", "late-secret").await;
    let consumer = env.client_as("consumer", "consumer-secret").await;
    remote_error(call(&late, &GetAllTopics).await, ErrorCode::AuthFailed);
    denied(call(&consumer, &GetAllTopics).await, "cluster admin");

    // A new principal, and a permission taken away.
    let changed = ACL.replace(
        "groups = { \"billing\" = \"sub\" }",
        "groups = { \"billing\" = \"deny\" }",
    ) + "\n[[principal]]\naccess_key = \"late\"\nsecret_key = \"late-secret\"\nadmin = true\n";
    write_acl(&file, &changed);
    eventually("the new principal is known", async || {
        call(&late, &GetAllTopics).await.is_ok()
    })
    .await;
    denied(
        consumer.pull("billing", "orders", 0, 0, 0).await,
        "sub on group \"billing\"; it has deny",
    );
    assert_eq!(counts(&env).reloads, 1);

    // A file that does not parse leaves the rules in force.
    write_acl(&file, &format!("{changed}\nunknown_setting = 1\n"));
    eventually("the bad file is seen", async || {
        counts(&env).reload_failures == 1
    })
    .await;
    call(&late, &GetAllTopics)
        .await
        .expect("the rules in force stay");
    assert_eq!(counts(&env).reloads, 1);
}

/// Registers `name` with the name server at `ns` over a connection signed by `creds`.
async fn register(
    ns: &str,
    name: &str,
    creds: Option<Credentials>,
) -> Result<(), weir_protocol::CallError> {
    let conn = Connection::connect(ns, Arc::new(NoHandler), ConnConfig::default(), T).await?;
    if let Some(c) = creds {
        conn.sign_with(Arc::new(c));
    }
    let req = RegisterBroker {
        cluster: "c".into(),
        broker_name: name.into(),
        broker_id: 0,
        addr: "192.0.2.7:10911".into(),
        ha: Default::default(),
    };
    let topics = RegisteredTopics { topics: Vec::new() }.encode()?;
    conn.call(&req, topics, T).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rogue_broker_is_refused_by_the_name_server() {
    let ns = weir_namesrv::start(weir_namesrv::NamesrvConfig {
        listen: "127.0.0.1:0".into(),
        cluster_secret: Some("cluster-secret".into()),
        ..Default::default()
    })
    .await
    .expect("name server starts");
    let addr = ns.local_addr().to_string();
    let ns_dir = tempfile::tempdir().expect("temp dir");

    // A broker with the cluster secret registers.
    let mut config = weir_tests::broker_config(&ns_dir.path().join("good"), &addr);
    config.broker_name = "broker-a".into();
    config.cluster_secret = Some("cluster-secret".into());
    let good = weir_broker::start(config).await.expect("broker starts");

    // One with another secret, one without: refused.
    let mut config = weir_tests::broker_config(&ns_dir.path().join("rogue"), &addr);
    config.broker_name = "broker-a".into();
    config.broker_id = 0;
    config.cluster_secret = Some("guessed".into());
    let rogue = weir_broker::start(config)
        .await
        .expect("rogue broker starts");
    let message = remote_error(
        register(&addr, "broker-b", None).await,
        ErrorCode::AuthFailed,
    );
    assert!(message.contains("not signed"), "{message}");
    let wrong = Credentials::new("broker:broker-b", "guessed").expect("creds");
    let message = remote_error(
        register(&addr, "broker-b", Some(wrong)).await,
        ErrorCode::AuthFailed,
    );
    assert!(message.contains("cluster_secret"), "{message}");
    assert!(ns.refused_registrations() >= 3);

    let client = Connection::connect(&addr, Arc::new(NoHandler), ConnConfig::default(), T)
        .await
        .expect("connect");
    let (info, _) = client
        .call(&GetClusterInfo, Bytes::new(), T)
        .await
        .expect("cluster info");
    let names: Vec<(String, Option<String>)> = info
        .brokers
        .iter()
        .map(|b| (b.broker_name.clone(), b.master_addr().map(str::to_owned)))
        .collect();
    assert_eq!(
        names,
        vec![("broker-a".to_owned(), Some(good.local_addr().to_string()))],
        "only the broker with the secret is routed to"
    );
    rogue.shutdown().await.expect("rogue stops");
    good.shutdown().await.expect("broker stops");
    ns.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_with_a_bad_acl_file_does_not_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("acl.toml");
    write_acl(
        &file,
        "[[principal]]\naccess_key = \"a\"\nsecret_key = \"s\"\ntopics = { t = \"write\" }\n",
    );
    let mut config = weir_tests::broker_config(dir.path(), "");
    config.acl.file = Some(file.clone());
    let e = weir_broker::start(config.clone())
        .await
        .err()
        .expect("refused");
    let e = e.to_string();
    assert!(e.contains("acl.toml") && e.contains("\"write\""), "{e}");
    config.acl.file = Some(dir.path().join("missing.toml"));
    let e = weir_broker::start(config).await.err().expect("refused");
    assert!(e.to_string().contains("missing.toml"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_signed_requests_on_one_connection_are_all_taken() {
    let (env, _dir) = acl_env(ACL).await;
    let root = env.client_as("root", "root-secret").await;
    root.create_topic("orders", 1).await;
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let c = root.clone();
            tokio::spawn(async move {
                for _ in 0..100 {
                    let req = GetQueueOffsets {
                        topic: "orders".into(),
                        queue_id: 0,
                    };
                    call(&c, &req).await.expect("a signed request is taken");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let c = counts(&env);
    assert_eq!((c.allowed, c.replayed), (6401, 0), "{c:?}");
    assert_eq!(env.broker().broker().acl.replay_sessions(), 1);
}
