//! Master/slave replication at the broker: a slave learns its master from the name server,
//! copies its log byte for byte and its topics and offsets, serves reads and refuses
//! writes; a sync master acknowledges once the slave has the bytes, and says so when no
//! slave can; a slave whose log differs refuses to serve.

use crate::common::{T, broker_config, connect, drain, eventually, expect_error, send};

use bytes::Bytes;
use weir_broker::RunningBroker;
use weir_protocol::ErrorCode;
use weir_protocol::broker::{SendResult, SendStatus, UpdateConsumerOffset};
use weir_protocol::ha::BrokerRole;

struct Pair {
    ns: weir_namesrv::RunningNameServer,
    master: Option<RunningBroker>,
    slave: Option<RunningBroker>,
    m_dir: tempfile::TempDir,
    s_dir: tempfile::TempDir,
}

async fn namesrv() -> weir_namesrv::RunningNameServer {
    weir_namesrv::start(weir_namesrv::NamesrvConfig {
        listen: "127.0.0.1:0".into(),
        broker_expiry_ms: 120_000,
        scan_interval_ms: 50,
        ..Default::default()
    })
    .await
    .unwrap()
}

fn master_config(dir: &std::path::Path, ns: &str, role: BrokerRole) -> weir_broker::BrokerConfig {
    let mut c = broker_config(dir, ns);
    c.role = role;
    c.ha_listen = Some("127.0.0.1:0".into());
    c.register_interval_ms = 200;
    c.slave_ack_timeout_ms = 1_000;
    c
}

fn slave_config(dir: &std::path::Path, ns: &str) -> weir_broker::BrokerConfig {
    let mut c = broker_config(dir, ns);
    c.role = BrokerRole::Slave;
    c.broker_id = 1;
    c.register_interval_ms = 200;
    c
}

