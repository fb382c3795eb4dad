//! What a broker knows of a message's delivery (`GetMessageTrail`): the groups with an
//! offset on its queue, past it or not, and their copies of it found by the id they carry
//! (`ORIGIN_MESSAGE_ID`, indexed like a key): a retry waiting for its delay, a retry
//! stored (consumed or not), a dead letter; kept across a restart.

use crate::common::{T, env_with, eventually, send};
use bytes::Bytes;
use weir_protocol::MessageId;
use weir_protocol::admin::{CopyKind, GetMessageTrail, MessageTrail};
use weir_protocol::broker::{ConsumerSendMsgBack, CreateTopic, UpdateConsumerOffset};
use weir_protocol::route::{TopicConfig, perm};
use weir_protocol::{Connection, ErrorCode};

async fn commit(conn: &Connection, group: &str, topic: &str, queue_id: u32, offset: u64) {
    let req = UpdateConsumerOffset {
        group: group.into(),
        topic: topic.into(),
        queue_id,
        offset,
    };
    conn.call(&req, Bytes::new(), T).await.unwrap();
}

async fn send_back(conn: &Connection, group: &str, msg_id: &str, delay_level: i32) {
    let id: MessageId = msg_id.parse().unwrap();
    let req = ConsumerSendMsgBack {
        group: group.into(),
        commit_log_offset: id.offset,
        delay_level,
        max_reconsume_times: 16,
    };
    conn.call(&req, Bytes::new(), T).await.unwrap();
}

async fn trail(conn: &Connection, msg_id: &str, max_groups: u32) -> MessageTrail {
    let req = GetMessageTrail {
        topic: "Trail".into(),
        queue_id: 1,
        queue_offset: 1,
        origin_msg_id: msg_id.into(),
        max_groups,
    };
    conn.call(&req, Bytes::new(), T).await.unwrap().0
}

fn kinds(t: &MessageTrail, group: &str) -> Vec<CopyKind> {
    let g = t.groups.iter().find(|g| g.group == group).unwrap();
    let mut k: Vec<CopyKind> = g.copies.iter().map(|c| c.kind).collect();
    k.sort_by_key(|k| k.as_str());
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trail_names_the_groups_on_the_queue_and_their_copies() {
    // Level 1 comes due at once; level 2 waits for an hour.
    let mut env = env_with(|c| c.delay_levels = "1ms 1h".into()).await;
    let conn = env.client().await;
    let topic = CreateTopic {
        topic: TopicConfig {
            name: "Trail".into(),
            read_queues: 2,
            write_queues: 2,
            perm: perm::READ_WRITE,
        },
    };
    conn.call(&topic, Bytes::new(), T).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (r, _) = conn
            .call(&send("Trail", 1, "", "k"), Bytes::from_static(b"x"), T)
            .await
            .unwrap();
        ids.push(r.msg_id);
    }
    let msg = &ids[1];
    commit(&conn, "done", "Trail", 1, 2).await;
    commit(&conn, "behind", "Trail", 1, 1).await;
    commit(&conn, "elsewhere", "Trail", 0, 5).await;
    send_back(&conn, "done", msg, 1).await;
    send_back(&conn, "done", msg, -1).await;
    send_back(&conn, "behind", msg, 2).await;
    // Another message's copy is not this one's.
    send_back(&conn, "done", &ids[0], -1).await;

    let mut t = MessageTrail::default();
    eventually("the due retry is in the group's retry topic", async || {
        t = trail(&conn, msg, 100).await;
        kinds(&t, "done") == [CopyKind::DeadLetter, CopyKind::Retry]
    })
    .await;
    let names: Vec<&str> = t.groups.iter().map(|g| g.group.as_str()).collect();
    assert_eq!(names, ["behind", "done"], "only the groups on its queue");
    assert_eq!(t.more_groups, 0);
    assert_eq!(t.queue_max_offset, 3);
    let (behind, done) = (&t.groups[0], &t.groups[1]);
    assert!(!behind.past(1) && done.past(1));
    assert_eq!(kinds(&t, "behind"), [CopyKind::RetryWaiting]);
    assert_eq!(behind.copies[0].topic, "%SCHEDULE%");
    let retry = done
        .copies
        .iter()
        .find(|c| c.kind == CopyKind::Retry)
        .unwrap();
    assert_eq!(
        (retry.topic.as_str(), retry.reconsume_times),
        ("%RETRY%done", 1)
    );
    assert_eq!(retry.consumed, None, "no offset on the retry queue yet");
    let dead = done
        .copies
        .iter()
        .find(|c| c.kind == CopyKind::DeadLetter)
        .unwrap();
    assert_eq!(dead.topic, "%DLQ%done");

    // The group consumes the retry.
    commit(
        &conn,
        "done",
        "%RETRY%done",
        retry.queue_id,
        retry.queue_offset + 1,
    )
    .await;
    let t = trail(&conn, msg, 1).await;
    assert_eq!(t.groups.len(), 1);
    assert_eq!(t.more_groups, 1, "capped at max_groups");
    assert_eq!(t.groups[0].group, "behind");
    let t = trail(&conn, msg, 100).await;
    let done = &t.groups[1];
    let retry = done
        .copies
        .iter()
        .find(|c| c.kind == CopyKind::Retry)
        .unwrap();
    assert_eq!(retry.consumed, Some(true));

    // Copies stay findable after a restart.
    drop(conn);
    env.restart().await;
    let conn = env.client().await;
    let t = trail(&conn, msg, 100).await;
    assert!(kinds(&t, "done").contains(&CopyKind::DeadLetter), "{t:?}");

    // A trail without an id is refused.
    crate::common::expect_error(
        &conn,
        &GetMessageTrail {
            topic: "Trail".into(),
            queue_id: 1,
            queue_offset: 1,
            origin_msg_id: String::new(),
            max_groups: 10,
        },
        Bytes::new(),
        ErrorCode::InvalidParameter,
        "id",
    )
    .await;
}
