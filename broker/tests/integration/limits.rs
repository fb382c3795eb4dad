//! What one client can make the broker hold is bounded, and requests for things that
//! cannot exist are refused: client ids and groups per connection, topics (retry topics
//! included), offsets for missing topics or invalid groups. And a broker with 50,000
//! topics stays routable, and its group summary stays an answer of bounded size.

use crate::common::{T, connect, env_with, eventually, expect_error};

use bytes::Bytes;
use weir_protocol::ErrorCode;
use weir_protocol::broker::{
    ConsumerData, Heartbeat, MessageModel, PullMessage, UpdateConsumerOffset,
};
use weir_protocol::route::{GetRoute, perm};

fn heartbeat(client: &str, groups: &[&str]) -> Heartbeat {
    Heartbeat {
        client_id: client.into(),
        producer_groups: vec![],
        consumers: groups
            .iter()
            .map(|g| ConsumerData {
                group: (*g).into(),
                model: MessageModel::Clustering,
                subscriptions: vec![("T".into(), "*".into())],
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_cannot_register_clients_groups_or_retry_topics_without_bound() {
    let env = env_with(|c| {
        c.limits.max_clients_per_connection = 4;
        c.limits.max_groups_per_client = 8;
        c.limits.max_topics = 20;
        c.limits.topic_room_kept_from_heartbeats = 6;
    })
    .await;
    let conn = env.client().await;
    for i in 0..4 {
        conn.call(&heartbeat(&format!("c{i}"), &["g"]), Bytes::new(), T)
            .await
            .unwrap();
    }
    expect_error(
        &conn,
        &heartbeat("c4", &["g"]),
        Bytes::new(),
        ErrorCode::SystemBusy,
        "limits.max_clients_per_connection",
    )
    .await;
    // A known client id keeps heartbeating.
    conn.call(&heartbeat("c0", &["g"]), Bytes::new(), T)
        .await
        .unwrap();
    // Another connection is not affected.
    let other = env.client().await;
    other
        .call(&heartbeat("d0", &["g"]), Bytes::new(), T)
        .await
        .unwrap();

    let groups: Vec<String> = (0..9).map(|i| format!("grp{i}")).collect();
    let refs: Vec<&str> = groups.iter().map(String::as_str).collect();
    expect_error(
        &other,
        &heartbeat("d0", &refs),
        Bytes::new(),
        ErrorCode::SystemBusy,
        "limits.max_groups_per_client",
    )
    .await;

    // Each clustering group gets a %RETRY% topic, until only the room kept from
    // heartbeats is left.
    for round in 0..5 {
        let groups: Vec<String> = (0..8).map(|i| format!("r{round}-{i}")).collect();
        let refs: Vec<&str> = groups.iter().map(String::as_str).collect();
        other
            .call(&heartbeat("d0", &refs), Bytes::new(), T)
            .await
            .unwrap();
    }
    let topics = env.broker().broker().store().queues().len();
    let count = weir_protocol::route::GetAllTopics;
    let (list, _) = conn.call(&count, Bytes::new(), T).await.unwrap();
    // (Filled to the limit: the groups of one heartbeat are created together, as many
    // as there is room for.)
    assert_eq!(list.topics.len(), 14, "{:?}", list.topics);
    assert!(topics <= 14);
    // The room kept goes to other topics (auto-created ones here), and past max_topics
    // they are refused.
    let mut n = 0;
    let refused = loop {
        let r = conn
            .call(
                &crate::common::send(&format!("auto{n}"), 0, "", "k"),
                Bytes::from_static(b"x"),
                T,
            )
            .await;
        if let Err(e) = r {
            break e;
        }
        n += 1;
        assert!(n < 40);
    };
    assert_eq!(n, 6, "the room kept from heartbeats");
    assert!(refused.to_string().contains("max_topics"), "{refused}");
}

/// A client naming ever new groups cannot grow the offset table without bound: past
/// `limits.max_consumer_offsets` a commit that would add an entry is refused (by commit,
/// by pull, by reset), and the entries held go on moving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_offsets_stay_within_their_bound() {
    let env = env_with(|c| c.limits.max_consumer_offsets = 3).await;
    let conn = env.client().await;
    conn.call(
        &crate::common::send("T", 0, "", "k"),
        Bytes::from_static(b"x"),
        T,
    )
    .await
    .unwrap();
    let commit = |group: &str, queue_id, offset| UpdateConsumerOffset {
        group: group.into(),
        topic: "T".into(),
        queue_id,
        offset,
    };
    for q in 0..3 {
        conn.call(&commit("g1", q, 1), Bytes::new(), T)
            .await
            .unwrap();
    }
    expect_error(
        &conn,
        &commit("g2", 0, 1),
        Bytes::new(),
        ErrorCode::SystemBusy,
        "max_consumer_offsets",
    )
    .await;
    let pull_commit = PullMessage {
        commit_offset: Some(1),
        group: "g3".into(),
        ..crate::common::pull("T", 0, 0, "*", 0)
    };
    expect_error(
        &conn,
        &pull_commit,
        Bytes::new(),
        ErrorCode::SystemBusy,
        "max_consumer_offsets",
    )
    .await;
    // Held ones move.
    conn.call(&commit("g1", 0, 0), Bytes::new(), T)
        .await
        .unwrap();
    let offsets = env.broker().broker().store().consumer_offsets();
    assert_eq!(offsets.len(), 3);
    assert_eq!(offsets.query("g1", "T", 0), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_for_missing_topics_or_bad_groups_are_refused() {
    let env = env_with(|_| {}).await;
    let conn = env.client().await;
    conn.call(
        &crate::common::send("T", 0, "", "k"),
        Bytes::from_static(b"x"),
        T,
    )
    .await
    .unwrap();
    let commit = |group: &str, topic: &str, queue_id| UpdateConsumerOffset {
        group: group.into(),
        topic: topic.into(),
        queue_id,
        offset: 1,
    };
    expect_error(
        &conn,
        &commit("g", "Nope", 0),
        Bytes::new(),
        ErrorCode::TopicNotExist,
        "Nope",
    )
    .await;
    expect_error(
        &conn,
        &commit("bad group", "T", 0),
        Bytes::new(),
        ErrorCode::InvalidParameter,
        "group name",
    )
    .await;
    expect_error(
        &conn,
        &commit("g", "T", 99),
        Bytes::new(),
        ErrorCode::InvalidParameter,
        "queue 99",
    )
    .await;
    let pull_commit = PullMessage {
        commit_offset: Some(1),
        ..crate::common::pull("T", 0, 0, "*", 0)
    };
    let pull_commit = PullMessage {
        group: "bad group".into(),
        ..pull_commit
    };
    expect_error(
        &conn,
        &pull_commit,
        Bytes::new(),
        ErrorCode::InvalidParameter,
        "group name",
    )
    .await;
    conn.call(&commit("g", "T", 0), Bytes::new(), T)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_with_fifty_thousand_topics_registers_and_routes() {
    // The topic table is written before the broker starts: 50,000 creations one by one
    // would test the table's persistence, not registration.
    let env = env_with(|_| {}).await;
    let dir = env.dir.path().join("data");
    let mut env = env;
    let topics: Vec<serde_json::Value> = (0..50_000)
        .map(|i| {
            serde_json::json!({
                "name": format!("topic-{i:06}-{}", "x".repeat(24)),
                "read_queues": 8, "write_queues": 8, "perm": perm::READ_WRITE,
            })
        })
        .collect();
    let file = serde_json::json!({ "version": 1, "topics": topics });
    let old = env.broker.take().unwrap();
    old.shutdown().await.unwrap();
    std::fs::create_dir_all(dir.join("config")).unwrap();
    std::fs::write(
        dir.join("config").join("topics.json"),
        serde_json::to_vec(&file).unwrap(),
    )
    .unwrap();
    let config = crate::common::broker_config(env.dir.path(), &env.ns.local_addr().to_string());
    env.broker = Some(weir_broker::start(config).await.unwrap());
    let ns = connect(&env.ns.local_addr().to_string()).await;
    for name in [
        format!("topic-000000-{}", "x".repeat(24)),
        format!("topic-049999-{}", "x".repeat(24)),
    ] {
        eventually("route of a topic among 50,000", async || {
            ns.call(
                &GetRoute {
                    topic: name.clone(),
                },
                Bytes::new(),
                T,
            )
            .await
            .is_ok_and(|(r, _)| r.queues.first().is_some_and(|q| q.write_queues == 8))
        })
        .await;
    }
    // The whole list with queues, in one answer (over 2 MB: it travels as a body).
    let ((), body) = ns
        .call(&weir_protocol::route::GetTopicSummaries, Bytes::new(), T)
        .await
        .expect("topic summaries of 50,000 topics");
    assert!(body.len() > 1 << 20, "{} bytes", body.len());
    let all = weir_protocol::route::TopicSummaries::decode(&body).unwrap();
    let ours = all.topics.iter().filter(|t| t.name.starts_with("topic-"));
    assert_eq!(ours.clone().count(), 50_000);
    assert!(ours.into_iter().all(|t| t.queues[0].read_queues == 8));
}

/// Groups with long subscription lists cannot make the group summary an answer too large to
/// send: each lists its first 64 topics, and groups past the byte budget count in `more`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_summary_stays_within_its_byte_budget() {
    use weir_protocol::admin::{GetGroupSummaries, MAX_GROUP_SUMMARIES_BYTES, MAX_SUMMARY_TOPICS};
    let env = env_with(|_| {}).await;
    let conn = env.client().await;
    // 16 clients × 64 broadcasting groups (no retry topics), each group subscribing to 128
    // topics of 100-byte names: ~12 KiB of names a group, ~12 MiB in all.
    let topics: Vec<(String, String)> = (0..128)
        .map(|i| (format!("{i:0>100}"), "*".to_owned()))
        .collect();
    // Each client on a connection kept open (a closed one takes its clients along).
    let mut members = Vec::new();
    for c in 0..16 {
        let hb = Heartbeat {
            client_id: format!("wide-{c}"),
            producer_groups: vec![],
            consumers: (0..64)
                .map(|g| ConsumerData {
                    group: format!("wide-{c:02}-{g:02}"),
                    model: MessageModel::Broadcasting,
                    subscriptions: topics.clone(),
                })
                .collect(),
        };
        let member = env.client().await;
        member.call(&hb, Bytes::new(), T).await.unwrap();
        members.push(member);
    }
    let req = GetGroupSummaries {
        contains: "wide-".into(),
        limit: 0,
    };
    let ((), body) = conn.call(&req, Bytes::new(), T).await.unwrap();
    let answer = weir_protocol::admin::GroupSummaries::decode(&body).unwrap();
    let listed = answer.groups.len();
    assert!(
        listed > 0 && answer.more > 0,
        "{listed} listed, {} more",
        answer.more
    );
    assert_eq!(listed + answer.more as usize, 16 * 64);
    let names: usize = answer
        .groups
        .iter()
        .map(|g| g.subscriptions.iter().map(String::len).sum::<usize>())
        .sum();
    assert!(
        names <= MAX_GROUP_SUMMARIES_BYTES,
        "{names} bytes of topic names"
    );
    assert!(
        answer
            .groups
            .iter()
            .all(|g| g.subscriptions.len() == MAX_SUMMARY_TOPICS && g.members == 1),
        "{:?}",
        answer.groups.first()
    );
}

/// A family at its bound on requests in flight refuses more of its own as busy, naming
/// the bound, while the other families are served; refusals are counted, and the family
/// is served again once its requests end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_family_at_its_bound_refuses_its_own_and_serves_the_others() {
    use weir_broker::dispatch::Family;
    let env = env_with(|c| c.limits.inflight_pull = 2).await;
    let conn = env.client().await;
    let send = |key: &str| crate::common::send("Held", 0, "", key);
    conn.call(&send("k0"), Bytes::from_static(b"x"), T)
        .await
        .unwrap();
    // Pulls from the queue's end are held (long polling) until a message comes.
    let held: Vec<_> = (0..2)
        .map(|_| {
            let c = conn.clone();
            tokio::spawn(async move {
                c.call(
                    &crate::common::pull("Held", 0, 1, "*", 20_000),
                    Bytes::new(),
                    T,
                )
                .await
            })
        })
        .collect();
    let broker = env.broker().broker().clone();
    eventually("both pulls held", async || {
        broker.family_load(Family::Pull).0 == 2
    })
    .await;
    // A pull that would be held is refused; one that finds a message is answered.
    expect_error(
        &conn,
        &crate::common::pull("Held", 0, 1, "*", 20_000),
        Bytes::new(),
        ErrorCode::SystemBusy,
        "limits.inflight_pull",
    )
    .await;
    assert_eq!(
        broker.family_load(Family::Pull).1,
        1,
        "the refusal is counted"
    );
    let (found, _) = conn
        .call(
            &crate::common::pull("Held", 0, 0, "*", 20_000),
            Bytes::new(),
            T,
        )
        .await
        .unwrap();
    assert_eq!(found.status, weir_protocol::broker::PullStatus::Found);
    assert_eq!(broker.family_load(Family::Pull), (2, 1));
    // Sends are another family: served, and they release the held pulls.
    conn.call(&send("k1"), Bytes::from_static(b"y"), T)
        .await
        .unwrap();
    for h in held {
        let (pulled, _) = h.await.unwrap().unwrap();
        assert_eq!(pulled.status, weir_protocol::broker::PullStatus::Found);
    }
    eventually("the pulls ended", async || {
        broker.family_load(Family::Pull).0 == 0
    })
    .await;
    conn.call(&crate::common::pull("Held", 0, 0, "*", 0), Bytes::new(), T)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_pulls_are_shared_fairly_between_connections() {
    use weir_protocol::broker::PullStatus;
    let env = env_with(|c| c.limits.inflight_pull = 4).await;
    let heavy = env.client().await;
    let light = env.client().await;
    let send = |key: &str| crate::common::send("Held", 0, "", key);
    heavy
        .call(&send("k0"), Bytes::from_static(b"x"), T)
        .await
        .unwrap();
    let broker = env.broker().broker().clone();
    // One connection takes the whole bound with pulls held far longer than the calls'
    // timeout.
    let hold = |c: &weir_protocol::Connection| {
        let c = c.clone();
        tokio::spawn(async move {
            c.call(
                &crate::common::pull("Held", 0, 1, "*", 60_000),
                Bytes::new(),
                T,
            )
            .await
        })
    };
    let mut heavies: Vec<_> = (0..4).map(|_| hold(&heavy)).collect();
    eventually("the heavy connection's pulls held", async || {
        broker.held_pulls() == 4
    })
    .await;
    // Another connection's pulls take the place of the heavy one's, one each, until
    // both hold two: those ended answer at once, "no new message".
    let mut lights = Vec::new();
    for _ in 0..2 {
        lights.push(hold(&light));
        eventually("a held pull ended early", async || {
            heavies.iter().any(|h| h.is_finished())
        })
        .await;
        let i = heavies.iter().position(|h| h.is_finished()).unwrap();
        let (pulled, _) = heavies.swap_remove(i).await.unwrap().unwrap();
        assert_eq!(pulled.status, PullStatus::NoNewMessage);
        assert_eq!(pulled.next_offset, 1);
        eventually("the light connection's pull held", async || {
            broker.held_pulls() == 4
        })
        .await;
    }
    assert_eq!(broker.held_pulls_ended_early(), 2);
    // Even: neither may take more held pulls; what finds messages is still answered.
    let (found, _) = light
        .call(
            &crate::common::pull("Held", 0, 0, "*", 60_000),
            Bytes::new(),
            T,
        )
        .await
        .unwrap();
    assert_eq!(found.status, PullStatus::Found);
    for c in [&light, &heavy] {
        expect_error(
            c,
            &crate::common::pull("Held", 0, 1, "*", 60_000),
            Bytes::new(),
            ErrorCode::SystemBusy,
            "limits.inflight_pull",
        )
        .await;
    }
    assert_eq!(broker.held_pulls_ended_early(), 2);
    // A message answers every held pull.
    heavy
        .call(&send("k1"), Bytes::from_static(b"y"), T)
        .await
        .unwrap();
    for h in heavies.into_iter().chain(lights) {
        let (pulled, _) = h.await.unwrap().unwrap();
        assert_eq!(pulled.status, PullStatus::Found);
    }
}
