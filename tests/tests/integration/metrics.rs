//! The Prometheus endpoints of the broker and the name server, scraped during a real
//! produce/consume run with the client library: the counts match exactly what was sent
//! and consumed, and the text passes `promtool check metrics`.

use std::net::SocketAddr;

use weir_client::{
    Admin, ClientConfig, ClientInstance, Message, Producer, PullConsumer, PullStatus,
};
use weir_tests::metrics::{http_get, scrape};
use weir_tests::{Msg, artifacts, broker_config, eventually};

const TOPIC: &str = "metered";
const GROUP: &str = "metered-group";
const QUEUES: u32 = 2;

struct Run {
    ns: weir_namesrv::RunningNameServer,
    broker: weir_broker::RunningBroker,
    _dir: tempfile::TempDir,
}

impl Run {
    async fn start() -> Run {
        let ns = weir_namesrv::start(weir_namesrv::NamesrvConfig {
            listen: "127.0.0.1:0".into(),
            metrics: weir_protocol::metrics::MetricsConfig {
                listen: Some("127.0.0.1:0".into()),
            },
            ..Default::default()
        })
        .await
        .expect("name server starts");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = broker_config(dir.path(), &ns.local_addr().to_string());
        config.metrics.listen = Some("127.0.0.1:0".into());
        let broker = weir_broker::start(config).await.expect("broker starts");
        Run {
            ns,
            broker,
            _dir: dir,
        }
    }

    fn broker_metrics(&self) -> SocketAddr {
        self.broker.metrics_addr().expect("broker metrics on")
    }

