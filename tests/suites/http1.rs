//! Issue #16, item 4: SSE streams and long polls are answered over HTTP/1.1
//! without hyper (`src/direct_http1.rs`). What an HTTP/1.1 client relies on
//! still holds, seen from a raw socket: framing, keep-alive, `Connection:
//! close`, a hang-up dropping the pending answer at once, and every request
//! that path does not take (HTTP/1.0, pipelining, long heads, a connection
//! that started with another request) answered as before.

use crate::common::*;
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One answer read off a raw socket: status, lower-cased headers, body
/// (de-chunked), and whether the server closed the connection after it.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// Bytes read from a socket, kept across answers (a pipelined reply may
/// arrive in the same read as the previous one).
struct Reader {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Reader {
    fn new(s: TcpStream) -> Reader {
        Reader { s, buf: Vec::new() }
    }

    async fn send(&mut self, raw: &str) {
        self.s.write_all(raw.as_bytes()).await.expect("send");
    }

    /// Reads until `buf` holds `n` bytes (bounded by the arrival bound).
    async fn fill(&mut self, n: usize) {
        while self.buf.len() < n {
            self.buf.reserve(4096);
            let got = tokio::time::timeout(ARRIVAL, self.s.read_buf(&mut self.buf))
                .await
                .expect("bytes within the arrival bound")
                .expect("read");
            assert!(
                got > 0,
                "closed after {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    /// Reads up to and including `until`, and returns it.
    async fn line(&mut self, until: &[u8]) -> Vec<u8> {
        loop {
            if let Some(i) = self.buf.windows(until.len()).position(|w| w == until) {
                return self.buf.drain(..i + until.len()).collect();
            }
            let n = self.buf.len() + 1;
            self.fill(n).await;
        }
    }

    async fn take(&mut self, n: usize) -> Vec<u8> {
        self.fill(n).await;
        self.buf.drain(..n).collect()
    }

    /// Reads a status line and headers.
    async fn head(&mut self) -> (u16, Vec<(String, String)>) {
        let head = String::from_utf8(self.line(b"\r\n\r\n").await).expect("a text head");
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .expect("a status line");
        let headers = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').expect("a header line");
                (n.trim().to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        (status, headers)
    }

    /// Reads one chunk of a chunked body (`None`: the last one).
    async fn chunk(&mut self) -> Option<Vec<u8>> {
        let size = String::from_utf8(self.line(b"\r\n").await).expect("a chunk size");
        let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
        let data = self.take(size).await;
        assert_eq!(self.take(2).await, b"\r\n");
        (size > 0).then_some(data)
    }

    /// Reads one whole answer.
    async fn answer(&mut self) -> Answer {
        let (status, headers) = self.head().await;
        let mut a = Answer {
            status,
            headers,
            body: Vec::new(),
        };
        if let Some(n) = a.header("content-length") {
            let n = n.parse().expect("a length");
            a.body = self.take(n).await;
        } else if a.header("transfer-encoding") == Some("chunked") {
            while let Some(c) = self.chunk().await {
                a.body.extend(c);
            }
        }
        a
    }

    /// True when the server closes the connection (EOF or reset) within the bound.
    async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(ARRIVAL, self.s.read_to_end(&mut rest)).await;
        rest.is_empty()
    }
}

async fn raw(srv: &rowcast::server::Server) -> Reader {
    Reader::new(TcpStream::connect(srv.addr).await.expect("connect"))
}

fn poll_request(query: &str, extra: &str) -> String {
    format!("GET /v1/poll?{query} HTTP/1.1\r\nHost: x\r\n{extra}\r\n")
}

/// Two polls on one kept-alive connection: each answer has an exact length
/// and a date, and the second (a long poll) returns the change committed
/// while it waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_share_a_kept_alive_connection() {
    let url = fresh_db().await;
    let srv = server(&url).await;
    let db = connect(&url).await;
    let mut c = raw(&srv).await;
    c.send(&poll_request("topics=t", "")).await;
    let first = c.answer().await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("content-type"), Some("application/json"));
    assert!(first.header("date").is_some());
    assert_eq!(first.header("connection"), None);
    let cursor = first.json()["cursor"].as_str().expect("cursor").to_string();
    c.send(&poll_request(
        &format!("topics=t&cursor={cursor}&wait=20"),
        "",
    ))
    .await;
    eventually("the long poll waits", || {
        srv.metric("rowcast_connections{transport=\"poll\"}") == 1.0
    })
    .await;
    emit(&db, "t", 7).await;
    let second = c.answer().await;
    assert_eq!(second.status, 200);
    assert_eq!(second.json()["events"][0]["data"]["n"], 7);
    srv.stop().await;
}

/// A long poll whose client hangs up is dropped at once, not when its wait
/// ends: its connection slot comes back (the wait here is longer than the
/// arrival bound, so only the hang-up can free it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_up_drops_the_pending_long_poll() {
    let url = fresh_db().await;
    let srv = server_with(&url, |c| c.max_poll_wait = Duration::from_secs(600)).await;
    let first = poll_raw(&srv.base_url(), "topics=t").await.1;
    let cursor = first["cursor"].as_str().expect("cursor").to_string();
    let mut c = raw(&srv).await;
    c.send(&poll_request(
        &format!("topics=t&cursor={cursor}&wait=600"),
        "",
    ))
    .await;
    eventually("the long poll waits", || {
        srv.metric("rowcast_connections{transport=\"poll\"}") == 1.0
    })
    .await;
    drop(c);
    eventually("the hang-up frees the slot", || {
        srv.metric("rowcast_connections{transport=\"poll\"}") == 0.0
    })
    .await;
    eventually("and the socket", || srv.open_sockets() == 0).await;
    srv.stop().await;
}

/// An SSE stream is chunked; its events arrive as chunks; a hang-up ends it
/// and frees its subscription at once. Both ways a stream is written: on
/// the raw socket (a plain GET, `transport/sse/direct.rs`; the connection
/// closes after the stream) and as hyper's response body (a head longer than
/// the direct path reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_stream_is_chunked_and_ends_on_hang_up() {
    let url = fresh_db().await;
    let srv = server(&url).await;
    let db = connect(&url).await;
    let padding = format!("X-Padding: {}\r\n", "p".repeat(9 * 1024));
    for (n, (path, extra)) in [("raw socket", ""), ("hyper", padding.as_str())]
        .into_iter()
        .enumerate()
    {
        let mut c = raw(&srv).await;
        c.send(&format!(
            "GET /v1/events?topics=t HTTP/1.1\r\nHost: x\r\n{extra}\r\n"
        ))
        .await;
        let (status, headers) = c.head().await;
        assert_eq!(status, 200, "{path}");
        let header = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header("content-type"), Some("text/event-stream"), "{path}");
        assert_eq!(header("transfer-encoding"), Some("chunked"), "{path}");
        assert_eq!(header("content-length"), None, "{path}");
        if n == 0 {
            assert_eq!(header("connection"), Some("close"), "{path}");
        }
        let retry = c.chunk().await.expect("the retry hint");
        assert!(retry.starts_with(b"retry: "), "{path}: {retry:?}");
        let q = 3 + n as i64;
        emit(&db, "t", q).await;
        let event = String::from_utf8(c.chunk().await.expect("an event")).expect("text");
        let data: Value = event
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .and_then(|d| serde_json::from_str(d).ok())
            .expect("a data line");
        assert!(event.contains("event: test.n\n"), "{path}: {event}");
        assert_eq!(data["data"]["n"], q, "{path}: {event}");
        assert_eq!(
            srv.metric("rowcast_connections{transport=\"sse\"}"),
            1.0,
            "{path}"
        );
        drop(c);
        eventually("the hang-up ends the stream", || {
            srv.metric("rowcast_connections{transport=\"sse\"}") == 0.0
        })
        .await;
    }
    srv.stop().await;
}

