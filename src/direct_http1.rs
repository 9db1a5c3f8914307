//! HTTP/1.1 served without hyper for the two answers that wait: SSE streams
//! (`GET /v1/events`) and long polls (`GET /v1/poll`).
//!
//! Why: while an answer is pending, hyper keeps its HTTP/1 connection's read
//! buffer (8 KiB), its write buffer (8 KiB, allocated with the connection)
//! and about 2 KiB of connection state. For an idle SSE stream or long poll
//! that is the connection's whole life, and it was most of what one cost
//! (17 KiB of RSS for SSE, 28.5 KiB for a long poll, against 8.5 KiB for a
//! WebSocket, which hyper hands over after the upgrade). These requests are
//! the simplest HTTP there is (a GET without a body, answered with a stream),
//! so every connection's request heads are read here first: these two are
//! answered directly, and anything else goes to hyper with the bytes read so
//! far, for the rest of that connection.
//!
//! The contract, kept here:
//! - Served here: a complete, well-formed HTTP/1.1 `GET` of exactly
//!   `/v1/events` or `/v1/poll` (any query), without a body, `Upgrade` or
//!   `Expect`, with at most `MAX_HEADERS` headers, a head of at most
//!   `HEAD_MAX` bytes, and nothing pipelined behind it. Everything else
//!   (other paths and methods, HTTP/1.0, HTTP/2's preface, a malformed or
//!   oversized head) is hyper's, with its own limits and answers, exactly as
//!   on a connection this module never saw. Those answers are not rowcast's:
//!   a head hyper cannot take (malformed, a bad `Content-Length`, a target
//!   over 65,534 bytes, over 100 headers or 80 KiB: `http::H1_BUFFER_MAX`) gets hyper's 400,
//!   414 or 431 with an empty body, the one kind of error answer that is not
//!   JSON (README, "Limits and hostile input"); a head it takes goes to the
//!   router, whose refusals are (a method a route does not take included).
//! - The guarantees of hyper's path hold: the head must arrive within the
//!   socket's idle deadline (`sockets`: shedding and the idle limit apply
//!   while it is read), the same router answers (origin check, rejection
//!   counting, extractors), every write goes through the socket's write
//!   timeout, a client that hangs up while its answer is pending drops that
//!   answer at once (its slot and subscription with it), and a graceful stop
//!   closes idle connections at once and busy ones after their answer.
//! - Answers are HTTP/1.1 with lower-case header names: `content-length`
//!   when the body's size is known, else `transfer-encoding: chunked`; a
//!   `date`; and `connection: close` (then the connection closes) when the
//!   client asked for it. Kept-alive connections go on to their next request.
//! - Between requests and while an answer waits, a connection holds no
//!   buffer: the head is read into a buffer allocated when bytes arrive and
//!   freed once parsed (header values are copied out of it).
//! - A request answered here carries `RawCapable`; an answer that carries a
//!   `TakeOver` (an SSE stream, `transport::sse::direct`) gets its head
//!   written here (chunked, `connection: close`), and then the connection's
//!   raw socket goes to that task for the rest of its life: the task writes
//!   the body's chunks and its last chunk, and the connection closes after
//!   it. The socket stays busy (never idle-shed) meanwhile.

use crate::shutdown::Shutdown;
use crate::sockets::{ClientSocket, Next, RawSocket, Socket};
use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri, Version};
use axum::Router;
use bytes::Bytes;
use http_body::Body as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower::ServiceExt;

/// The longest request head answered here; a longer one goes to hyper.
const HEAD_MAX: usize = 8 * 1024;
/// The most headers a request answered here may have; more go to hyper.
const MAX_HEADERS: usize = 48;
/// The paths whose answers wait.
const PATHS: [&str; 2] = ["/v1/events", "/v1/poll"];
/// Read at most this much at once (on the stack, then copied).
const READ_CHUNK: usize = 2048;

/// The connection as this module uses it: writes (under the socket's write
/// timeout) and the TCP stream itself, for readiness and non-blocking reads.
pub(crate) trait Wire: AsyncWrite + Unpin {
    fn tcp(&self) -> &TcpStream;
}

/// How `serve` leaves a connection.
pub(crate) enum Handoff {
    /// The connection is over: close it.
    Closed,
    /// Hyper serves the rest, starting with these bytes already read.
    Hyper(Bytes),
    /// The answer's task takes the raw socket (its head is written).
    TakeOver(SocketTask),
}

/// The rest of a connection, run on its raw socket once the answer's head
/// is written.
pub(crate) type SocketTask =
    Box<dyn FnOnce(RawSocket) -> Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send>;

