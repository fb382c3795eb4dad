//! TLS end to end, with a CA and a server certificate the test makes itself: a name server
//! and a broker taking TLS only (`enforcing`) serve a client that trusts the CA, refuse a
//! plaintext client with an error saying why, and fail a client trusting another CA at the
//! handshake; `permissive` takes both on one port; a slave replicates from its master's HA
//! port over TLS, having learned where it is by registering over TLS.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use weir_broker::BrokerConfig;
use weir_client::{Admin, ClientConfig, ClientInstance, Message, Producer, PullConsumer};
use weir_protocol::broker::GetQueueOffsets;
use weir_protocol::{CallError, ConnConfig, Connection, ErrorCode, NoHandler, TlsMode};
use weir_tests::tls::Pki;
use weir_tests::{Client, Env, Msg, T, eventually};

fn client(namesrv: &str, ca: Option<&std::path::Path>) -> ClientInstance {
    let mut config = ClientConfig::new(namesrv);
    config.request_timeout = Duration::from_secs(5);
    if let Some(ca) = ca {
        config = config.with_tls_ca(ca).expect("CA file");
    }
    ClientInstance::new(config).expect("client")
}

/// Sends `n` messages to `topic` with the client library; their bodies.
async fn send(client: &ClientInstance, topic: &str, n: usize, prefix: &str) -> Vec<String> {
    let producer = Producer::new("tls-producers", client.clone());
    let mut bodies = Vec::new();
    for i in 0..n {
        let body = format!("{prefix}-{i}");
        producer
            .send(&Message::new(topic, Bytes::from(body.clone())))
            .await
            .expect("send over TLS");
        bodies.push(body);
    }
    bodies
}

/// Every body in `topic`, pulled with the client library.
async fn consume(client: &ClientInstance, topic: &str) -> Vec<String> {
    let consumer = PullConsumer::new("tls-readers", client.clone());
    let mut bodies = Vec::new();
    for mq in consumer.queues(topic).await.expect("queues") {
        let mut offset = 0;
        loop {
            let out = consumer
                .pull(&mq, "*", offset, 32, None, None)
                .await
                .expect("pull over TLS");
            bodies.extend(
                out.messages
                    .iter()
                    .map(|m| String::from_utf8_lossy(&m.body).into_owned()),
            );
            if out.next_offset >= out.max_offset {
                break;
            }
            offset = out.next_offset;
        }
    }
    bodies.sort();
    bodies
}