/// `Connection: close` is answered with `connection: close`, then the
/// server closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_is_honoured() {
    let url = fresh_db().await;
    let srv = server(&url).await;
    let mut c = raw(&srv).await;
    c.send(&poll_request("topics=t", "Connection: close\r\n"))
        .await;
    let a = c.answer().await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("connection"), Some("close"));
    assert!(c.closed().await);
    srv.stop().await;
}

/// Requests the direct path leaves to hyper are answered as before: HTTP/1.0,
/// two pipelined polls, a head longer than the direct path reads, an error,
/// and a poll on a connection that began with another request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_left_to_hyper_are_answered() {
    let url = fresh_db().await;
    let srv = server(&url).await;

    let mut c = raw(&srv).await;
    c.send("GET /v1/poll?topics=t HTTP/1.0\r\n\r\n").await;
    let a = c.answer().await;
    assert_eq!(a.status, 200);
    assert!(a.json()["cursor"].is_string());

    let mut c = raw(&srv).await;
    let twice = poll_request("topics=t", "").repeat(2);
    c.send(&twice).await;
    for _ in 0..2 {
        let a = c.answer().await;
        assert_eq!(a.status, 200);
        assert!(a.json()["cursor"].is_string());
    }

    let mut c = raw(&srv).await;
    let long = format!("X-Padding: {}\r\n", "p".repeat(9 * 1024));
    c.send(&poll_request("topics=t", &long)).await;
    assert_eq!(c.answer().await.status, 200);

    let mut c = raw(&srv).await;
    c.send(&poll_request("topics=t&wait=abc", "")).await;
    let a = c.answer().await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"], "bad_wait");
    // the connection goes on after an error
    c.send(&poll_request("topics=t", "")).await;
    assert_eq!(c.answer().await.status, 200);

    let mut c = raw(&srv).await;
    c.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(c.answer().await.status, 200);
    c.send(&poll_request("topics=t", "")).await;
    assert_eq!(c.answer().await.status, 200);
    srv.stop().await;
}

