//! The Filters page's preview (`POST /api/filters/preview`) against a real name server and
//! broker: a component tried on a topic's last messages in the console, kept and dropped
//! per message, a trapping filter's cause and log lines, components that do not load,
//! the bounds, one preview at a time, and nothing uploaded.

mod common;

use base64::Engine;
use common::{Console, Http};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use weir_tests::{Env, artifacts};

/// The tests of this file run one at a time: one counts the process's filter threads.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn component(path: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(artifacts::read(path))
}

/// Six messages on two queues: keys k0..k5, region eu for the even ones, us for the odd.
async fn six_messages(http: &mut Http, topic: &str) {
    http.create_topic(topic, 2).await;
    for i in 0..6 {
        let region = if i % 2 == 0 { "eu" } else { "us" };
        let r = http
            .post(
                "/api/topic/send",
                &json!({"topic": topic, "keys": [format!("k{i}")], "tag": "T",
                        "props": [["region", region]], "body": format!("b{i}")}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

/// Threads of filter runtimes in this process (the broker's, and any a preview left).
fn filter_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.starts_with("weir-filter"))
                })
                .count()
        })
        .unwrap_or(0)
}

async fn preview(http: &mut Http, body: Value) -> (u16, Value) {
    let r = http.post("/api/filters/preview", &body).await;
    (r.status, r.json())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_is_tried_on_the_last_messages_of_a_topic() {
    let _serial = SERIAL.lock().await;
    let env = Env::start().await;
    let console = Console::start(&env.namesrv()).await;
    let mut http = Http::new(console.addr);
    http.open("/filters").await;
    six_messages(&mut http, "Prev").await;
    let sql92 = component(artifacts::SQL92);
    let threads_before = filter_threads();

    let (status, d) = preview(
        &mut http,
        json!({"topic": "Prev", "count": 100, "params": [["expr", "region = 'eu'"]],
               "component_base64": sql92}),
    )
    .await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(
        (&d["read"], &d["kept"], &d["dropped"]),
        (&json!(6), &json!(3), &json!(3)),
        "{d}"
    );
    assert_eq!(d["error"], Value::Null, "{d}");
    assert_eq!(d["group"], "weir-console-preview");
    let msgs = d["messages"].as_array().unwrap();
    for m in msgs {
        let key = m["keys"][0].as_str().unwrap();
        let even = key.trim_start_matches('k').parse::<u32>().unwrap() % 2 == 0;
        assert_eq!(m["verdict"], if even { "kept" } else { "dropped" }, "{m}");
        assert_eq!(m["tags"], "T");
        assert!(m["queue"].is_u64() && m["queue_offset"].is_u64() && m["msg_id"].is_string());
    }
    let times: Vec<i64> = msgs
        .iter()
        .map(|m| m["store_ts"].as_i64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
    // 1 route request, then per queue 1 for its offsets and 1 pull.
    assert_eq!(d["requests"], 5, "{d}");

    // The last one only: each queue's last message read, the newer kept.
    let (status, d) = preview(
        &mut http,
        json!({"topic": "Prev", "count": 1, "params": [["expr", "region = 'eu'"]],
               "component_base64": sql92}),
    )
    .await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["read"], 1, "{d}");

    // Nothing was uploaded, and each preview's runtime is gone with it.
    let filters = http.get("/api/filters").await.json();
    assert_eq!(filters["filters"], json!([]), "{filters}");
    weir_tests::eventually("the previews' filter threads end", async || {
        filter_threads() <= threads_before
    })
    .await;
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_filter_names_its_cause_and_shows_its_log() {
    let _serial = SERIAL.lock().await;
    let env = Env::start().await;
    let console = Console::start(&env.namesrv()).await;
    let mut http = Http::new(console.addr);
    http.open("/filters").await;
    six_messages(&mut http, "Bad").await;

    // It panics (logging the panic first) and traps.
    let (status, d) = preview(
        &mut http,
        json!({"topic": "Bad", "params": [["mode", "panic"]], "memory": "32MiB",
               "component_base64": component(artifacts::HOSTILE)}),
    )
    .await;
    assert_eq!(status, 200, "{d}");
    let error = d["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error: {d}"));
    assert!(
        error.contains("trapped") && error.contains("queue"),
        "{error}"
    );
    let log = d["log"].to_string();
    assert!(log.contains("deliberate panic"), "{d}");
    assert!(
        d["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["verdict"].is_null()),
        "messages not judged say so: {d}"
    );

    // It does not load: parameters init refuses, bytes that are no component.
    for (body, want) in [
        (
            json!({"topic": "Bad", "params": [["expr", "a > AND"]],
                   "component_base64": component(artifacts::SQL92)}),
            "init rejected the parameters",
        ),
        (
            json!({"topic": "Bad", "component_base64": "bm90IHdhc20="}),
            "the filter does not load",
        ),
        (
            json!({"topic": "Bad", "component_base64": "%%%"}),
            "not valid Base64",
        ),
        (
            json!({"topic": "Bad", "count": 1001, "component_base64": "AA=="}),
            "1 to 1000 messages",
        ),
        (
            json!({"topic": "Bad", "count": 0, "component_base64": "AA=="}),
            "1 to 1000 messages",
        ),
        (
            json!({"topic": "Bad", "memory": "lots", "component_base64": "AA=="}),
            "expected a size",
        ),
        (
            json!({"topic": " ", "component_base64": "AA=="}),
            "give the topic",
        ),
    ] {
        let (status, d) = preview(&mut http, body.clone()).await;
        assert_eq!(status, 400, "{body}: {d}");
        let e = d["error"].as_str().unwrap();
        assert!(e.contains(want), "{body}: {e}");
    }
    let (status, d) = preview(
        &mut http,
        json!({"topic": "NoSuchTopic", "component_base64": component(artifacts::KEEP_ALL)}),
    )
    .await;
    assert_eq!(status, 404, "{d}");

    // Like every POST, it needs the session's token.
    let r = http
        .request(
            "POST",
            "/api/filters/preview",
            Some(&json!({"topic": "Bad", "component_base64": "AA=="})),
            &[],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_preview_runs_at_a_time() {
    let _serial = SERIAL.lock().await;
    let env = Env::start().await;
    let console = Console::start(&env.namesrv()).await;
    let mut http = Http::new(console.addr);
    http.open("/filters").await;

    // A preview whose body never finishes holds the console's one slot.
    let mut held = tokio::net::TcpStream::connect(console.addr).await.unwrap();
    let head = format!(
        "POST /api/filters/preview HTTP/1.1\r\nHost: {}\r\nCookie: {}\r\nX-CSRF-Token: {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{\"topic\": ",
        console.addr,
        http.cookie.clone().unwrap(),
        http.csrf.clone().unwrap()
    );
    held.write_all(head.as_bytes()).await.unwrap();
    let small = json!({"topic": "T"});
    weir_tests::eventually("a second preview is refused while one runs", async || {
        let r = http.post("/api/filters/preview", &small).await;
        if r.status == 429 {
            let e = r.json()["error"].as_str().unwrap().to_owned();
            assert!(e.contains("another filter preview is running"), "{e}");
        }
        r.status == 429
    })
    .await;
    // The first gone, the slot is free again (this one fails for lack of a component).
    drop(held);
    weir_tests::eventually("the slot is free again", async || {
        http.post("/api/filters/preview", &small).await.status == 400
    })
    .await;
    console.stop().await;
}