    fn ns_metrics(&self) -> SocketAddr {
        self.ns.metrics_addr().expect("name server metrics on")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_counts_match_what_was_sent_and_consumed() {
    let run = Run::start().await;
    let client =
        ClientInstance::new(ClientConfig::new(run.ns.local_addr().to_string())).expect("client");
    let admin = Admin::new(client.clone());
    admin
        .create_topic(TOPIC, QUEUES)
        .await
        .expect("topic created");
    eventually("the topic is routed", async || {
        admin.route(TOPIC).await.is_ok()
    })
    .await;

    // Before any traffic: the families are there, at zero.
    let before = scrape(run.broker_metrics()).await;
    assert_eq!(
        before.get("weir_produced_messages_total", &[("topic", TOPIC)]),
        None
    );
    assert_eq!(before.value("weir_send_latency_seconds_count", &[]), 0.0);
    assert_eq!(before.value("weir_held_pulls", &[]), 0.0);

    const SENT: usize = 40;
    let producer = Producer::new("metered-producer", client.clone());
    let mut sent_bytes = 0usize;
    for i in 0..SENT {
        let body = format!("message number {i} {}", "x".repeat(i));
        sent_bytes += body.len();
        producer
            .send(&Message::new(TOPIC, body.into_bytes()))
            .await
            .expect("sent");
    }

    // Consume part of it: at most 7 messages from each queue, committing what was read.
    let consumer = PullConsumer::new(GROUP, client.clone());
    let queues = consumer.queues(TOPIC).await.expect("queues");
    assert_eq!(queues.len(), QUEUES as usize);
    let (mut consumed, mut consumed_bytes, mut pulls) = (0usize, 0usize, 0u64);
    for mq in &queues {
        let p = consumer
            .pull(mq, "*", 0, 7, None, None)
            .await
            .expect("pulled");
        pulls += 1;
        assert_eq!(p.status, PullStatus::Found);
        consumed += p.messages.len();
        consumed_bytes += p.messages.iter().map(|m| m.body.len()).sum::<usize>();
        consumer
            .commit_offset(mq, p.next_offset)
            .await
            .expect("committed");
    }
    assert!(consumed > 0 && consumed < SENT, "consumed {consumed}");

    let m = scrape(run.broker_metrics()).await;
    let t = [("topic", TOPIC)];
    let tg = [("topic", TOPIC), ("group", GROUP)];
    assert_eq!(m.value("weir_produced_messages_total", &t), SENT as f64);
    assert_eq!(m.value("weir_produced_bytes_total", &t), sent_bytes as f64);
    assert_eq!(
        m.value("weir_consumed_messages_total", &tg),
        consumed as f64
    );
    assert_eq!(
        m.value("weir_consumed_bytes_total", &tg),
        consumed_bytes as f64
    );
    assert_eq!(
        m.value(
            "weir_consumer_lag_messages",
            &[("group", GROUP), ("topic", TOPIC)]
        ),
        (SENT - consumed) as f64
    );
    assert_eq!(m.value("weir_send_latency_seconds_count", &[]), SENT as f64);
    assert_eq!(
        m.value("weir_send_latency_seconds_bucket", &[("le", "+Inf")]),
        SENT as f64
    );
    assert_eq!(
        m.value("weir_pull_latency_seconds_count", &[]),
        pulls as f64
    );
    assert!(m.value("weir_send_latency_seconds_sum", &[]) > 0.0);
    assert!(m.value("weir_connections", &[]) >= 1.0);
    assert!(m.value("weir_store_commit_log_max_offset_bytes", &[]) > sent_bytes as f64);
    assert_eq!(m.value("weir_acl_enabled", &[]), 0.0);
    assert_eq!(
        m.value(
            "weir_broker_info",
            &[
                ("cluster", "DefaultCluster"),
                ("broker", "broker-a"),
                ("id", "0"),
                ("role", "async_master")
            ]
        ),
        1.0
    );
    // Each send adds a commit log sync at most once it is flushed; some sync has run by
    // the time the store's periodic flush came round.
    eventually("a commit log sync is observed", async || {
        scrape(run.broker_metrics())
            .await
            .value("weir_store_flush_latency_seconds_count", &[])
            > 0.0
    })
    .await;

    // A pull of a topic that does not exist: counted by its status, and no series for it.
    let raw = weir_tests::Client::connect(&run.broker.local_addr().to_string()).await;
    assert!(raw.pull(GROUP, "no-such-topic", 0, 0, 0).await.is_err());
    let m = scrape(run.broker_metrics()).await;
    assert_eq!(
        m.value(
            "weir_request_errors_total",
            &[("code", "topic_does_not_exist")]
        ),
        1.0
    );
    assert!(!m.0.keys().any(|k| k.contains("no-such-topic")));

    // A pull held at the end of a queue shows as held until a message arrives.
    let end = raw.queue_offsets(TOPIC, 0).await.max;
    let held = tokio::spawn(async move {
        let p = raw
            .pull(GROUP, TOPIC, 0, end, 10_000)
            .await
            .expect("held pull");
        p.msgs.len()
    });
    let addr = run.broker_metrics();
    eventually("the held pull is counted", async || {
        scrape(addr).await.value("weir_held_pulls", &[]) == 1.0
    })
    .await;
    let sender = weir_tests::Client::connect(&run.broker.local_addr().to_string()).await;
    sender.send(TOPIC, 0, &[weir_tests::Msg::new("wake")]).await;
    assert_eq!(held.await.expect("pull task"), 1);
    let m = scrape(addr).await;
    assert_eq!(m.value("weir_held_pulls", &[]), 0.0);
    assert_eq!(
        m.value("weir_produced_messages_total", &t),
        (SENT + 1) as f64
    );
    assert_eq!(
        m.value("weir_consumed_messages_total", &tg),
        (consumed + 1) as f64
    );

    // The name server: one broker, the topic, and the route lookups the client made.
    let n = scrape(run.ns_metrics()).await;
    assert_eq!(n.value("weir_namesrv_brokers", &[]), 1.0);
    assert_eq!(n.value("weir_namesrv_broker_groups", &[]), 1.0);
    assert!(n.value("weir_namesrv_topics", &[]) >= 1.0);
    assert!(n.value("weir_namesrv_route_lookups_total", &[("result", "found")]) >= 1.0);
    assert!(n.value("weir_namesrv_registrations_total", &[]) >= 1.0);
    assert_eq!(
        n.value("weir_namesrv_registrations_refused_total", &[]),
        0.0
    );
    assert!(n.value("weir_namesrv_connections", &[]) >= 1.0);

    drop(client);
    run.broker.shutdown().await.expect("clean stop");
    run.ns.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_answers_only_get_metrics() {
    let run = Run::start().await;
    for addr in [run.broker_metrics(), run.ns_metrics()] {
        assert_eq!(http_get(addr, "/").await.0, 404);
        assert_eq!(http_get(addr, "/metrics?x=1").await.0, 200);
    }
    run.broker.shutdown().await.expect("clean stop");
    run.ns.shutdown().await;
}

/// Off unless configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_off_by_default() {
    let env = weir_tests::Env::start().await;
    assert_eq!(env.broker().metrics_addr(), None);
}

fn metered(c: &mut weir_broker::BrokerConfig) {
    c.metrics.listen = Some("127.0.0.1:0".into());
}

/// A group's filter's counters, as `weir filter list` shows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_counters_are_scraped() {
    let env = weir_tests::Env::start_with(metered).await;
    let c = env.client().await;
    c.create_topic("F", 1).await;
    let msgs: Vec<Msg> = (0..5).map(|i| Msg::new(format!("k{i}"))).collect();
    c.send("F", 0, &msgs).await;
    c.upload("G", "F", &artifacts::read(artifacts::KEEP_ALL), &[])
        .await
        .expect("uploaded");
    assert_eq!(
        c.pull("G", "F", 0, 0, 0).await.expect("pulled").msgs.len(),
        5
    );
    let info = c.filter_info("G", "F").await.expect("listed");
    assert_eq!(info.stats.messages_in, 5);

    let m = scrape(env.broker().metrics_addr().expect("metrics on")).await;
    let gt = [("group", "G"), ("topic", "F")];
    assert_eq!(m.value("weir_filter_messages_in_total", &gt), 5.0);
    assert_eq!(m.value("weir_filter_messages_kept_total", &gt), 5.0);
    assert_eq!(
        m.value("weir_filter_calls_total", &gt),
        info.stats.calls as f64
    );
    assert_eq!(
        m.value("weir_filter_call_seconds_total", &gt),
        info.stats.call_nanos as f64 / 1e9
    );
    assert!(m.value("weir_filter_seconds_per_message", &gt) > 0.0);
    for cause in [
        "guest_error",
        "trap",
        "deadline",
        "memory_exhausted",
        "wrong_verdicts",
    ] {
        let labels = [("group", "G"), ("topic", "F"), ("cause", cause)];
        assert_eq!(m.value("weir_filter_failures_total", &labels), 0.0);
    }
    assert_eq!(m.value("weir_filter_failed", &gt), 0.0);
    assert_eq!(
        m.value(
            "weir_consumed_messages_total",
            &[("topic", "F"), ("group", "G")]
        ),
        5.0
    );
}

/// Access control's refusals, by cause, and the error answers they made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_refusals_are_scraped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("acl.toml");
    std::fs::write(
        &file,
        "[[principal]]\naccess_key = \"p\"\nsecret_key = \"p-secret\"\ntopics = { \"orders\" = \"pub\" }\ngroups = { \"g\" = \"sub\" }\n",
    )
    .expect("write the ACL file");
    let env = weir_tests::Env::start_with(|c| {
        metered(c);
        c.acl.file = Some(file);
    })
    .await;
    let unsigned = env.client().await;
    assert!(unsigned.pull("g", "orders", 0, 0, 0).await.is_err());
    let p = env.client_as("p", "p-secret").await;
    assert!(p.pull("g", "orders", 0, 0, 0).await.is_err());

    let m = scrape(env.broker().metrics_addr().expect("metrics on")).await;
    assert_eq!(m.value("weir_acl_enabled", &[]), 1.0);
    assert_eq!(
        m.value("weir_acl_refusals_total", &[("cause", "unsigned")]),
        1.0
    );
    assert_eq!(
        m.value("weir_acl_refusals_total", &[("cause", "denied_topic_sub")]),
        1.0
    );
    let errors: f64 =
        m.0.iter()
            .filter(|(k, _)| k.starts_with("weir_request_errors_total{"))
            .map(|(_, v)| v)
            .sum();
    assert_eq!(errors, 2.0);
    assert_eq!(
        m.value("weir_request_errors_total", &[("code", "access_denied")]),
        1.0
    );
}
