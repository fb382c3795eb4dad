//! Raw remoting frames against a name server and a broker: what a RocketMQ client sends,
//! byte for byte, and what it must get back.

use std::collections::HashMap;
use std::io::Write;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_remoting::codes::{request as rq, response as rs};
use weir_remoting::command::DEFAULT_MAX_FRAME;
use weir_remoting::message::{self, BatchEntry, MessageExt, encode_properties, sys_flag};
use weir_remoting::{RemotingCommand, SerializeType};
use weir_tests::{Env, Msg, T, eventually};

/// A RocketMQ client reduced to its frames.
struct Raw {
    stream: TcpStream,
    opaque: i32,
    /// Requests the server sent this client (rebalance notices, check-backs).
    pushed: Vec<RemotingCommand>,
}

impl Raw {
    async fn connect(addr: &str) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.expect("connect"),
            opaque: 0,
            pushed: Vec::new(),
        }
    }

    async fn read_frame(&mut self) -> std::io::Result<RemotingCommand> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).await?;
        let len = RemotingCommand::frame_len(len, DEFAULT_MAX_FRAME).expect("frame length");
        let mut buf = vec![0u8; len];
        self.stream.read_exact(&mut buf).await?;
        Ok(RemotingCommand::decode(Bytes::from(buf)).expect("a frame weir wrote"))
    }

    async fn send(&mut self, mut cmd: RemotingCommand) -> i32 {
        self.opaque += 1;
        cmd.opaque = self.opaque;
        let wire = cmd.to_bytes().expect("encode");
        self.stream.write_all(&wire).await.expect("write");
        cmd.opaque
    }

    /// Sends `cmd` and waits for its response.
    async fn call(&mut self, cmd: RemotingCommand) -> RemotingCommand {
        let opaque = self.send(cmd).await;
        tokio::time::timeout(T, async {
            loop {
                let f = self.read_frame().await.expect("read");
                if f.is_response() && f.opaque == opaque {
                    return f;
                }
                assert!(!f.is_response(), "a response to another request: {f:?}");
                self.pushed.push(f);
            }
        })
        .await
        .expect("answered in time")
    }
}

fn ok(r: &RemotingCommand) {
    assert_eq!(r.code, rs::SUCCESS, "{:?}", r.remark);
    assert!(r.is_response());
    assert_eq!(r.version, 407, "answers as RocketMQ 4.9.7");
}

/// A JSON body as text (compact, as RocketMQ's clients need it).
fn json(r: &RemotingCommand) -> String {
    String::from_utf8(r.body.to_vec()).expect("UTF-8 body")
}

fn heartbeat(client_id: &str, group: &str, topic: &str) -> RemotingCommand {
    let body = format!(
        r#"{{"clientID":"{client_id}","consumerDataSet":[{{"consumeFromWhere":"CONSUME_FROM_FIRST_OFFSET","consumeType":"CONSUME_PASSIVELY","groupName":"{group}","messageModel":"CLUSTERING","subscriptionDataSet":[{{"classFilterMode":false,"codeSet":[],"expressionType":"TAG","subString":"TagA || TagB","subVersion":1,"tagsSet":["TagA","TagB"],"topic":"{topic}"}}],"unitMode":false}}],"producerDataSet":[{{"groupName":"pg"}}]}}"#
    );
    RemotingCommand::request(rq::HEART_BEAT, 0).with_body(body.into_bytes())
}

fn send_v2(topic: &str, queue_id: u32, props: &str, body: &[u8], sys: i32) -> RemotingCommand {
    RemotingCommand::request(rq::SEND_MESSAGE_V2, 0)
        .with("a", "pg")
        .with("b", topic)
        .with("c", "TBW102")
        .with("d", 4)
        .with("e", queue_id)
        .with("f", sys)
        .with("g", 1_700_000_000_000i64)
        .with("h", 0)
        .with("i", props)
        .with("j", 0)
        .with("k", false)
        .with("m", false)
        .with_body(body.to_vec())
}