/// A response extension asking for the raw socket (see the module's
/// contract). Taken once; `Clone` and `Sync` as extensions must be.
#[derive(Clone)]
pub(crate) struct TakeOver(Arc<std::sync::Mutex<Option<SocketTask>>>);

impl TakeOver {
    pub(crate) fn new(task: SocketTask) -> TakeOver {
        TakeOver(Arc::new(std::sync::Mutex::new(Some(task))))
    }

    fn take(&self) -> Option<SocketTask> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// A request extension: the request is answered here, so its answer may
/// take the raw socket over (`TakeOver`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawCapable;

/// Answers the connection's requests for as long as they are SSE streams and
/// long polls (see the module's contract).
pub(crate) async fn serve<W: Wire>(
    wire: &mut W,
    router: &Router,
    peer: SocketAddr,
    socket: &Arc<Socket>,
    stop: &mut Shutdown,
) -> Handoff {
    let mut buf = Vec::new();
    loop {
        // boxed: waiting for a head (idle deadline, shedding, stop) takes more
        // state than waiting for an answer, and is needed only between requests
        let (answering, close) = match Box::pin(read_head(wire.tcp(), &mut buf, socket, stop)).await
        {
            Head::Closed => return Handoff::Closed,
            Head::Hyper => return Handoff::Hyper(Bytes::from(buf)),
            Head::Direct(parsed) => route(router, parsed, peer, socket),
        };
        let busy = socket.begin_request();
        let after = answer(wire, answering, close).await;
        if let After::TakeOver(..) = after {
            // the task owns the socket for good: never idle again
            socket.upgraded();
        }
        drop(busy);
        match after {
            After::KeepAlive(pipelined) => buf = pipelined,
            After::Close => return Handoff::Closed,
            // boxed: a rare path, kept out of every pending answer's future
            After::TakeOver(task, head) => return Box::pin(take_over(wire, task, head)).await,
        }
        // a stopping server answers what it was asked, then hangs up
        if stop.is_shutdown() {
            return Handoff::Closed;
        }
    }
}

enum Head {
    Closed,
    /// `buf` holds what was read: hyper's from here.
    Hyper,
    Direct(Box<Parsed>),
}

/// Reads one request head into `buf` (which may already hold the start of
/// it), while the socket is idle: its deadline, shedding and a graceful stop
/// end the connection as they end one of hyper's.
async fn read_head(
    tcp: &TcpStream,
    buf: &mut Vec<u8>,
    socket: &Socket,
    stop: &mut Shutdown,
) -> Head {
    loop {
        if !buf.is_empty() {
            match parse(buf) {
                Parse::Partial if buf.len() < HEAD_MAX => {}
                Parse::Partial | Parse::Hyper => return Head::Hyper,
                Parse::Direct(req) => {
                    *buf = Vec::new();
                    return Head::Direct(req);
                }
            }
        }
        let idle_at = match socket.next() {
            Next::Shed => {
                tracing::debug!("shed to make room");
                return Head::Closed;
            }
            Next::IdleUntil(at) => Some(at),
            Next::Busy => None,
        };
        tokio::select! {
            r = tcp.readable() => {
                if r.is_err() {
                    return Head::Closed;
                }
            }
            _ = stop.recv() => return Head::Closed,
            _ = socket.changed() => continue,
            _ = tokio::time::sleep_until(idle_at.unwrap_or_else(Instant::now)), if idle_at.is_some() => {
                if socket.idle_expired(Instant::now()) {
                    tracing::debug!("no request within the header timeout: closing");
                    return Head::Closed;
                }
                continue;
            }
        }
        match read_some(tcp, buf) {
            Ok(0) => return Head::Closed,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Head::Closed,
        }
    }
}

/// Appends what the socket has now to `buf`, which grows only by what was
/// read: readiness can be stale, and a connection that turns out to have
/// nothing to read must not keep a buffer reserved for it.
fn read_some(tcp: &TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; READ_CHUNK];
    let n = tcp.try_read(&mut chunk)?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// A request this module answers.
struct Parsed {
    req: Request<Body>,
    /// The client sent `Connection: close`.
    close: bool,
}

enum Parse {
    /// The head is not complete yet.
    Partial,
    /// Not a request answered here.
    Hyper,
    Direct(Box<Parsed>),
}

/// Reads `buf` as one request head (see the module's contract for what is
/// answered here). Header values are copied: nothing keeps `buf` alive.
fn parse(buf: &[u8]) -> Parse {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let len = match head.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Err(_) => return Parse::Hyper,
    };
    match build(&head, len == buf.len()) {
        Some(parsed) => Parse::Direct(Box::new(parsed)),
        None => Parse::Hyper,
    }
}

