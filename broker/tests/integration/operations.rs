//! Operators' requests against a real broker over the wire: resetting and deleting a group
//! (refused while it has live members), deleting and shrinking topics safely, statistics
//! (with the broker's version and start time).

use crate::common::{T, env, expect_error, send};
use bytes::Bytes;
use weir_protocol::ErrorCode;
use weir_protocol::admin::{DeleteGroup, GetBrokerStats, ResetOffset, ResetTarget};
use weir_protocol::broker::{
    ConsumerData, CreateTopic, DeleteTopic, GetTopicStats, Heartbeat, MessageModel,
    QueryConsumerOffset, UnregisterClient, UpdateConsumerOffset,
};
use weir_protocol::route::{TopicConfig, perm};

fn member(group: &str) -> Heartbeat {
    Heartbeat {
        client_id: "c1".into(),
        producer_groups: Vec::new(),
        consumers: vec![ConsumerData {
            group: group.into(),
            model: MessageModel::Clustering,
            subscriptions: vec![("Ops".into(), "*".into())],
        }],
    }
}

fn topic(read: u32, write: u32) -> CreateTopic {
    CreateTopic {
        topic: TopicConfig {
            name: "Ops".into(),
            read_queues: read,
            write_queues: write,
            perm: perm::READ_WRITE,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_operations_are_refused_while_members_live() {
    let env = env().await;
    let conn = env.client().await;
    conn.call(&topic(2, 2), Bytes::new(), T).await.unwrap();
    for _ in 0..3 {
        conn.call(&send("Ops", 1, "", "k"), Bytes::from_static(b"x"), T)
            .await
            .unwrap();
    }
    let commit = UpdateConsumerOffset {
        group: "g".into(),
        topic: "Ops".into(),
        queue_id: 1,
        offset: 3,
    };
    conn.call(&commit, Bytes::new(), T).await.unwrap();
    conn.call(&member("g"), Bytes::new(), T).await.unwrap();

    let reset = |force| ResetOffset {
        group: "g".into(),
        topic: "Ops".into(),
        to: ResetTarget::Earliest,
        force,
    };
    expect_error(
        &conn,
        &reset(false),
        Bytes::new(),
        ErrorCode::GroupHasMembers,
        "c1",
    )
    .await;
    let del = DeleteGroup { group: "g".into() };
    expect_error(
        &conn,
        &del,
        Bytes::new(),
        ErrorCode::GroupHasMembers,
        "stop its consumers",
    )
    .await;
    let (r, _) = conn.call(&reset(true), Bytes::new(), T).await.unwrap();
    assert_eq!(r.queues.len(), 2);
    assert_eq!((r.queues[1].old, r.queues[1].new), (Some(3), 0));
    assert_eq!((r.queues[0].old, r.queues[0].new), (None, 0));
    let query = QueryConsumerOffset {
        group: "g".into(),
        topic: "Ops".into(),
        queue_id: 1,
    };
    assert_eq!(
        conn.call(&query, Bytes::new(), T).await.unwrap().0.offset,
        Some(0)
    );

    conn.call(&UnregisterClient::whole("c1"), Bytes::new(), T)
        .await
        .unwrap();
    let (d, _) = conn.call(&del, Bytes::new(), T).await.unwrap();
    assert_eq!(d.offsets_removed, 2);
    assert!(d.retry_topic_deleted, "the heartbeat created %RETRY%g");
    assert_eq!(
        conn.call(&query, Bytes::new(), T).await.unwrap().0.offset,
        None
    );
    expect_error(
        &conn,
        &GetTopicStats {
            topic: "%RETRY%g".into(),
        },
        Bytes::new(),
        ErrorCode::TopicNotExist,
        "does not exist",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_shrink_and_go_safely() {
    let env = env().await;
    let conn = env.client().await;
    conn.call(&topic(4, 4), Bytes::new(), T).await.unwrap();
    expect_error(
        &conn,
        &topic(2, 4),
        Bytes::new(),
        ErrorCode::InvalidParameter,
        "could not be consumed",
    )
    .await;
    conn.call(&send("Ops", 2, "", "k"), Bytes::from_static(b"x"), T)
        .await
        .unwrap();
    let stats = GetTopicStats {
        topic: "Ops".into(),
    };
    // Queue 2 holds a message no group read: kept readable; queue 3 (empty) goes.
    conn.call(&topic(1, 1), Bytes::new(), T).await.unwrap();
    let (s, _) = conn.call(&stats, Bytes::new(), T).await.unwrap();
    assert_eq!((s.config.read_queues, s.config.write_queues), (3, 1));
    // A group read it all: the queue goes on the next shrink.
    let commit = UpdateConsumerOffset {
        group: "g".into(),
        topic: "Ops".into(),
        queue_id: 2,
        offset: 1,
    };
    conn.call(&commit, Bytes::new(), T).await.unwrap();
    conn.call(&topic(1, 1), Bytes::new(), T).await.unwrap();
    let (s, _) = conn.call(&stats, Bytes::new(), T).await.unwrap();
    assert_eq!((s.config.read_queues, s.config.write_queues), (1, 1));

    for own in ["RMQ_SYS_TRANS_HALF_TOPIC", "%SCHEDULE%"] {
        expect_error(
            &conn,
            &DeleteTopic { topic: own.into() },
            Bytes::new(),
            ErrorCode::NoPermission,
            "broker's own",
        )
        .await;
    }
    conn.call(
        &DeleteTopic {
            topic: "Ops".into(),
        },
        Bytes::new(),
        T,
    )
    .await
    .unwrap();
    let query = QueryConsumerOffset {
        group: "g".into(),
        topic: "Ops".into(),
        queue_id: 2,
    };
    assert_eq!(
        conn.call(&query, Bytes::new(), T).await.unwrap().0.offset,
        None,
        "offsets go with the topic"
    );
    let (b, _) = conn.call(&GetBrokerStats, Bytes::new(), T).await.unwrap();
    assert_eq!((b.messages_in, b.bytes_in), (1, 1));
    assert!(b.connections >= 1, "{b:?}");
    assert_eq!(b.version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    assert!(
        b.started_at_ms.is_some_and(|t| t > 1_600_000_000_000),
        "{b:?}"
    );
}