fn pull(group: &str, topic: &str, queue_id: u32, offset: u64) -> RemotingCommand {
    RemotingCommand::request(rq::PULL_MESSAGE, 0)
        .with("consumerGroup", group)
        .with("topic", topic)
        .with("queueId", queue_id)
        .with("queueOffset", offset)
        .with("maxMsgNums", 32)
        .with("sysFlag", 0)
        .with("commitOffset", 0)
        .with("suspendTimeoutMillis", 0)
        .with("subVersion", 1)
        .with("expressionType", "TAG")
}

fn props_of(m: &MessageExt) -> HashMap<String, String> {
    message::decode_properties(&m.properties)
        .into_iter()
        .collect()
}

#[tokio::test]
async fn the_name_server_answers_rocketmq_clients() {
    let env = Env::start().await;
    let mut ns = Raw::connect(&env.namesrv()).await;
    // The auto-create route RocketMQ producers copy for new topics.
    let broker_addr = env.broker().local_addr().to_string();
    let mut route = None;
    eventually("the broker registers TBW102", async || {
        let r = ns
            .call(RemotingCommand::request(rq::GET_ROUTEINFO_BY_TOPIC, 0).with("topic", "TBW102"))
            .await;
        let found = r.code == rs::SUCCESS;
        route = Some(r);
        found
    })
    .await;
    let route = route.expect("answered");
    ok(&route);
    let text = json(&route);
    assert!(
        text.contains(&format!(r#""brokerAddrs":{{"0":"{broker_addr}"}}"#)),
        "{text}"
    );
    assert!(text.contains(r#""perm":7"#), "{text}");
    // The same in the binary header encoding.
    let mut binary =
        RemotingCommand::request(rq::GET_ROUTEINFO_BY_TOPIC, 0).with("topic", "NoSuchTopic");
    binary.serialize_type = SerializeType::RocketMq;
    let missing = ns.call(binary).await;
    assert_eq!(missing.code, rs::TOPIC_NOT_EXIST);
    assert_eq!(missing.serialize_type, SerializeType::RocketMq);
    let info = ns
        .call(RemotingCommand::request(rq::GET_BROKER_CLUSTER_INFO, 0))
        .await;
    ok(&info);
    assert!(json(&info).contains(r#""clusterAddrTable":{"#));
    // Anything else: not supported, never a silent close.
    let other = ns
        .call(RemotingCommand::request(rq::PUT_KV_CONFIG, 0))
        .await;
    assert_eq!(other.code, rs::REQUEST_CODE_NOT_SUPPORTED);
}

#[tokio::test]
async fn a_rocketmq_producer_and_consumer_on_weir() {
    let env = Env::start().await;
    let client = env.client().await;
    client.create_topic("RT", 1).await;
    let mut c = Raw::connect(&env.broker().local_addr().to_string()).await;
    ok(&c.call(heartbeat("10.0.0.1@1", "cg", "RT")).await);

    // Send as a Java producer does (V2 header), with tag, keys, the producer's id, a property.
    let props = encode_properties([
        ("TAGS", "TagA"),
        ("KEYS", "k1 k2"),
        ("UNIQ_KEY", "0A0000010001"),
        ("WAIT", "true"),
        ("color", "red"),
    ]);
    let sent = c.call(send_v2("RT", 0, &props, b"hello", 0)).await;
    ok(&sent);
    let msg_id = sent.field("msgId").unwrap().to_owned();
    assert_eq!(msg_id.len(), 32, "an offsetMsgId: {msg_id}");
    assert_eq!(sent.num::<u64>("queueOffset").unwrap(), 0);
    assert_eq!(sent.field("MSG_REGION").unwrap(), "DefaultRegion");

    // A body over 4 KiB, compressed by the producer, is stored as it was written.
    let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(5));
    z.write_all(&big).unwrap();
    let zipped = z.finish().unwrap();
    let props2 = encode_properties([("TAGS", "TagB"), ("KEYS", "k3")]);
    ok(&c
        .call(send_v2("RT", 0, &props2, &zipped, sys_flag::COMPRESSED))
        .await);

    // weir's own client reads both, tag, keys and properties intact.
    let got = client.drain("wg", "RT", 0, 0).await;
    assert_eq!(got.msgs.len(), 2);
    let first = &got.msgs[0];
    assert_eq!(first.tag, "TagA");
    assert_eq!(first.keys, vec!["k1", "k2"]);
    let prop = |name: &str| {
        first
            .props
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(prop("color"), Some("red"));
    assert_eq!(prop("UNIQ_KEY"), Some("0A0000010001"));
    assert_eq!(first.body, b"hello");
    assert_eq!(got.msgs[1].body, big, "stored inflated");

    // And weir's message, pulled as a RocketMQ consumer pulls.
    client
        .send("RT", 0, &[Msg::new("wk").tag("TagB").prop("size", "L")])
        .await;
    // A new group: 0 on a young queue, whatever the client's consume-from-where (RocketMQ's
    // answer, so a consumer starting from the last offset gets a new topic's first
    // messages); an empty queue is young too.
    let query = |topic: &str| {
        RemotingCommand::request(rq::QUERY_CONSUMER_OFFSET, 0)
            .with("consumerGroup", "cg")
            .with("topic", topic)
            .with("queueId", 0)
    };
    client.create_topic("EmptyT", 1).await;
    for topic in ["RT", "EmptyT"] {
        let offset = c.call(query(topic)).await;
        ok(&offset);
        assert_eq!(offset.field("offset"), Ok("0"), "{topic}");
    }
    let pulled = c.call(pull("cg", "RT", 0, 0)).await;
    ok(&pulled);
    assert_eq!(pulled.num::<u64>("nextBeginOffset").unwrap(), 3);
    assert_eq!(pulled.num::<u64>("maxOffset").unwrap(), 3);
    let msgs = MessageExt::decode_all(&pulled.body).unwrap();
    assert_eq!(msgs.len(), 3);
    assert_eq!(msgs[0].offset_msg_id(), msg_id);
    let p0 = props_of(&msgs[0]);
    assert_eq!(p0.get("TAGS").map(String::as_str), Some("TagA"));
    assert_eq!(p0.get("KEYS").map(String::as_str), Some("k1 k2"));
    assert_eq!(&msgs[1].body[..], &big[..]);
    let p2 = props_of(&msgs[2]);
    assert_eq!(p2.get("KEYS").map(String::as_str), Some("wk"));
    assert_eq!(p2.get("size").map(String::as_str), Some("L"));
    assert_eq!(msgs[2].topic, "RT");

    // RocketMQ 5.x's lite pull consumer asks the same as LITE_PULL_MESSAGE (sysFlag 0x10).
    let mut lite = pull("cg", "RT", 0, 1).with("sysFlag", 0x10);
    lite.code = rq::LITE_PULL_MESSAGE;
    let lite = c.call(lite).await;
    ok(&lite);
    assert_eq!(lite.num::<u64>("nextBeginOffset").unwrap(), 3);
    assert_eq!(MessageExt::decode_all(&lite.body).unwrap().len(), 2);

    // Nothing more: PULL_NOT_FOUND; past the end: PULL_OFFSET_MOVED.
    let none = c.call(pull("cg", "RT", 0, 3)).await;
    assert_eq!(none.code, rs::PULL_NOT_FOUND);
    let moved = c.call(pull("cg", "RT", 0, 50)).await;
    assert_eq!(moved.code, rs::PULL_OFFSET_MOVED);
    assert_eq!(moved.num::<u64>("nextBeginOffset").unwrap(), 3);

    // Progress, committed one way as the client's offset store does.
    c.send(
        RemotingCommand::request(rq::UPDATE_CONSUMER_OFFSET, 0)
            .with("consumerGroup", "cg")
            .with("topic", "RT")
            .with("queueId", 0)
            .with("commitOffset", 3)
            .oneway(),
    )
    .await;
    eventually("the one-way commit lands", async || {
        client.committed("cg", "RT", 0).await == Some(3)
    })
    .await;
    let max = c
        .call(
            RemotingCommand::request(rq::GET_MAX_OFFSET, 0)
                .with("topic", "RT")
                .with("queueId", 0),
        )
        .await;
    assert_eq!(max.field("offset").unwrap(), "3");
    let members = c
        .call(
            RemotingCommand::request(rq::GET_CONSUMER_LIST_BY_GROUP, 0).with("consumerGroup", "cg"),
        )
        .await;
    ok(&members);
    assert!(json(&members).contains(r#""consumerIdList":["10.0.0.1@1"]"#));

    // A batch, as `MessageDecoder.encodeMessages` writes it: ids comma-separated.
    let entries: Vec<BatchEntry> = (0..3)
        .map(|i| BatchEntry {
            flag: 0,
            body: Bytes::from(format!("b{i}")),
            properties: encode_properties([("TAGS", "TagA"), ("KEYS", &format!("bk{i}")[..])]),
        })
        .collect();
    let batch = RemotingCommand::request(rq::SEND_BATCH_MESSAGE, 0)
        .with("a", "pg")
        .with("b", "RT")
        .with("e", 0)
        .with("g", 1)
        .with("m", true)
        .with_body(message::encode_batch(&entries).unwrap());
    let b = c.call(batch).await;
    ok(&b);
    assert_eq!(b.field("msgId").unwrap().split(',').count(), 3);
    assert_eq!(b.field("queueOffset").unwrap(), "3");
    // The C++ client's batch: SEND_MESSAGE with V1 names and `batch` "1" (RocketMQ's broker
    // routes on the header's batch flag, not on the code).
    let cpp_batch = RemotingCommand::request(rq::SEND_MESSAGE, 0)
        .with("producerGroup", "pg")
        .with("topic", "RT")
        .with("queueId", 0)
        .with("sysFlag", 0)
        .with("bornTimestamp", 1)
        .with("properties", encode_properties([("WAIT", "true")]))
        .with("batch", "1")
        .with_body(message::encode_batch(&entries).unwrap());
    let b = c.call(cpp_batch).await;
    ok(&b);
    assert_eq!(b.field("msgId").unwrap().split(',').count(), 3);
    assert_eq!(b.field("queueOffset").unwrap(), "6");

    // A code weir does not serve: REQUEST_CODE_NOT_SUPPORTED, and the connection stays.
    let other = c
        .call(RemotingCommand::request(rq::GET_ALL_TOPIC_CONFIG, 0))
        .await;
    assert_eq!(other.code, rs::REQUEST_CODE_NOT_SUPPORTED);
    ok(&c.call(heartbeat("10.0.0.1@1", "cg", "RT")).await);
}

#[tokio::test]
async fn topics_made_over_remoting_have_rocketmq_permissions() {
    let env = Env::start().await;
    let mut admin = Raw::connect(&env.broker().local_addr().to_string()).await;
    let create = |perm: &str| {
        RemotingCommand::request(rq::UPDATE_AND_CREATE_TOPIC, 0)
            .with("topic", "Perm")
            .with("readQueueNums", "2")
            .with("writeQueueNums", "2")
            .with("perm", perm)
    };
    for bad in ["-1", "16", "255"] {
        let r = admin.call(create(bad)).await;
        assert_eq!(r.code, rs::SYSTEM_ERROR, "perm {bad}: {:?}", r.remark);
        let why = r.remark.unwrap_or_default();
        assert!(why.contains("permission bits"), "perm {bad}: {why}");
    }
    // RocketMQ's system topics are named as such, not as %-prefixed ones.
    for system in ["TBW102", "RMQ_SYS_TRANS_HALF_TOPIC"] {
        let r = admin
            .call(RemotingCommand::request(rq::UPDATE_AND_CREATE_TOPIC, 0).with("topic", system))
            .await;
        assert_eq!(r.code, rs::NO_PERMISSION, "{system}: {:?}", r.remark);
        let why = r.remark.unwrap_or_default();
        assert!(why.contains("is a system topic"), "{system}: {why}");
    }
    let listed = || env.broker().broker().all_topics().topics;
    assert!(!listed().contains(&"Perm".to_owned()), "{:?}", listed());
    // Read only (4), then the same again: answered the same.
    ok(&admin.call(create("4")).await);
    ok(&admin.call(create("4")).await);
    assert!(listed().contains(&"Perm".to_owned()));
    let mut ns = Raw::connect(&env.namesrv()).await;
    eventually("the name servers route Perm read-only", async || {
        let r = ns
            .call(RemotingCommand::request(rq::GET_ROUTEINFO_BY_TOPIC, 0).with("topic", "Perm"))
            .await;
        r.code == rs::SUCCESS && json(&r).contains(r#""perm":4"#)
    })
    .await;
}

#[tokio::test]
async fn bad_bytes_close_their_connection_only() {
    let env = Env::start().await;
    let addr = env.broker().local_addr().to_string();
    let mut good = Raw::connect(&addr).await;
    ok(&good.call(heartbeat("c@2", "g2", "T2")).await);
    // Junk is closed (after weir's reader says why, when it looks like its frame).
    for junk in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0, 0, 0, 8, 7, 0, 0, 0, 1, 2, 3, 4][..],
    ] {
        let mut bad = TcpStream::connect(&addr).await.unwrap();
        bad.write_all(junk).await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(T, bad.read_to_end(&mut rest))
            .await
            .expect("closed in time")
            .ok();
    }
    // A remoting frame with a header that is not JSON: told why, then closed.
    let mut broken = Raw::connect(&addr).await;
    let header = b"{not json";
    let mut frame = BytesMut::new();
    frame.extend_from_slice(&((4 + header.len()) as i32).to_be_bytes());
    frame.extend_from_slice(&(header.len() as i32).to_be_bytes());
    frame.extend_from_slice(header);
    broken.stream.write_all(&frame).await.unwrap();
    let why = tokio::time::timeout(T, broken.read_frame())
        .await
        .expect("answered in time")
        .expect("an answer before the close");
    assert_eq!(why.code, rs::SYSTEM_ERROR);
    assert!(why.remark.unwrap_or_default().contains("JSON"));
    let mut rest = Vec::new();
    let n = tokio::time::timeout(T, broken.stream.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed after the answer");
    ok(&good.call(heartbeat("c@2", "g2", "T2")).await);
}

#[tokio::test]
async fn sql92_subscriptions_select_on_the_broker() {
    let env = Env::start().await;
    let client = env.client().await;
    client.create_topic("SQ", 1).await;
    let mut c = Raw::connect(&env.broker().local_addr().to_string()).await;
    // Asked before a SQL92 consumer starts: a bad expression is refused up front.
    let check = |sql: &str| {
        let body = format!(
            r#"{{"clientId":"c@3","group":"sg","subscriptionData":{{"expressionType":"SQL92","subString":"{sql}","topic":"SQ"}}}}"#
        );
        RemotingCommand::request(rq::CHECK_CLIENT_CONFIG, 0).with_body(body.into_bytes())
    };
    ok(&c.call(check("color = 'red' AND n > 3")).await);
    assert_eq!(
        c.call(check("color = ")).await.code,
        rs::SUBSCRIPTION_PARSE_FAILED
    );
    let hb = br#"{"clientID":"c@3","consumerDataSet":[{"groupName":"sg","messageModel":"CLUSTERING","subscriptionDataSet":[{"expressionType":"SQL92","subString":"color = 'red' AND n > 3 AND TAGS = 'T1'","topic":"SQ"}]}]}"#;
    ok(&c
        .call(RemotingCommand::request(rq::HEART_BEAT, 0).with_body(&hb[..]))
        .await);
    let msgs: Vec<Msg> = (0..10)
        .map(|i| {
            Msg::new(format!("k{i}"))
                .tag(if i % 3 == 0 { "T2" } else { "T1" })
                .prop("color", if i % 2 == 0 { "red" } else { "blue" })
                .prop("n", i.to_string())
        })
        .collect();
    client.send("SQ", 0, &msgs).await;
    // The push consumer's pull names no subscription: the heartbeat's SQL92 one applies
    // (the Go client even says TAG here).
    let pulled = c.call(pull("sg", "SQ", 0, 0)).await;
    ok(&pulled);
    let got: Vec<String> = MessageExt::decode_all(&pulled.body)
        .unwrap()
        .iter()
        .map(|m| props_of(m)["KEYS"].clone())
        .collect();
    // red: even; n > 3; tag T1: not a multiple of 3.
    assert_eq!(got, vec!["k4", "k8"]);
    assert_eq!(pulled.num::<u64>("nextBeginOffset").unwrap(), 10);
    // A subscription of a type weir does not filter by is refused, not read as tags
    // (sysFlag 4: the pull carries its subscription).
    let regex = c
        .call(
            pull("sg", "SQ", 0, 0)
                .with("sysFlag", 4)
                .with("subscription", "T.*")
                .with("expressionType", "REGEX"),
        )
        .await;
    assert_eq!(
        regex.code,
        rs::SUBSCRIPTION_PARSE_FAILED,
        "{:?}",
        regex.remark
    );
    assert!(regex.remark.unwrap_or_default().contains("REGEX"));
}

/// A producer that sends and closes at once (RocketMQ's Go client does so with its
/// "one-way" sends, which are ordinary requests) still has its messages stored; a held
/// pull on a closing connection is dropped.
#[tokio::test]
async fn sends_read_before_a_close_are_stored() {
    let env = Env::start().await;
    let client = env.client().await;
    client.create_topic("CT", 1).await;
    let addr = env.broker().local_addr().to_string();
    for close in ["fin", "reset"] {
        let mut c = Raw::connect(&addr).await;
        for i in 0..5 {
            let props = encode_properties([("KEYS", &format!("{close}{i}")[..])]);
            c.send(send_v2("CT", 0, &props, b"x", 0)).await;
        }
        if close == "reset" {
            // Unread answers in the socket make the close a reset; linger 0 forces it.
            #[allow(deprecated)]
            c.stream
                .set_linger(Some(std::time::Duration::ZERO))
                .unwrap();
        }
        drop(c);
    }
    eventually("all ten stored", async || {
        client.queue_offsets("CT", 0).await.max == 10
    })
    .await;
}

/// With access control on, an unsigned pull is refused as unsigned whatever it names:
/// a stranger does not learn whether a group subscribes to a topic. (RocketMQ's own ACL
/// signatures are not read: every unsigned remoting request is refused.)
#[tokio::test]
async fn with_access_control_on_an_unsigned_pull_learns_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("acl.toml");
    std::fs::write(
        &file,
        "[[principal]]\naccess_key = \"root\"\nsecret_key = \"root-secret\"\nadmin = true\n",
    )
    .unwrap();
    let env = Env::start_with(|c| c.acl.file = Some(file)).await;
    let mut raw = Raw::connect(&env.broker().local_addr().to_string()).await;
    let r = raw.call(pull("no-such-group", "secret", 0, 0)).await;
    assert_eq!(r.code, rs::NO_PERMISSION, "{:?}", r.remark);
    assert!(
        r.remark.as_deref().unwrap_or("").contains("not signed"),
        "{:?}",
        r.remark
    );
}
