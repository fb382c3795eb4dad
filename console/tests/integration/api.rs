//! The console's JSON API against a real name server and broker: CSRF refusals, values
//! that would be markup coming back as data, confirmations, and errors naming their cause
//! when the cluster cannot be reached, lists with what each row shows.
//!
//! Over ~600 lines on purpose: one end-to-end scenario per test over the shared `Console`
//! and `Http` helpers.

use crate::common::{Console, Http};
use serde_json::json;
use weir_tests::Env;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_without_the_session_token_is_refused() {
    let env = Env::start().await;
    let console = Console::start(&env.namesrv()).await;
    let mut http = Http::new(console.addr);

    // No session at all.
    let r = http
        .request(
            "POST",
            "/api/topics",
            Some(&json!({"name": "Csrf", "queues": 1})),
            &[],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.json()["error"].as_str().unwrap().contains("CSRF"),
        "{}",
        r.body
    );

    // A session, but no token, then a wrong one.
    let page = http.open("/topics").await;
    assert_eq!(page.status, 200);
    assert!(http.cookie.is_some() && http.csrf.is_some());
    let cookie = page.header("set-cookie").unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let r = http
        .request(
            "POST",
            "/api/topics",
            Some(&json!({"name": "Csrf", "queues": 1})),
            &[],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = http
        .request(
            "POST",
            "/api/topics",
            Some(&json!({"name": "Csrf", "queues": 1})),
            &[("X-CSRF-Token", "0123456789abcdef0123456789abcdef")],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let topics = http.get("/api/topics").await.json();
    assert!(
        !topics.to_string().contains("Csrf"),
        "refused posts created nothing: {topics}"
    );

    // With the page's token it goes through.
    let r = http
        .post("/api/topics", &json!({"name": "Csrf", "queues": 1}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // A page elsewhere pointing a name of its own at the console (DNS rebinding) gets
    // neither a session nor a token; a name the console was started with does.
    let port = console.addr.port();
    let mut rebound = Http::new(console.addr);
    let r = rebound
        .request(
            "GET",
            "/api/session",
            None,
            &[("Host", &format!("attacker.example:{port}"))],
        )
        .await;
    assert_eq!(r.status, 421, "{}", r.body);
    assert!(r.body.contains("--allowed-host"), "{}", r.body);
    assert!(r.header("set-cookie").is_none());
    let r = rebound
        .request(
            "GET",
            "/api/session",
            None,
            &[("Host", &format!("console.test:{port}"))],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markup_in_messages_comes_back_as_data() {
    let env = Env::start().await;
    let console = Console::start(&env.namesrv()).await;
    let mut http = Http::new(console.addr);
    let page = http.open("/messages").await;
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));

    http.create_topic("Esc", 1).await;
    let body = "<script>alert(1)</script>";
    let prop = "\"><img src=x onerror=alert(2)>";
    let r = http
        .post(
            "/api/topic/send",
            &json!({"topic": "Esc", "keys": ["k<1>"], "props": [["p", prop]], "body": body}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = http.get("/api/messages/key?topic=Esc&key=k%3C1%3E").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    let m = &r.json()["messages"][0];
    assert_eq!(m["body_text"], body);
    assert_eq!(m["keys"][0], "k<1>");
    assert!(
        m["props"].as_array().unwrap().contains(&json!(["p", prop])),
        "{m}"
    );
    // The page scripts only ever make text nodes from data.
    for script in ["app.js", "messages.js", "filters.js"] {
        let r = http.get(&format!("/assets/{script}")).await;
        assert_eq!(r.status, 200, "{script}");
        assert!(
            page.body.contains(&format!("src=\"/assets/{script}\"")),
            "{script}"
        );
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!r.body.contains(sink), "{script} uses {sink}");
        }
    }
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_names_each_brokers_version_and_start() {
    let env = Env::start().await;
    let console = Console::start(&env.namesrv()).await;
    let mut http = Http::new(console.addr);
    let r = http.get("/api/cluster").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let b = &r.json()["brokers"][0];
    // The broker is this workspace's, as the console is.
    assert_eq!(b["version"], env!("CARGO_PKG_VERSION"), "{b}");
    let started = b["stats"]["started_at_ms"].as_i64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(started > 0 && started <= now, "{b}");
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destructive_requests_need_the_name_typed_again() {
    let env = Env::start().await;
    let console = Console::start(&env.namesrv()).await;
    let mut http = Http::new(console.addr);
    http.open("/").await;
    http.create_topic("Keep", 2).await;
    let r = http
        .post(
            "/api/topic/delete",
            &json!({"name": "Keep", "confirm": "keep"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("type the topic's name (Keep)")
    );
    let r = http.get("/api/topic?name=Keep").await;
    assert_eq!(r.status, 200, "still there: {}", r.body);
    assert_eq!(
        r.json()["brokers"][0]["queues"].as_array().unwrap().len(),
        2
    );
    let r = http
        .post(
            "/api/group/reset",
            &json!({"group": "g", "topic": "Keep", "to": "earliest", "confirm": ""}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = http
        .post(
            "/api/topic/delete",
            &json!({"name": "Keep", "confirm": "Keep"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Transactions: none pending or dead; resolving an unknown one names it.
    for state in ["pending", "dead"] {
        let r = http.get(&format!("/api/transactions?state={state}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["transactions"], json!([]));
    }
    let r = http
        .post(
            "/api/transactions/resolve",
            &json!({"id": "no-such-tx", "decision": "commit"}),
        )
        .await;
    assert!(r.status >= 400, "{}", r.body);
    assert!(
        r.json()["error"].as_str().unwrap().contains("no-such-tx"),
        "{}",
        r.body
    );
    let r = http
        .post(
            "/api/transactions/resolve",
            &json!({"id": "t", "decision": "maybe"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_is_an_error_naming_it() {
    // A port nobody listens on any more.
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let console = Console::start(&gone.to_string()).await;
    let mut http = Http::new(console.addr);
    let page = http.open("/").await;
    assert_eq!(page.status, 200, "the page itself loads");
    for path in ["/api/cluster", "/api/topics", "/api/groups", "/api/filters"] {
        let r = http.get(path).await;
        assert_eq!(r.status, 502, "{path}: {}", r.body);
        let e = r.json()["error"].as_str().unwrap().to_owned();
        assert!(
            e.contains("no name server answered") && e.contains(&gone.to_string()),
            "{path}: {e}"
        );
    }
    let r = http.get("/api/nothing").await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string());
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_access_control_on_the_operator_logs_in() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl.toml");
    std::fs::write(
        &acl,
        "[[principal]]\naccess_key = \"root\"\nsecret_key = \"root-secret\"\nadmin = true\n",
    )
    .unwrap();
    let env = Env::start_with(|c| c.acl.file = Some(acl)).await;
    let console = Console::start(&env.namesrv()).await;
    let mut http = Http::new(console.addr);
    http.open("/topics").await;

    // Anonymous: refused by the broker, and the page is told to offer the login form.
    let r = http
        .post("/api/topics", &json!({"name": "Signed", "queues": 1}))
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.json()["login"], true, "{}", r.body);
    let r = http.get("/api/cluster").await;
    assert_eq!(r.json()["login"], true, "{}", r.body);

    let r = http
        .post(
            "/api/login",
            &json!({"access_key": "root", "secret": "wrong"}),
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("authentication failed"),
        "{}",
        r.body
    );

    let anonymous = http.cookie.clone();
    let r = http
        .post(
            "/api/login",
            &json!({"access_key": "root", "secret": "root-secret"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body.contains("root-secret"));
    assert_ne!(http.cookie, anonymous, "a login gets a new session id");
    http.csrf = r.json()["csrf"].as_str().map(str::to_owned);
    let r = http
        .post("/api/topics", &json!({"name": "Signed", "queues": 1}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(http.get("/api/session").await.json()["user"], "root");

    // The session from before the login is not logged in.
    let mut old = Http::new(console.addr);
    old.cookie = anonymous;
    assert_eq!(
        old.get("/api/session").await.json()["user"],
        serde_json::Value::Null
    );
    console.stop().await;
}

/// 1,000 topics and 1,000 consumer groups: each list is one request to the name servers,
/// paged by the console (the time each page took is printed, not asserted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_topics_and_groups_page_without_a_request_each() {
    use weir_protocol::broker::{ConsumerData, Heartbeat, MessageModel};
    let env = Env::start().await;
    let raw = env.client().await;
    let started = std::time::Instant::now();
    for i in 0..1000 {
        raw.create_topic(&format!("T{i:04}"), 1).await;
    }
    println!("creating 1,000 topics took {:?}", started.elapsed());
    // One client in 1,000 clustering groups: the broker makes each group's retry topic.
    let hb = Heartbeat {
        client_id: "scale@1".into(),
        producer_groups: Vec::new(),
        consumers: (0..1000)
            .map(|i| ConsumerData {
                group: format!("G{i:04}"),
                model: MessageModel::Clustering,
                subscriptions: vec![("T0000".into(), "*".into())],
            })
            .collect(),
    };
    // Making 1,000 topics in one request takes the broker a while.
    let started = std::time::Instant::now();
    raw.conn
        .call(
            &hb,
            bytes::Bytes::new(),
            std::time::Duration::from_secs(300),
        )
        .await
        .expect("heartbeat");
    println!(
        "a heartbeat making 1,000 retry topics took {:?}",
        started.elapsed()
    );
    let console = Console::start(&env.namesrv()).await;
    let mut http = Http::new(console.addr);
    http.open("/").await;
    weir_tests::eventually(
        "the name server routes 1,000 topics and retry topics",
        async || {
            let t = http.get("/api/topics?per_page=100").await.json();
            let g = http.get("/api/groups?per_page=100").await.json();
            t["paging"]["total"] == 1000 && g["paging"]["total"] == 1000
        },
    )
    .await;
    for (path, list, first) in [
        ("/api/topics?per_page=100&page=10", "topics", "T0900"),
        ("/api/groups?per_page=100&page=10", "groups", "G0900"),
    ] {
        let started = std::time::Instant::now();
        let r = http.get(path).await;
        println!("{path}: {:?} for a page of 1,000", started.elapsed());
        assert_eq!(r.status, 200, "{}", r.body);
        let rows = r.json()[list].as_array().unwrap().clone();
        assert_eq!(rows.len(), 100);
        assert_eq!(rows[0]["name"], first);
        assert_eq!(r.json()["paging"]["pages"], 10);
    }
    // Each row with what a list shows, from the same requests.
    let t = http.get("/api/topics?q=T0900").await.json();
    assert_eq!(
        (
            &t["topics"][0]["read_queues"],
            &t["topics"][0]["write_queues"],
            &t["topics"][0]["perm"]
        ),
        (&json!(1), &json!(1), &json!("rw")),
        "{t}"
    );
    let g = http.get("/api/groups?q=G0900").await.json();
    let row = &g["groups"][0];
    assert_eq!(
        (&row["model"], &row["members"], &row["subscriptions"]),
        (&json!("clustering"), &json!(1), &json!(["T0000"])),
        "{g}"
    );
    console.stop().await;
}

/// The group list holds groups no retry topic names: a broadcasting group (by its live
/// member) and pull consumers that only commit offsets (by those, with their lag); the
/// topic list shows each topic's queues and permission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_group_is_listed_with_its_lag() {
    use weir_protocol::broker::{ConsumerData, Heartbeat, MessageModel};
    let env = Env::start().await;
    let raw = env.client().await;
    raw.create_topic("Kinds", 2).await;
    let msgs: Vec<weir_tests::Msg> = (0..10)
        .map(|i| weir_tests::Msg::new(format!("k{i}")))
        .collect();
    raw.send("Kinds", 0, &msgs).await;
    raw.send("Kinds", 1, &msgs[..3]).await;
    // Pull consumers that commit and never send a heartbeat: 6 + 3 behind.
    raw.commit("Puller", "Kinds", 0, 4).await;
    raw.commit("Puller", "Kinds", 1, 0).await;
    let hb = Heartbeat {
        client_id: "bcast@1".into(),
        producer_groups: Vec::new(),
        consumers: vec![ConsumerData {
            group: "Bcast".into(),
            model: MessageModel::Broadcasting,
            subscriptions: vec![("Kinds".into(), "*".into())],
        }],
    };
    raw.conn
        .call(&hb, bytes::Bytes::new(), std::time::Duration::from_secs(5))
        .await
        .expect("heartbeat");
    let console = Console::start(&env.namesrv()).await;
    let mut http = Http::new(console.addr);
    http.open("/groups").await;
    let r = http
        .post("/api/topic/update", &json!({"name": "Kinds", "perm": "r"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let g = http.get("/api/groups").await.json();
    assert_eq!(g["errors"], json!([]), "{g}");
    let rows = g["groups"].as_array().unwrap();
    let row = |name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {g}"))
            .clone()
    };
    let puller = row("Puller");
    assert_eq!(
        (
            &puller["model"],
            &puller["members"],
            &puller["lag"],
            &puller["queues"]
        ),
        (&json!(null), &json!(0), &json!(9), &json!(2)),
        "{puller}"
    );
    let bcast = row("Bcast");
    assert_eq!(
        (
            &bcast["model"],
            &bcast["members"],
            &bcast["subscriptions"],
            &bcast["retry_topic"]
        ),
        (
            &json!("broadcasting"),
            &json!(1),
            &json!(["Kinds"]),
            &json!(false)
        ),
        "{bcast}"
    );
    let only = http.get("/api/groups?q=Pull").await.json();
    assert_eq!(only["groups"].as_array().unwrap().len(), 1, "{only}");
    weir_tests::eventually("the name servers see the topic read-only", async || {
        let t = http.get("/api/topics?q=Kinds").await.json();
        t["topics"][0]["perm"] == "r-"
    })
    .await;
    let t = http.get("/api/topics?q=Kinds").await.json();
    assert_eq!(
        (&t["topics"][0]["read_queues"], &t["topics"][0]["brokers"]),
        (&json!(2), &json!([env.config().broker_name])),
        "{t}"
    );
    console.stop().await;
}

/// Messages by store time come a page at a time, each once, in store order; a dead letter
/// shows in its group and goes back to its topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_page_by_time_and_a_dead_letter_goes_back() {
    use weir_protocol::broker::ConsumerSendMsgBack;
    let env = Env::start().await;
    let console = Console::start(&env.namesrv()).await;
    let mut http = Http::new(console.addr);
    http.open("/messages").await;
    http.create_topic("Pages", 2).await;
    for i in 0..5 {
        let r = http
            .post(
                "/api/topic/send",
                &json!({"topic": "Pages", "keys": [format!("p{i}")], "body": format!("b{i}")}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let to = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 60_000;
    let (mut seen, mut cursor, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        pages += 1;
        assert!(pages <= 5, "paging does not end: {seen:?}");
        let mut path = format!("/api/messages/time?topic=Pages&from_ms=0&to_ms={to}&per_page=2");
        if let Some(c) = &cursor {
            path.push_str(&format!(
                "&cursor={}",
                c.replace('/', "%2F").replace(',', "%2C")
            ));
        }
        let r = http.get(&path).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let page = r.json();
        let msgs = page["messages"].as_array().unwrap();
        assert!(msgs.len() <= 2);
        seen.extend(msgs.iter().map(|m| {
            (
                m["store_ts"].as_i64().unwrap(),
                m["body_text"].as_str().unwrap().to_owned(),
            )
        }));
        match page["next"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut bodies: Vec<&str> = seen.iter().map(|(_, b)| b.as_str()).collect();
    assert!(
        seen.windows(2).all(|w| w[0].0 <= w[1].0),
        "in store order: {seen:?}"
    );
    bodies.sort();
    assert_eq!(bodies, ["b0", "b1", "b2", "b3", "b4"], "each once");

    // A dead letter, straight to %DLQ%dlq-g.
    let admin = weir_client::Admin::new(
        weir_client::ClientInstance::new(weir_client::ClientConfig::new(env.namesrv())).unwrap(),
    );
    let original = admin
        .messages_by_key("Pages", "p0", 4)
        .await
        .unwrap()
        .remove(0);
    let back = ConsumerSendMsgBack {
        group: "dlq-g".into(),
        commit_log_offset: original.commit_log_offset,
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
    assert_eq!(dead.topic, "%DLQ%dlq-g");
    weir_tests::eventually("the group shows its dead letter", async || {
        http.get("/api/group?name=dlq-g").await.json()["dead_letters"] == 1
    })
    .await;
    let groups = http.get("/api/groups?q=dlq").await.json();
    assert_eq!(
        groups["groups"],
        json!([{"name": "dlq-g", "retry_topic": false, "dead_letter_topic": true,
                "model": null, "members": 0, "subscriptions": [], "lag": null, "queues": 0}])
    );
    let r = http
        .post(
            "/api/group/resend",
            &json!({"msg_id": original.msg_id.to_string()}),
        )
        .await;
    assert_eq!(r.status, 400, "only a dead letter is re-sent: {}", r.body);
    let r = http
        .post(
            "/api/group/resend",
            &json!({"msg_id": dead.msg_id.to_string()}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["topic"], "Pages");
    weir_tests::eventually("the copy is on its topic again", async || {
        let found = http
            .get("/api/messages/key?topic=Pages&key=p0")
            .await
            .json();
        found["messages"].as_array().is_some_and(|m| m.len() == 2)
    })
    .await;
    console.stop().await;
}

/// A page of messages by time holds at most 4 MiB of bodies (each goes out twice, as text
/// and Base64: 100 messages of 1 MiB made a 59 MB answer); the rest come on the next pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_large_messages_stops_at_its_bytes() {
    let env = Env::start().await;
    let client = env.client().await;
    // Two of 1.5 MB in each of four queues: each queue's pull answers both (12 MB in all).
    client.create_topic("Large", 4).await;
    for q in 0..4u8 {
        let msgs: Vec<weir_tests::Msg> = (0..2u8)
            .map(|i| {
                weir_tests::Msg::new(format!("l{q}{i}")).body(vec![b'a' + 2 * q + i; 1_500_000])
            })
            .collect();
        client.send("Large", u32::from(q), &msgs).await;
    }
    let console = Console::start(&env.namesrv()).await;
    let mut http = Http::new(console.addr);
    let (mut sizes, mut firsts, mut cursor) = (Vec::new(), Vec::new(), None::<String>);
    for _ in 0..8 {
        let mut path =
            "/api/messages/time?topic=Large&from_ms=0&to_ms=99999999999999&per_page=100".to_owned();
        if let Some(c) = &cursor {
            path.push_str(&format!(
                "&cursor={}",
                c.replace('/', "%2F").replace(',', "%2C")
            ));
        }
        let page = http.get(&path).await.json();
        let msgs = page["messages"].as_array().unwrap();
        sizes.push(msgs.len());
        firsts.extend(
            msgs.iter()
                .map(|m| m["body_text"].as_str().unwrap()[..1].to_owned()),
        );
        match page["next"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(sizes, [2, 2, 2, 2], "two of 1.5 MB fit a page's 4 MiB");
    firsts.sort();
    assert_eq!(firsts.concat(), "abcdefgh", "each message once");
    console.stop().await;
}
