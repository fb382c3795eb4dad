//! What the console's tests share: the console served in this process on an ephemeral
//! 127.0.0.1 port, and a plain HTTP/1.1 client (one request per connection) that keeps the
//! session cookie and reads the page's CSRF token.

#![allow(dead_code)]

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

pub struct Console {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Console {
    /// Serves a console for the name servers at `namesrv`.
    pub async fn start(namesrv: &str) -> Console {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let config = weir_console::ConsoleConfig {
            namesrv: namesrv.to_owned(),
            tls_ca: None,
            allowed_hosts: vec!["console.test".into()],
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            weir_console::serve(listener, &config, async {
                let _ = stopped.await;
            })
            .await
            .expect("console serves");
        });
        Console {
            addr,
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// A browser's part: the session cookie and CSRF token of the last page loaded.
pub struct Http {
    pub addr: SocketAddr,
    pub cookie: Option<String>,
    pub csrf: Option<String>,
}

impl Http {
    pub fn new(addr: SocketAddr) -> Http {
        Http {
            addr,
            cookie: None,
            csrf: None,
        }
    }

    /// Loads a page: keeps the session cookie and the token from its `<meta>`.
    pub async fn open(&mut self, path: &str) -> Response {
        let r = self.request("GET", path, None, &[]).await;
        let meta = "<meta name=\"csrf-token\" content=\"";
        if let Some(i) = r.body.find(meta) {
            let rest = &r.body[i + meta.len()..];
            self.csrf = rest.split('"').next().map(str::to_owned);
        }
        r
    }

    pub async fn get(&mut self, path: &str) -> Response {
        self.request("GET", path, None, &[]).await
    }

    /// A POST with the page's token.
    pub async fn post(&mut self, path: &str, body: &serde_json::Value) -> Response {
        let token = self.csrf.clone().expect("open a page first");
        self.request("POST", path, Some(body), &[("X-CSRF-Token", &token)])
            .await
    }

    /// Creates `name` with `queues` queues through the page's API, expecting success.
    pub async fn create_topic(&mut self, name: &str, queues: u32) {
        let r = self
            .post(
                "/api/topics",
                &serde_json::json!({"name": name, "queues": queues}),
            )
            .await;
        assert_eq!(r.status, 200, "creating {name}: {}", r.body);
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
        extra: &[(&str, &str)],
    ) -> Response {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        if !extra.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req.push_str(&format!("Host: {}\r\n", self.addr));
        }
        if let Some(c) = &self.cookie {
            req.push_str(&format!("Cookie: {c}\r\n"));
        }
        for (k, v) in extra {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(&body);
        let mut s = TcpStream::connect(self.addr).await.expect("connect");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("read");
        let raw = String::from_utf8(raw).expect("UTF-8 response");
        let (head, body) = raw.split_once("\r\n\r\n").expect("a head");
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let resp = Response {
            status,
            headers,
            body: body.to_owned(),
        };
        if let Some(c) = resp.header("set-cookie") {
            self.cookie = c.split(';').next().map(str::to_owned);
        }
        resp
    }
}