/// The request, when it is one answered here.
fn build(head: &httparse::Request<'_, '_>, alone: bool) -> Option<Parsed> {
    let target = head.path?;
    let path = target.split('?').next().unwrap_or_default();
    if !alone || head.method != Some("GET") || head.version != Some(1) || !PATHS.contains(&path) {
        return None;
    }
    let uri = Uri::try_from(target).ok()?;
    let mut headers = HeaderMap::with_capacity(head.headers.len());
    let mut close = false;
    for h in head.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        match name {
            header::CONTENT_LENGTH if value.as_bytes() != b"0" => return None,
            header::TRANSFER_ENCODING | header::UPGRADE | header::EXPECT => return None,
            header::CONNECTION => {
                for token in value.to_str().ok()?.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("upgrade") {
                        return None;
                    }
                    close |= token.eq_ignore_ascii_case("close");
                }
            }
            _ => {}
        }
        headers.append(name, value);
    }
    let mut req = Request::new(Body::empty());
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Some(Parsed { req, close })
}

/// What follows an answer.
enum After {
    /// Read the next request, which starts with these bytes.
    KeepAlive(Vec<u8>),
    Close,
    /// Write this head, then the socket goes to this task.
    TakeOver(SocketTask, Vec<u8>),
}

/// The router's answer to a request, boxed: its future is large, and needed
/// only until the answer's head is known.
type Answering = Pin<Box<tower::util::Oneshot<Router, Request<Body>>>>;

/// Hands the request to the router, with what hyper's path adds to it.
fn route(
    router: &Router,
    parsed: Box<Parsed>,
    peer: SocketAddr,
    socket: &Arc<Socket>,
) -> (Answering, bool) {
    let Parsed { mut req, close } = *parsed;
    req.extensions_mut().insert(ConnectInfo(peer));
    req.extensions_mut()
        .insert(ClientSocket(Some(Arc::clone(socket))));
    req.extensions_mut().insert(RawCapable);
    (Box::pin(router.clone().oneshot(req)), close)
}

/// Waits for the router's answer and writes it. Large values (the request,
/// the response head) are dropped before the waits, so that a pending answer
/// holds only its body.
async fn answer<W: Wire>(wire: &mut W, answering: Answering, close: bool) -> After {
    let mut hangup = Hangup::default();
    let (mut body, mut out, framing, close) = {
        let response = tokio::select! {
            r = answering => match r {
                Ok(r) => r,
                Err(never) => match never {},
            },
            () = hangup.wait(wire.tcp()) => return After::Close,
        };
        if let Some(task) = response
            .extensions()
            .get::<TakeOver>()
            .and_then(TakeOver::take)
        {
            // the body is the task's: chunked, and the connection closes after it
            let out = head(
                response.status(),
                response.headers(),
                Framing::Chunked,
                true,
            );
            return After::TakeOver(task, out);
        }
        prepare(response, close)
    };
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    let mut end = framing == Framing::None || left == 0 && framing != Framing::Chunked;
    loop {
        // everything ready now goes out in one write
        while !end {
            match next_frame(&mut body).now() {
                Some(Frame::Data(data)) => {
                    if !framing.push(&mut out, &data, &mut left) {
                        return After::Close;
                    }
                }
                Some(Frame::Trailers) => {}
                Some(Frame::End) => end = true,
                Some(Frame::Failed) => return After::Close,
                None => break,
            }
        }
        if end {
            if framing == Framing::Chunked {
                out.extend_from_slice(b"0\r\n\r\n");
            }
            if left != 0 {
                // the body was shorter than it said: the client waits for bytes that never come
                tracing::debug!(missing = left, "answer body ended early");
                return After::Close;
            }
        }
        if !out.is_empty() {
            if wire.write_all(&out).await.is_err() || wire.flush().await.is_err() {
                return After::Close;
            }
            out = Vec::new();
        }
        if end {
            break;
        }
        let frame = tokio::select! {
            f = next_frame(&mut body) => f,
            () = hangup.wait(wire.tcp()) => return After::Close,
        };
        match frame {
            Frame::Data(data) => {
                if !framing.push(&mut out, &data, &mut left) {
                    return After::Close;
                }
            }
            Frame::Trailers => {}
            Frame::End => end = true,
            Frame::Failed => return After::Close,
        }
    }
    if close {
        After::Close
    } else {
        After::KeepAlive(hangup.pipelined)
    }
}

