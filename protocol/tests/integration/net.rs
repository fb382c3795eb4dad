#![cfg(feature = "net")]
//! The connection layer over real sockets on 127.0.0.1.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use weir_protocol::net::BoxFuture;
use weir_protocol::route::{BrokerData, GetAllTopics, GetClusterInfo, GetRoute, TopicRoute};
use weir_protocol::{
    CallError, ConnConfig, Connection, ErrorCode, Handler, NoHandler, Reply, Request, RequestCode,
    Server, ServerConfig,
};

const T: Duration = Duration::from_secs(10);

/// Answers GetRoute with a route naming the topic and echoing the body's length; refuses
/// "missing"; sleeps on "slow"; on GetClusterInfo calls back the client first.
struct TestHandler {
    oneways: mpsc::UnboundedSender<String>,
    closes: Arc<AtomicUsize>,
}

impl Handler for TestHandler {
    fn handle<'a>(&'a self, conn: &'a Connection, req: Request) -> BoxFuture<'a, Reply> {
        Box::pin(async move {
            match RequestCode::from_u16(req.code) {
                Some(RequestCode::GetRoute) => {
                    let r: GetRoute = match req.decode() {
                        Ok(r) => r,
                        Err(e) => return Reply::error(ErrorCode::BadRequest, e.to_string()),
                    };
                    if req.oneway {
                        let _ = self.oneways.send(r.topic);
                        return Reply::ok(&());
                    }
                    match r.topic.as_str() {
                        "missing" => {
                            Reply::error(ErrorCode::TopicNotExist, "no route for topic missing")
                        }
                        "slow" => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            Reply::ok(&TopicRoute::default())
                        }
                        topic => Reply::ok_with_body(
                            &TopicRoute {
                                queues: vec![],
                                brokers: vec![BrokerData {
                                    cluster: topic.to_owned(),
                                    broker_name: req.body.len().to_string(),
                                    addrs: vec![],
                                    status: vec![],
                                }],
                            },
                            req.body.clone(),
                        ),
                    }
                }
                Some(RequestCode::GetClusterInfo) => {
                    // Server-initiated request over the same connection.
                    match conn.call(&GetAllTopics, Bytes::new(), T).await {
                        Ok((list, _)) => Reply::ok(&weir_protocol::route::ClusterInfo {
                            brokers: list
                                .topics
                                .into_iter()
                                .map(|t| BrokerData {
                                    cluster: t,
                                    broker_name: String::new(),
                                    addrs: vec![],
                                    status: vec![],
                                })
                                .collect(),
                        }),
                        Err(e) => Reply::error(ErrorCode::SystemError, e.to_string()),
                    }
                }
                _ => Reply::error(
                    ErrorCode::RequestCodeNotSupported,
                    format!("code {}", req.code),
                ),
            }
        })
    }
    fn on_close(&self, _conn: &Connection) {
        self.closes.fetch_add(1, Ordering::SeqCst);
    }
}

/// The client side answers the server's GetAllTopics.
struct ClientHandler;
impl Handler for ClientHandler {
    fn handle<'a>(&'a self, _conn: &'a Connection, _req: Request) -> BoxFuture<'a, Reply> {
        Box::pin(async {
            Reply::ok(&weir_protocol::route::TopicList {
                topics: vec!["from-client".into()],
            })
        })
    }
}

struct Fixture {
    server: Server,
    addr: String,
    oneways: mpsc::UnboundedReceiver<String>,
    closes: Arc<AtomicUsize>,
}

async fn fixture() -> Fixture {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (tx, oneways) = mpsc::unbounded_channel();
    let closes = Arc::new(AtomicUsize::new(0));
    let handler = Arc::new(TestHandler {
        oneways: tx,
        closes: Arc::clone(&closes),
    });
    let server = Server::start(
        listener,
        handler,
        ServerConfig {
            conn: ConnConfig {
                max_frame: 64 * 1024,
                ..ConnConfig::default()
            },
            ..ServerConfig::default()
        },
    )
    .unwrap();
    let addr = server.local_addr().to_string();
    Fixture {
        server,
        addr,
        oneways,
        closes,
    }
}