fn offsets_req(topic: &str) -> GetQueueOffsets {
    GetQueueOffsets {
        topic: topic.into(),
        queue_id: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforcing_serves_tls_clients_refuses_plaintext_and_other_cas() {
    let pki = Pki::new("weir test CA");
    let env = Env::start_tls(&pki, TlsMode::Enforcing, |_| {}).await;
    let broker_addr = env.broker().local_addr().to_string();

    // The CA's client: routes from the name server and the broker registered there (both
    // over TLS), sends, consumes.
    let good = client(&env.namesrv(), Some(&pki.ca));
    Admin::new(good.clone())
        .create_topic("Secure", 2)
        .await
        .expect("create topic over TLS");
    // Sent once the name server has the route (before it, a first-send route guesses 4
    // queues of a 2-queue topic).
    eventually("the name server has the topic's route", async || {
        good.route("Secure", true).await.is_ok()
    })
    .await;
    let mut sent = send(&good, "Secure", 20, "secret").await;
    sent.sort();
    assert_eq!(consume(&good, "Secure").await, sent);

    // A plaintext client: answered with an error naming the setting, then closed.
    let plain = Connection::connect(&broker_addr, Arc::new(NoHandler), ConnConfig::default(), T)
        .await
        .expect("TCP connects");
    let e = plain
        .call(&offsets_req("Secure"), Bytes::new(), T)
        .await
        .expect_err("plaintext refused");
    assert!(
        matches!(&e, CallError::Remote { code: ErrorCode::BadRequest, message } if message.contains("TLS connections only")),
        "{e}"
    );
    eventually("the plaintext connection closed", async || {
        plain.is_closed()
    })
    .await;
    // And through the client library, at the name server.
    let e = Admin::new(client(&env.namesrv(), None))
        .route("Secure")
        .await
        .expect_err("plaintext refused by the name server");
    assert!(e.to_string().contains("TLS connections only"), "{e}");

    // A client trusting another CA: the handshake fails, saying why.
    let other = Pki::new("another CA");
    let e = Connection::connect_with(
        &broker_addr,
        Arc::new(NoHandler),
        ConnConfig::default(),
        T,
        Some(&other.client_tls()),
    )
    .await
    .expect_err("unknown issuer");
    let text = e.to_string();
    assert!(
        matches!(e, CallError::Connect { .. })
            && text.contains("TLS handshake failed")
            && text.contains("invalid peer certificate")
            && text.contains(&other.ca.display().to_string()),
        "{text}"
    );
    let e = Admin::new(client(&env.namesrv(), Some(&other.ca)))
        .route("Secure")
        .await
        .expect_err("unknown issuer at the name server");
    assert!(e.to_string().contains("invalid peer certificate"), "{e}");

    let stats = env.broker().net_stats();
    assert!(stats.plaintext_refused >= 1, "{stats:?}");
    eventually("the broker counted the failed handshake", async || {
        env.broker().net_stats().tls_handshake_failures >= 1
    })
    .await;
    // The CA's client is still served.
    assert_eq!(consume(&good, "Secure").await, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_takes_tls_and_plaintext_on_the_same_port() {
    let pki = Pki::new("weir test CA");
    let env = Env::start_tls(&pki, TlsMode::Permissive, |_| {}).await;
    let plain = env.client().await;
    let tls = env.client_tls(&pki.client_tls()).await;
    plain.create_topic("Mixed", 1).await;
    plain
        .send("Mixed", 0, &[Msg::new("p0"), Msg::new("p1")])
        .await;
    tls.send("Mixed", 0, &[Msg::new("t0"), Msg::new("t1")])
        .await;
    for c in [&plain, &tls] {
        let d = c.drain("mixed-readers", "Mixed", 0, 0).await;
        let keys: Vec<&str> = d.msgs.iter().map(|m| m.key()).collect();
        assert_eq!(keys, ["p0", "p1", "t0", "t1"]);
    }
    // The client library both ways, through the name server.
    let mut sent = send(&client(&env.namesrv(), None), "Mixed", 3, "plain").await;
    sent.extend(send(&client(&env.namesrv(), Some(&pki.ca)), "Mixed", 3, "tls").await);
    let got = consume(&client(&env.namesrv(), Some(&pki.ca)), "Mixed").await;
    for body in &sent {
        assert!(got.contains(body), "{body} in {got:?}");
    }
    let stats = env.broker().net_stats();
    assert_eq!(
        (stats.plaintext_refused, stats.tls_handshake_failures),
        (0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_replicates_from_its_master_over_tls() {
    let pki = Pki::new("weir test CA");
    let master = Env::start_tls(&pki, TlsMode::Enforcing, |c| {
        c.ha_listen = Some("127.0.0.1:0".into());
    })
    .await;
    // The slave learns its master's HA address from the name server (registering over
    // TLS), and replicates over TLS with the CA of `[tls] ca_file`.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config: BrokerConfig = weir_tests::broker_config(dir.path(), &master.namesrv());
    config.role = weir_protocol::ha::BrokerRole::Slave;
    config.broker_id = 1;
    config.tls = pki.server_config(TlsMode::Enforcing);
    let slave = weir_broker::start(config).await.expect("slave starts");

    let m = master.client_tls(&pki.client_tls()).await;
    m.create_topic("Replicated", 1).await;
    let msgs: Vec<Msg> = (0..50).map(|i| Msg::new(format!("r{i}"))).collect();
    m.send("Replicated", 0, &msgs).await;
    let s = Client::connect_tls(&slave.local_addr().to_string(), &pki.client_tls()).await;
    eventually("the slave has every message", async || {
        s.conn
            .call(&offsets_req("Replicated"), Bytes::new(), T)
            .await
            .is_ok_and(|(o, _)| o.max == 50)
    })
    .await;
    // (Topics are copied every 5 s.)
    weir_tests::eventually_for(
        "the slave has the topic",
        Duration::from_secs(20),
        async || s.pull("probe", "Replicated", 0, 0, 0).await.is_ok(),
    )
    .await;
    let d = s.drain("slave-readers", "Replicated", 0, 0).await;
    let keys: Vec<String> = d.msgs.iter().map(|m| m.key().to_owned()).collect();
    let want: Vec<String> = (0..50).map(|i| format!("r{i}")).collect();
    assert_eq!(keys, want);

    // The HA port takes TLS only, like the client port.
    let info = Admin::new(client(&master.namesrv(), Some(&pki.ca)))
        .cluster()
        .await
        .expect("cluster info over TLS");
    let ha = info
        .brokers
        .iter()
        .flat_map(|b| &b.status)
        .find_map(|(id, s)| (*id == 0).then(|| s.ha_addr.clone()).flatten())
        .expect("the master reports its HA address");
    let plain = Connection::connect(&ha, Arc::new(NoHandler), ConnConfig::default(), T)
        .await
        .expect("TCP connects");
    let e = plain
        .call(&offsets_req("Replicated"), Bytes::new(), T)
        .await
        .expect_err("plaintext refused on the HA port");
    assert!(e.to_string().contains("TLS connections only"), "{e}");
    slave.shutdown().await.expect("slave stops");
}