/// Writes the head of an answer whose body the task writes on the raw socket.
async fn take_over<W: Wire>(wire: &mut W, task: SocketTask, head: Vec<u8>) -> Handoff {
    if wire.write_all(&head).await.is_err() || wire.flush().await.is_err() {
        return Handoff::Closed;
    }
    Handoff::TakeOver(task)
}

/// The answer's body, its head (to be written), how its body is framed and
/// whether the connection closes after it.
fn prepare(response: axum::response::Response, close: bool) -> (Body, Vec<u8>, Framing, bool) {
    let (parts, body) = response.into_parts();
    let close = close || connection_close(&parts.headers);
    let framing = if bodiless(parts.status) {
        Framing::None
    } else {
        match body.size_hint().exact() {
            Some(n) => Framing::Length(n),
            None => Framing::Chunked,
        }
    };
    let out = head(parts.status, &parts.headers, framing, close);
    (body, out, framing, close)
}

/// Statuses whose answers carry no body (nor its length).
fn bodiless(status: StatusCode) -> bool {
    status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// The handler asked for the connection to close after its answer.
fn connection_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("close"))
}

/// How the body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

impl Framing {
    /// Appends one data frame; false when it overruns the announced length.
    fn push(self, out: &mut Vec<u8>, data: &[u8], left: &mut u64) -> bool {
        if data.is_empty() {
            return true;
        }
        match self {
            Framing::None => {}
            Framing::Length(_) => {
                let n = data.len() as u64;
                if n > *left {
                    tracing::debug!("answer body longer than its length");
                    return false;
                }
                *left -= n;
                out.extend_from_slice(data);
            }
            Framing::Chunked => crate::change::http_chunk_into(out, data),
        }
        true
    }
}

/// The status line and headers. Framing headers the handler set are
/// replaced by the framing actually used.
fn head(status: StatusCode, headers: &HeaderMap, framing: Framing, close: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + headers.len() * 32);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if matches!(
            *name,
            header::CONTENT_LENGTH | header::TRANSFER_ENCODING | header::CONNECTION
        ) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::None => {}
        Framing::Length(n) => out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes()),
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if !headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// One step of the answer's body.
enum Frame {
    Data(Bytes),
    Trailers,
    End,
    Failed,
}

/// The body's next frame.
fn next_frame(body: &mut Body) -> NextFrame<'_> {
    NextFrame(body)
}

struct NextFrame<'a>(&'a mut Body);

impl NextFrame<'_> {
    /// The next frame if the body has one ready now (`None`: not yet).
    fn now(self) -> Option<Frame> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut this = self;
        match std::future::Future::poll(Pin::new(&mut this), &mut cx) {
            std::task::Poll::Ready(f) => Some(f),
            std::task::Poll::Pending => None,
        }
    }
}

impl std::future::Future for NextFrame<'_> {
    type Output = Frame;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Frame> {
        Pin::new(&mut *self.0).poll_frame(cx).map(|f| match f {
            None => Frame::End,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "answer body failed");
                Frame::Failed
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => Frame::Data(data),
                Err(_) => Frame::Trailers,
            },
        })
    }
}

/// Notices a client that hangs up while its answer is pending, as hyper
/// does, so that the answer (a long poll's slot, a stream's subscription) is
/// dropped at once rather than at its next write. Bytes that arrive
/// meanwhile (a pipelined request) are kept for after the answer, up to
/// `HEAD_MAX`; beyond that the socket is not read until the answer is out.
#[derive(Default)]
struct Hangup {
    pipelined: Vec<u8>,
}

impl Hangup {
    /// Completes when the client closed its side or the socket failed.
    /// (Polled by hand: an `async` wait on readiness would be 150 bytes of
    /// every pending answer.)
    fn wait<'a>(&'a mut self, tcp: &'a TcpStream) -> HangupWait<'a> {
        HangupWait { hangup: self, tcp }
    }
}

struct HangupWait<'a> {
    hangup: &'a mut Hangup,
    tcp: &'a TcpStream,
}