async fn client(addr: &str) -> Connection {
    // The client accepts bigger frames than the server, to send it an oversized one.
    Connection::connect(
        addr,
        Arc::new(ClientHandler),
        ConnConfig {
            max_frame: 1 << 20,
            ..ConnConfig::default()
        },
        T,
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_calls_are_matched_to_their_responses() {
    let f = fixture().await;
    let conn = client(&f.addr).await;
    let mut tasks = Vec::new();
    for i in 0..2000usize {
        let conn = conn.clone();
        tasks.push(tokio::spawn(async move {
            let body = Bytes::from(vec![7u8; i % 300]);
            let (route, echoed) = conn
                .call(
                    &GetRoute {
                        topic: format!("t{i}"),
                    },
                    body.clone(),
                    T,
                )
                .await
                .unwrap();
            assert_eq!(route.brokers[0].cluster, format!("t{i}"));
            assert_eq!(route.brokers[0].broker_name, (i % 300).to_string());
            assert_eq!(echoed, body, "the raw body comes back untouched");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn remote_errors_timeouts_oneways_and_server_calls() {
    let mut f = fixture().await;
    let conn = client(&f.addr).await;
    match conn
        .call(
            &GetRoute {
                topic: "missing".into(),
            },
            Bytes::new(),
            T,
        )
        .await
    {
        Err(CallError::Remote {
            code: ErrorCode::TopicNotExist,
            message,
        }) => {
            assert!(message.contains("missing"))
        }
        other => panic!("{other:?}"),
    }
    let slow = GetRoute {
        topic: "slow".into(),
    };
    let slow = conn
        .call(&slow, Bytes::new(), Duration::from_millis(100))
        .await;
    assert!(matches!(slow, Err(CallError::Timeout(_))));

    conn.oneway(
        &GetRoute {
            topic: "fire-and-forget".into(),
        },
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(f.oneways.recv().await.unwrap(), "fire-and-forget");

    let (info, _) = conn.call(&GetClusterInfo, Bytes::new(), T).await.unwrap();
    assert_eq!(
        info.brokers[0].cluster, "from-client",
        "server called the client back"
    );

    // A client that serves nothing answers the server's requests with a clear error.
    let plain = Connection::connect(&f.addr, Arc::new(NoHandler), ConnConfig::default(), T)
        .await
        .unwrap();
    match plain.call(&GetClusterInfo, Bytes::new(), T).await {
        Err(CallError::Remote {
            code: ErrorCode::SystemError,
            message,
        }) => {
            assert!(message.contains("not served"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_oversized_frame_gets_a_clear_error_and_others_are_still_served() {
    let f = fixture().await;
    let conn = client(&f.addr).await;
    let big = Bytes::from(vec![0u8; 100 * 1024]);
    match conn.call(&GetRoute { topic: "t".into() }, big, T).await {
        Err(CallError::Remote {
            code: ErrorCode::BadRequest,
            message,
        }) => {
            assert!(message.contains("exceeds the maximum"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    conn.closed().await;
    let other = client(&f.addr).await;
    let (route, _) = other
        .call(&GetRoute { topic: "ok".into() }, Bytes::new(), T)
        .await
        .unwrap();
    assert_eq!(route.brokers[0].cluster, "ok");
}

#[tokio::test]
async fn garbage_bytes_close_only_that_connection() {
    let f = fixture().await;
    let good = client(&f.addr).await;
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[
            0, 0, 0, 20, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9,
        ][..],
    ] {
        let mut raw = TcpStream::connect(&f.addr).await.unwrap();
        raw.write_all(garbage).await.unwrap();
        // The server answers (an error frame) and closes: read to the end.
        let mut sink = Vec::new();
        tokio::time::timeout(T, raw.read_to_end(&mut sink))
            .await
            .unwrap()
            .unwrap();
        assert!(!sink.is_empty(), "no error frame before the close");
    }
    let (route, _) = good
        .call(
            &GetRoute {
                topic: "still".into(),
            },
            Bytes::new(),
            T,
        )
        .await
        .unwrap();
    assert_eq!(route.brokers[0].cluster, "still");
}

#[tokio::test]
async fn shutdown_fails_pending_calls_and_reports_closes() {
    let f = fixture().await;
    let conn = client(&f.addr).await;
    let pending = {
        let conn = conn.clone();
        tokio::spawn(async move {
            conn.call(
                &GetRoute {
                    topic: "slow".into(),
                },
                Bytes::new(),
                T,
            )
            .await
        })
    };
    // Let the request reach the server before shutting down (it sleeps there for 30 s).
    let deadline = tokio::time::Instant::now() + T;
    while f.closes.load(Ordering::SeqCst) == 0 && !pending.is_finished() {
        f.server.shutdown().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(tokio::time::Instant::now() < deadline);
    }
    assert!(matches!(
        pending.await.unwrap(),
        Err(CallError::Closed { .. })
    ));
    conn.closed().await;
    assert!(conn.is_closed());
    assert!(matches!(
        conn.call(&GetRoute { topic: "x".into() }, Bytes::new(), T)
            .await,
        Err(CallError::Closed { .. })
    ));
}