/// A method the stream routes do not take is 405 in the JSON error shape, a
/// path no route takes 404;
/// the heads hyper refuses before rowcast sees a request (README, "Limits and
/// hostile input") get hyper's bodiless 400 / 414 / 431, and the connection
/// closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_answers_are_json_but_for_hyper_s_own() {
    let url = fresh_db().await;
    let srv = server(&url).await;

    // a method a route does not take: 405; a path no route takes: 404
    for (request, status, error) in [
        (
            "POST /v1/poll?topics=t HTTP/1.1\r\nHost: x\r\ncontent-length: 2\r\n\r\n{}",
            405,
            "method_not_allowed",
        ),
        (
            "POST /v1/poll?topics=t HTTP/1.1\r\nHost: x\r\n\r\n",
            405,
            "method_not_allowed",
        ),
        (
            "PUT /v1/events?topics=t HTTP/1.1\r\nHost: x\r\ncontent-length: 0\r\n\r\n",
            405,
            "method_not_allowed",
        ),
        (
            "DELETE /v1/ws HTTP/1.1\r\nHost: x\r\n\r\n",
            405,
            "method_not_allowed",
        ),
        (
            "POST /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
            405,
            "method_not_allowed",
        ),
        ("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 404, "not_found"),
        (
            "GET /v1/stream?topics=t HTTP/1.1\r\nHost: x\r\n\r\n",
            404,
            "not_found",
        ),
        (
            "POST /v2/poll HTTP/1.1\r\nHost: x\r\ncontent-length: 0\r\n\r\n",
            404,
            "not_found",
        ),
    ] {
        let mut c = raw(&srv).await;
        c.send(request).await;
        let a = c.answer().await;
        assert_eq!(a.status, status, "{request:?}");
        assert_eq!(
            a.header("content-type"),
            Some("application/json"),
            "{request:?}"
        );
        assert_eq!(a.json()["error"], error, "{request:?}");
        assert!(a.json()["message"].is_string(), "{request:?}");
        if status == 405 {
            // what the route takes; `/v1/ws` takes no HEAD (r5's review)
            let allow = match request.contains("/v1/ws") {
                true => "GET",
                false => "GET,HEAD",
            };
            assert_eq!(a.header("allow"), Some(allow), "{request:?}");
        }
        if a.header("connection") == Some("close") {
            // a body left unread (the edge layer's rule)
            assert!(c.closed().await, "{request:?}");
        } else {
            // the connection goes on
            c.send(&poll_request("topics=t", "")).await;
            assert_eq!(c.answer().await.status, 200, "{request:?}");
        }
    }
    assert!(srv.metric("rowcast_rejected_total{reason=\"method_not_allowed\"}") >= 5.0);
    // a HEAD cannot open a WebSocket, and its answer does not offer one
    let head = reqwest::Client::new()
        .head(format!("{}/v1/ws", srv.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status().as_u16(), 405);
    assert_eq!(head.headers()["allow"], "GET");

    let headers: String = (0..200).map(|i| format!("x-{i}: y\r\n")).collect();
    // a head growing past hyper's 80 KiB buffer, in fewer than 100 headers
    // and not yet ended (a complete one read at once is parsed as it is)
    let big: String = (0..50)
        .map(|i| format!("x-{i}: {}\r\n", "v".repeat(2000)))
        .collect();
    let unended = poll_request("topics=t", &big);
    let unended = unended.strip_suffix("\r\n").unwrap_or(&unended);
    for (what, request, status) in [
        (
            "a 100 KB query",
            poll_request(&format!("topics=t&x={}", "q".repeat(100 * 1024)), ""),
            414,
        ),
        ("200 headers", poll_request("topics=t", &headers), 431),
        ("a 100 KB head, unended", unended.to_string(), 431),
        (
            "a Content-Length that is not a number",
            poll_request("topics=t", "content-length: abc\r\n"),
            400,
        ),
        (
            "two different Content-Lengths",
            poll_request("topics=t", "content-length: 0\r\ncontent-length: 1\r\n"),
            400,
        ),
    ] {
        let mut c = raw(&srv).await;
        c.send(&request).await;
        let a = c.answer().await;
        assert_eq!(a.status, status, "{what}");
        assert!(a.body.is_empty(), "{what}: {:?}", a.body);
        assert!(c.closed().await, "{what}");
    }
    srv.stop().await;
}

/// An SSE stream opens with its starting position as an `id:` without data
/// (EventSource's lastEventId, no event): a stream cut before its first event
/// resumes from there, and gets the change committed meanwhile. Before a
/// snapshot, that position resumes the whole snapshot. An empty
/// `Last-Event-ID` header does not hide the `cursor` parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_stream_opens_with_its_position_as_an_id() {
    let url = fresh_db().await;
    let srv = server(&url).await;
    let db = connect(&url).await;
    let open = |query: &'static str| {
        let srv = &srv;
        async move {
            let mut c = raw(srv).await;
            c.send(&format!(
                "GET /v1/events?{query} HTTP/1.1\r\nHost: x\r\n\r\n"
            ))
            .await;
            assert_eq!(c.head().await.0, 200);
            String::from_utf8(c.chunk().await.expect("the head")).expect("text")
        }
    };
    let head = open("topics=t").await;
    let id = head
        .split("\n\n")
        .find_map(|b| b.strip_prefix("id: "))
        .unwrap_or_else(|| panic!("no id: {head:?}"))
        .to_string();
    assert!(!head.contains("data:"), "{head:?}");
    emit(&db, "t", 7).await;
    let mut sse = SseClient::connect(&srv.base_url(), "topics=t", Some(&id)).await;
    assert_eq!(n(&next_event(&mut sse.rx).await), 7);
    let mut sse = SseClient::connect_with(
        &srv.base_url(),
        &format!("topics=t&cursor={id}"),
        &[("Last-Event-ID", "")],
    )
    .await;
    assert_eq!(
        n(&next_event(&mut sse.rx).await),
        7,
        "the empty header is none"
    );
    let head = open("topics=t&snapshot=true").await;
    let id = head
        .split("\n\n")
        .find_map(|b| b.strip_prefix("id: "))
        .unwrap_or_else(|| panic!("no id: {head:?}"))
        .to_string();
    let mut sse = SseClient::connect(&srv.base_url(), "topics=t", Some(&id)).await;
    assert_eq!(n(&next_event(&mut sse.rx).await), 7, "the snapshot, whole");
    emit(&db, "t", 8).await;
    assert_eq!(n(&next_event(&mut sse.rx).await), 8, "then what follows");
    srv.stop().await;
}

/// A request to a WebSocket endpoint that is not a WebSocket handshake (a
/// plain GET, a wrong version) is refused in JSON like every other error of
/// rowcast's, with the handshake's status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_websocket_handshake_answers_json() {
    let url = fresh_db().await;
    let srv = server(&url).await;
    let base = srv.base_url();
    let client = reqwest::Client::new();
    for path in ["/v1/ws?topics=t", "/socket.io/?EIO=4&transport=websocket"] {
        for headers in [
            vec![],
            vec![
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("Sec-WebSocket-Version", "8"),
            ],
        ] {
            let mut req = client.get(format!("{base}{path}"));
            for (k, v) in &headers {
                req = req.header(*k, *v);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 400, "{path} {headers:?}");
            assert_eq!(r.headers()["content-type"], "application/json");
            let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
            assert_eq!(v["error"], "bad_request", "{path}: {v}");
            assert!(v["message"].is_string());
        }
    }
    srv.stop().await;
}