impl std::future::Future for HangupWait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let this = self.get_mut();
        loop {
            if this.hangup.pipelined.len() >= HEAD_MAX {
                // enough kept: not read (nor watched) until the answer is out
                return std::task::Poll::Pending;
            }
            match this.tcp.poll_read_ready(cx) {
                std::task::Poll::Pending => return std::task::Poll::Pending,
                std::task::Poll::Ready(Err(_)) => return std::task::Poll::Ready(()),
                std::task::Poll::Ready(Ok(())) => {}
            }
            match read_some(this.tcp, &mut this.hangup.pipelined) {
                Ok(0) => return std::task::Poll::Ready(()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return std::task::Poll::Ready(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(raw: &str) -> Option<(Request<Body>, bool)> {
        match parse(raw.as_bytes()) {
            Parse::Direct(p) => Some((p.req, p.close)),
            _ => None,
        }
    }

    fn is_hyper(raw: &str) -> bool {
        matches!(parse(raw.as_bytes()), Parse::Hyper)
    }

    #[test]
    fn sse_and_poll_gets_are_answered_here() {
        let (req, close) =
            parsed("GET /v1/events?topics=a,b HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 123\r\n\r\n")
                .unwrap();
        assert_eq!(req.uri().path(), "/v1/events");
        assert_eq!(req.uri().query(), Some("topics=a,b"));
        assert_eq!(req.headers()["last-event-id"], "123");
        // copied out: the head's buffer is not kept alive by the request
        let raw = "GET /v1/events?topics=a HTTP/1.1\r\nLast-Event-ID: 123\r\n\r\n";
        let Parse::Direct(p) = parse(raw.as_bytes()) else {
            panic!("answered here")
        };
        let value = p.req.headers()["last-event-id"].as_bytes().as_ptr_range();
        let buf = raw.as_bytes().as_ptr_range();
        assert!(value.end <= buf.start || value.start >= buf.end);
        assert!(!close);
        let (req, close) = parsed(
            "\r\nGET /v1/poll?topics=a&wait=20 HTTP/1.1\r\nconnection: keep-alive, Close\r\ncontent-length: 0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(req.uri().path(), "/v1/poll");
        assert!(close);
    }

    #[test]
    fn everything_else_is_hyper_s() {
        for raw in [
            "GET /v1/ws?topics=a HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "GET /v1/events?topics=a HTTP/1.1\r\nConnection: upgrade\r\n\r\n",
            "GET /healthz HTTP/1.1\r\n\r\n",
            "GET /v1/events/ HTTP/1.1\r\n\r\n",
            "POST /v1/poll?topics=a HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}",
            "HEAD /v1/poll?topics=a HTTP/1.1\r\n\r\n",
            "GET /v1/poll?topics=a HTTP/1.0\r\n\r\n",
            "GET /v1/poll?topics=a HTTP/1.1\r\ncontent-length: 3\r\n\r\n",
            "GET /v1/poll?topics=a HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            "GET /v1/poll?topics=a HTTP/1.1\r\nexpect: 100-continue\r\n\r\n",
            // pipelined: the second request is behind the first
            "GET /v1/poll?topics=a HTTP/1.1\r\n\r\nGET /v1/poll?topics=a HTTP/1.1\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET /v1/poll?topics=a HTTP/1.1\r\nbad header\r\n\r\n",
        ] {
            assert!(is_hyper(raw), "{raw:?}");
        }
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("x-{i}: y\r\n"))
            .collect();
        assert!(is_hyper(&format!(
            "GET /v1/poll?topics=a HTTP/1.1\r\n{many}\r\n"
        )));
    }

    #[test]
    fn a_partial_head_waits_for_more() {
        assert!(matches!(
            parse(b"GET /v1/poll?topics=a HTTP/1.1\r\nHost: x\r\n"),
            Parse::Partial
        ));
    }

    #[test]
    fn answers_are_framed_for_http_1_1() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        let h = String::from_utf8(head(StatusCode::OK, &headers, Framing::Chunked, false)).unwrap();
        assert!(
            h.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"),
            "{h}"
        );
        assert!(
            h.contains("transfer-encoding: chunked\r\n") && h.contains("\r\ndate: "),
            "{h}"
        );
        assert!(
            !h.contains("content-length") && !h.contains("connection"),
            "{h}"
        );
        assert!(h.ends_with("\r\n\r\n"));
        let h = String::from_utf8(head(
            StatusCode::GONE,
            &HeaderMap::new(),
            Framing::Length(12),
            true,
        ))
        .unwrap();
        assert!(h.starts_with("HTTP/1.1 410 Gone\r\n"), "{h}");
        assert!(
            h.contains("content-length: 12\r\n") && h.contains("connection: close\r\n"),
            "{h}"
        );

        let mut out = Vec::new();
        let mut left = 0;
        assert!(Framing::Chunked.push(&mut out, b"retry: 2000\n\n", &mut left));
        assert_eq!(out, b"d\r\nretry: 2000\n\n\r\n");
        let mut out = Vec::new();
        let mut left = 3;
        assert!(Framing::Length(3).push(&mut out, b"ab", &mut left));
        assert!(!Framing::Length(3).push(&mut out, b"cd", &mut left));
    }
}
