//! A message's delivery trail on the Messages page (`GET /api/messages/trail`) against a
//! real name server and broker: where it is stored, each group with an offset on its
//! queue consumed or pending, a group's dead letter of it, and what is not known.

use crate::common::{Console, Http};
use serde_json::json;
use weir_client::{Admin, ClientConfig, ClientInstance, MessageQueue, PullConsumer};
use weir_protocol::MessageId;
use weir_protocol::broker::ConsumerSendMsgBack;
use weir_tests::Env;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_shows_where_each_group_is_with_it() {
    let env = Env::start().await;
    let console = Console::start(&env.namesrv()).await;
    let mut http = Http::new(console.addr);
    http.open("/messages").await;
    http.create_topic("Trail", 1).await;
    let mut sent = Vec::new();
    for i in 0..3 {
        let r = http
            .post(
                "/api/topic/send",
                &json!({"topic": "Trail", "keys": [format!("t{i}")], "body": format!("<b>{i}</b>")}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        sent.push(r.json());
    }
    let msg = &sent[1];
    let (id, broker) = (
        msg["msg_id"].as_str().unwrap(),
        msg["broker"].as_str().unwrap(),
    );
    let offset = msg["queue_offset"].as_u64().unwrap();

    // Group "read" is past it, group "late" is not; "read" sent it to its dead letters.
    let client = ClientInstance::new(ClientConfig::new(env.namesrv())).unwrap();
    let mq = MessageQueue {
        topic: "Trail".into(),
        broker_name: broker.into(),
        queue_id: 0,
    };
    for (group, at) in [("read", offset + 1), ("late", offset)] {
        PullConsumer::new(group, client.clone())
            .commit_offset(&mq, at)
            .await
            .unwrap();
    }
    let back = ConsumerSendMsgBack {
        group: "read".into(),
        commit_log_offset: id.parse::<MessageId>().unwrap().offset,
        delay_level: -1,
        max_reconsume_times: 16,
    };
    let (dead, _) = env
        .client()
        .await
        .conn
        .call(&back, bytes::Bytes::new(), weir_tests::T)
        .await
        .unwrap();

    let r = http
        .get(&format!("/api/messages/trail?topic=Trail&id={id}"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let t = r.json();
    assert_eq!(t["requests"], 3);
    assert_eq!(t["known"], true);
    assert_eq!(t["message"]["body_text"], "<b>1</b>", "the body as data");
    let s = &t["stored"];
    assert_eq!(
        (&s["broker"], &s["queue"], &s["queue_offset"]),
        (&json!(broker), &json!(0), &json!(offset))
    );
    assert!(s["store_ts"].as_i64().unwrap() > 0);
    assert_eq!(t["queue_max_offset"], 3);
    let groups = t["groups"].as_array().unwrap();
    let names: Vec<&str> = groups
        .iter()
        .map(|g| g["group"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["late", "read"], "{t}");
    assert_eq!(groups[0]["state"], "pending");
    assert_eq!(groups[1]["state"], "consumed");
    assert_eq!(groups[0]["copies"], json!([]));
    let copies = groups[1]["copies"].as_array().unwrap();
    assert_eq!(copies.len(), 1, "{t}");
    assert_eq!(copies[0]["kind"], "dead-letter");
    assert_eq!(copies[0]["topic"], "%DLQ%read");
    assert_eq!(copies[0]["msg_id"], dead.msg_id.as_str());
    let unknown = t["unknown"].to_string();
    assert!(unknown.contains("broadcasting"), "{unknown}");

    // The dead letter's own trail is its original's.
    let r = http
        .get(&format!("/api/messages/trail?id={}", dead.msg_id))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["message"]["topic"], "%DLQ%read");

    // Errors name their cause.
    let r = http
        .get(&format!("/api/messages/trail?topic=Other&id={id}"))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("of topic Trail")
    );
    let r = http.get("/api/messages/trail?id=nonsense").await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = http.get("/api/messages/trail?id=").await;
    assert_eq!(r.status, 400, "{}", r.body);

    // The broker reports what the Admin API hands out.
    let trail = Admin::new(client).message_trail(id, 10).await.unwrap();
    assert_eq!(trail.message.queue_offset, offset);
    assert_eq!(trail.known.unwrap().groups.len(), 2);
    console.stop().await;
}