async fn pair(role: BrokerRole) -> Pair {
    let ns = namesrv().await;
    let (m_dir, s_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let addr = ns.local_addr().to_string();
    let master = weir_broker::start(master_config(m_dir.path(), &addr, role))
        .await
        .unwrap();
    let slave = weir_broker::start(slave_config(s_dir.path(), &addr))
        .await
        .unwrap();
    Pair {
        ns,
        master: Some(master),
        slave: Some(slave),
        m_dir,
        s_dir,
    }
}

impl Pair {
    fn master(&self) -> &RunningBroker {
        self.master.as_ref().unwrap()
    }
    fn slave(&self) -> &RunningBroker {
        self.slave.as_ref().unwrap()
    }
    async fn caught_up(&self) {
        let (m, s) = (self.master().broker(), self.slave().broker());
        eventually("the slave has the master's log", async || {
            s.store().commit_log_max_offset() == m.store().commit_log_max_offset()
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_slave_copies_the_log_serves_reads_and_refuses_writes() {
    let p = pair(BrokerRole::SyncMaster).await;
    let m = connect(&p.master().local_addr().to_string()).await;
    eventually("the slave connects", async || {
        p.master().broker().ha_status().connected == 1
    })
    .await;
    for i in 0..200u32 {
        let (r, _): (SendResult, _) = m
            .call(
                &send("Orders", i % 4, "", &format!("k{i}")),
                Bytes::from(format!("m{i}")),
                T,
            )
            .await
            .unwrap();
        // Acknowledged only once the slave has it.
        assert_eq!(r.status, SendStatus::Ok);
    }
    p.caught_up().await;
    // The same bytes at the same offsets.
    let (ms, ss) = (p.master().broker().store(), p.slave().broker().store());
    assert_eq!(
        ms.read_log(0, 1 << 20).unwrap(),
        ss.read_log(0, 1 << 20).unwrap()
    );
    // Reads from the slave; topics and offsets follow the master.
    let s = connect(&p.slave().local_addr().to_string()).await;
    let commit = UpdateConsumerOffset {
        group: "cg".into(),
        topic: "Orders".into(),
        queue_id: 1,
        offset: 7,
    };
    m.call(&commit, Bytes::new(), T).await.unwrap();
    eventually("topics and offsets copied", async || {
        p.slave()
            .broker()
            .store()
            .consumer_offsets()
            .query("cg", "Orders", 1)
            == Some(7)
    })
    .await;
    let on_slave = drain(&s, "Orders", 1, "*").await;
    assert_eq!(on_slave, drain(&m, "Orders", 1, "*").await);
    assert_eq!(on_slave.len(), 50);
    expect_error(
        &s,
        &send("Orders", 0, "", "k"),
        Bytes::from_static(b"x"),
        ErrorCode::NotMaster,
        "slave",
    )
    .await;
    // Lag is reported, and nil once caught up.
    let st = p.slave().broker().ha_status();
    assert_eq!(
        (st.role, st.lag_bytes, st.connected),
        (BrokerRole::Slave, 0, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_master_without_its_slave_says_so_and_the_slave_resumes() {
    let mut p = pair(BrokerRole::SyncMaster).await;
    let m = connect(&p.master().local_addr().to_string()).await;
    eventually("the slave connects", async || {
        p.master().broker().ha_status().connected == 1
    })
    .await;
    m.call(&send("T", 0, "", "a"), Bytes::from_static(b"a"), T)
        .await
        .unwrap();
    p.slave.take().unwrap().shutdown().await.unwrap();
    eventually("the slave is gone", async || {
        p.master().broker().ha_status().connected == 0
    })
    .await;
    let (r, _): (SendResult, _) = m
        .call(&send("T", 0, "", "b"), Bytes::from_static(b"b"), T)
        .await
        .unwrap();
    assert_eq!(r.status, SendStatus::SlaveNotAvailable);
    // Restarted on its folder, it resumes from its own end.
    let addr = p.ns.local_addr().to_string();
    p.slave = Some(
        weir_broker::start(slave_config(p.s_dir.path(), &addr))
            .await
            .unwrap(),
    );
    p.caught_up().await;
    let (r, _): (SendResult, _) = m
        .call(&send("T", 0, "", "c"), Bytes::from_static(b"c"), T)
        .await
        .unwrap();
    assert_eq!(r.status, SendStatus::Ok);
    p.caught_up().await;
    let s = connect(&p.slave().local_addr().to_string()).await;
    assert_eq!(drain(&s, "T", 0, "*").await, vec!["a", "b", "c"]);
    let _ = &p.m_dir;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_whose_log_differs_refuses_to_serve() {
    let ns = namesrv().await;
    let addr = ns.local_addr().to_string();
    let (m_dir, s_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // The would-be slave once took writes of its own (as a master of another life).
    {
        let mut c = broker_config(s_dir.path(), "");
        c.broker_name = "elsewhere".into();
        let other = weir_broker::start(c).await.unwrap();
        let o = connect(&other.local_addr().to_string()).await;
        for i in 0..5 {
            o.call(
                &send("T", 0, "", &format!("x{i}")),
                Bytes::from_static(b"theirs"),
                T,
            )
            .await
            .unwrap();
        }
        other.shutdown().await.unwrap();
    }
    let master = weir_broker::start(master_config(m_dir.path(), &addr, BrokerRole::AsyncMaster))
        .await
        .unwrap();
    let m = connect(&master.local_addr().to_string()).await;
    for i in 0..20 {
        m.call(
            &send("T", 0, "", &format!("m{i}")),
            Bytes::from_static(b"mine, longer"),
            T,
        )
        .await
        .unwrap();
    }
    let slave = weir_broker::start(slave_config(s_dir.path(), &addr))
        .await
        .unwrap();
    eventually("the slave finds out", async || {
        slave.broker().ha_status().diverged.is_some()
    })
    .await;
    let s = connect(&slave.local_addr().to_string()).await;
    expect_error(
        &s,
        &crate::common::pull("T", 0, 0, "*", 0),
        Bytes::new(),
        ErrorCode::ReplicaDiverged,
        "differs",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_joining_a_backlog_of_many_chunks_catches_up_byte_for_byte() {
    // Several MiB of log before the slave exists: it is streamed whole chunks, many ahead
    // of its confirmations (the master batches only when less than a chunk waits).
    let ns = namesrv().await;
    let addr = ns.local_addr().to_string();
    let (m_dir, s_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master = weir_broker::start(master_config(m_dir.path(), &addr, BrokerRole::AsyncMaster))
        .await
        .unwrap();
    let m = connect(&master.local_addr().to_string()).await;
    let body = Bytes::from(vec![b'x'; 64 << 10]);
    for i in 0..96u32 {
        let (r, _): (SendResult, _) = m
            .call(
                &send("Backlog", i % 4, "", &format!("k{i}")),
                body.clone(),
                T,
            )
            .await
            .unwrap();
        assert_eq!(r.status, SendStatus::Ok);
    }
    let end = master.broker().store().commit_log_max_offset();
    assert!(end > 6 << 20, "{end}");
    let p = Pair {
        ns,
        master: Some(master),
        slave: Some(
            weir_broker::start(slave_config(s_dir.path(), &addr))
                .await
                .unwrap(),
        ),
        m_dir,
        s_dir,
    };
    p.caught_up().await;
    let (ms, ss) = (p.master().broker().store(), p.slave().broker().store());
    let mut at = 0;
    while at < end {
        let a = ms.read_log(at, 1 << 20).unwrap().unwrap();
        assert_eq!(
            Some(&a),
            ss.read_log(at, 1 << 20).unwrap().as_ref(),
            "bytes at {at}"
        );
        at += a.len() as u64;
    }
    let s = connect(&p.slave().local_addr().to_string()).await;
    for q in 0..4 {
        assert_eq!(drain(&s, "Backlog", q, "*").await.len(), 24);
    }
}

/// A peer on the HA port confirms sends only as a slave, and only for the bytes it was
/// streamed: otherwise a sync master would acknowledge sends that no slave has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_master_counts_no_confirmation_beyond_what_a_slave_was_streamed() {
    use weir_protocol::ha::{HaAck, HaHello, HaSync, HaWelcome};
    let ns = namesrv().await;
    let dir = tempfile::tempdir().unwrap();
    let master = weir_broker::start(master_config(
        dir.path(),
        &ns.local_addr().to_string(),
        BrokerRole::SyncMaster,
    ))
    .await
    .unwrap();
    let m = connect(&master.local_addr().to_string()).await;
    let ha = master.broker().ha_status().ha_addr.unwrap();
    let status = async |key: &str| {
        let (r, _): (SendResult, _) = m
            .call(&send("T", 0, "", key), Bytes::from_static(b"x"), T)
            .await
            .unwrap();
        r.status
    };
    assert_eq!(status("a").await, SendStatus::SlaveNotAvailable);
    // A peer that never said hello: its confirmation counts for nothing, and it goes.
    let stranger = connect(&ha).await;
    stranger
        .oneway(&HaAck { end: 1 << 40 }, Bytes::new())
        .await
        .unwrap();
    // A call after it is answered (or refused) only once the confirmation was handled.
    let metadata = stranger.call(&HaSync::default(), Bytes::new(), T).await;
    assert!(metadata.is_err(), "a stranger was given the metadata");
    assert_eq!(status("b").await, SendStatus::SlaveNotAvailable);
    eventually("the stranger's connection is closed", async || {
        stranger.is_closed()
    })
    .await;
    // A hello claiming the log without showing its last bytes is refused: what a slave
    // says it has counts as confirmed.
    let claim = HaHello {
        broker_name: master.broker().config().broker_name.clone(),
        broker_id: 1,
        end: master.broker().store().commit_log_max_offset(),
        tail: Vec::new(),
        epoch: 0,
    };
    let claimed = connect(&ha).await.call(&claim, Bytes::new(), T).await;
    assert!(
        matches!(&claimed, Err(weir_protocol::CallError::Remote { message, .. }) if message.contains("last bytes")),
        "{claimed:?}"
    );
    // A slave (by its hello) confirming past what it was streamed: the same.
    let fake = connect(&ha).await;
    let hello = HaHello {
        broker_name: master.broker().config().broker_name.clone(),
        broker_id: 1,
        end: 0,
        tail: Vec::new(),
        epoch: 0,
    };
    let (_, _): (HaWelcome, _) = fake.call(&hello, Bytes::new(), T).await.unwrap();
    // A second hello on the same connection does not start a second stream.
    let again = fake.call(&hello, Bytes::new(), T).await;
    assert!(again.is_err(), "a second hello was taken: {again:?}");
    // Offsets a slave gives back count only for this master's queues, and never past a
    // queue's end (a consumer would skip what comes).
    let rows = vec![
        ("cg".to_owned(), "T".to_owned(), 0, 1 << 60),
        ("cg".to_owned(), "T".to_owned(), 1_000, 1),
        ("cg".to_owned(), "NoSuchTopic".to_owned(), 0, 1),
        ("bad group".to_owned(), "T".to_owned(), 0, 1),
    ];
    fake.call(
        &HaSync {
            offsets: rows,
            after: None,
        },
        Bytes::new(),
        T,
    )
    .await
    .unwrap();
    let offsets = master.broker().store().consumer_offsets();
    assert_eq!(offsets.query("cg", "T", 0), Some(2));
    assert_eq!(offsets.query("cg", "T", 1_000), None);
    assert_eq!(offsets.query("cg", "NoSuchTopic", 0), None);
    assert_eq!(offsets.query("bad group", "T", 0), None);
    let waiting = {
        let m = m.clone();
        tokio::spawn(async move {
            let (r, _): (SendResult, _) = m
                .call(&send("T", 0, "", "c"), Bytes::from_static(b"x"), T)
                .await
                .unwrap();
            r.status
        })
    };
    eventually("the send is stored", async || {
        master.broker().store().max_offset("T", 0) == 3
    })
    .await;
    fake.oneway(&HaAck { end: 1 << 40 }, Bytes::new())
        .await
        .unwrap();
    eventually("the fake slave's connection is closed", async || {
        fake.is_closed()
    })
    .await;
    // Not confirmed: it waited for a slave that never had it.
    assert_ne!(waiting.await.unwrap(), SendStatus::Ok);
    drop(ns);
}

/// With a `cluster_secret`, a master takes a slave only when its hello is signed with it,
/// and a slave configured with it signs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_cluster_secret_a_master_takes_only_slaves_that_sign_with_it() {
    use std::sync::Arc;
    use weir_protocol::auth::Credentials;
    use weir_protocol::ha::{HaHello, HaWelcome};
    use weir_protocol::{CallError, ConnConfig, Connection, NoHandler};
    let ns = namesrv().await;
    let addr = ns.local_addr().to_string();
    let (m_dir, s_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut mc = master_config(m_dir.path(), &addr, BrokerRole::SyncMaster);
    mc.cluster_secret = Some("right".into());
    let master = weir_broker::start(mc).await.unwrap();
    let ha = master.broker().ha_status().ha_addr.unwrap();
    let hello = HaHello {
        broker_name: master.broker().config().broker_name.clone(),
        broker_id: 1,
        end: 0,
        tail: Vec::new(),
        epoch: 0,
    };
    let hello_with = async |secret: Option<&str>| {
        let c = Connection::connect(&ha, Arc::new(NoHandler), ConnConfig::default(), T)
            .await
            .unwrap();
        if let Some(s) = secret {
            c.sign_with(Arc::new(Credentials::new("broker:b", s).unwrap()));
        }
        let welcome = c
            .call(&hello, Bytes::new(), T)
            .await
            .map(|(w, _): (HaWelcome, _)| w);
        (welcome, c)
    };
    for secret in [None, Some("wrong")] {
        match hello_with(secret).await {
            (Err(CallError::Remote { code, message }), c) => {
                assert_eq!(code, ErrorCode::AuthFailed, "{message}");
                assert!(message.contains("cluster_secret"), "{message}");
                // A refused peer holds no HA connection (nor one of its slots).
                tokio::time::timeout(T, c.closed())
                    .await
                    .expect("a refused peer's connection is closed");
            }
            (other, _) => panic!("a hello signed with {secret:?} was taken: {other:?}"),
        }
    }
    // Nor does one that asks for anything else first.
    let c = Connection::connect(&ha, Arc::new(NoHandler), ConnConfig::default(), T)
        .await
        .unwrap();
    let sync = weir_protocol::ha::HaSync::default();
    assert!(c.call(&sync, Bytes::new(), T).await.is_err());
    tokio::time::timeout(T, c.closed())
        .await
        .expect("a peer that asked before its hello is closed");
    assert_eq!(master.broker().ha_status().connected, 0);
    assert!(hello_with(Some("right")).await.0.is_ok());
    // A slave with the secret signs its hello, and follows.
    let mut sc = slave_config(s_dir.path(), &addr);
    sc.cluster_secret = Some("right".into());
    sc.master_ha_addr = Some(ha.clone());
    let slave = weir_broker::start(sc).await.unwrap();
    eventually("the signing slave follows", async || {
        slave.broker().ha_status().connected == 1
    })
    .await;
    slave.shutdown().await.unwrap();
    master.shutdown().await.unwrap();
}

/// A master's consumer offsets reach its slave page by page, however many there are: as
/// one answer, 90,000 offsets of long group names were over a frame's 16 MiB, and the
/// slave copied no metadata at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_copies_more_offsets_than_fit_a_frame() {
    let ns = namesrv().await;
    let addr = ns.local_addr().to_string();
    let (m_dir, s_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let master = weir_broker::start(master_config(m_dir.path(), &addr, BrokerRole::AsyncMaster))
        .await
        .unwrap();
    let offsets = master.broker().store().consumer_offsets();
    let rows = 90_000u64;
    for i in 0..rows {
        let group = format!("{i:0>200}");
        offsets.commit(&group, "Orders", (i % 8) as u32, i);
    }
    let mut sc = slave_config(s_dir.path(), &addr);
    sc.master_ha_addr = master.broker().ha_status().ha_addr;
    let slave = weir_broker::start(sc).await.unwrap();
    let copied = slave.broker().store().consumer_offsets();
    eventually("every offset is on the slave", async || {
        copied.all().len() as u64 == rows
    })
    .await;
    let last = format!("{:0>200}", rows - 1);
    assert_eq!(
        copied.query(&last, "Orders", ((rows - 1) % 8) as u32),
        Some(rows - 1)
    );
    slave.shutdown().await.unwrap();
    master.shutdown().await.unwrap();
}
