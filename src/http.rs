//! The accept loop and each connection's life.
//!
//! `axum::serve` has no header-read timeout, no deadline for a socket that
//! never sends a byte, and spins on `EMFILE`; rowcast drives hyper itself so
//! that every socket an unauthenticated peer can open is bounded (see
//! `sockets` for the contract: idle deadline, global cap, shedding).
//!
//! A connection's request heads are read first by `direct_http1`, which
//! answers SSE streams and long polls itself (hyper would keep 16 KiB of
//! buffers per connection for as long as those answers wait) and hands
//! anything else to hyper, with the bytes it read, for the rest of the
//! connection.
//!
//! HTTP/2 without TLS (prior knowledge, "h2c") is off unless `--http2` is
//! given: browsers only speak HTTP/2 over TLS, which a proxy in front of
//! rowcast terminates, so h2c only serves non-browser clients, and an h2
//! stream whose flow-control window stays at 0 is invisible at the socket
//! level (its bytes are never written), so `--write-timeout` cannot cut it.
//! With `--http2`, the idle deadline, the socket cap, the request limits and
//! the socket-level write timeout hold; per-stream flow-control stalls do not
//! (README, "Limits and hostile input").

use crate::direct_http1::Handoff;
use crate::shutdown::Shutdown;
use crate::sockets::{ClientSocket, Next, OpenSocket, RawSocket, Socket, Sockets};
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::connect_info::ConnectInfo;
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tower::ServiceExt;
use tracing::Instrument;

/// How the accept loop treats its connections.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HttpOptions {
    /// The request head must be complete this long after the socket was
    /// accepted or last idle; also the idle limit of every socket.
    pub header_read_timeout: Duration,
    /// Socket-level write timeout (`WriteTimeout`).
    pub write_timeout: Duration,
    /// Also serve HTTP/2 with prior knowledge (h2c).
    pub http2: bool,
    /// A connection whose written bytes stay unacknowledged this long is
    /// dropped by the kernel (`sockets::give_up_unacknowledged`).
    pub unacknowledged_timeout: Duration,
}

/// What hyper may buffer per HTTP/1 connection (its default is ~400 KiB),
/// which bounds a request head: the longest rowcast takes is a 64 KiB URL
/// (hyper refuses longer request targets, 414) beside a token and the usual
/// headers. A socket trickling a head holds at most this until
/// `--header-timeout`, not 400 KiB (2,500 such sockets held ~1 GB).
const H1_BUFFER_MAX: usize = 80 * 1024;

/// Serves `router` until `stop` fires, then waits (bounded by the caller) for
/// in-flight requests. Each request carries `ConnectInfo<SocketAddr>` and the
/// `ClientSocket` it arrived on.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    opts: HttpOptions,
    sockets: Arc<Sockets>,
    mut stop: Shutdown,
) -> std::io::Result<()> {
    let mut h1 = hyper::server::conn::http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        .max_buf_size(H1_BUFFER_MAX);
    let h2 = opts.http2.then(|| {
        let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)));
        b
    });
    let hyper = Arc::new(Hyper { h1, h2 });
    // every driver holds a clone; when all are gone, recv() returns None
    let (running, mut all_done) = mpsc::channel::<()>(1);
    let mut errors = AcceptErrors::default();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.recv() => break,
        };
        let (stream, peer): (_, SocketAddr) = match accepted {
            Ok(x) => {
                errors.streak = 0;
                x
            }
            Err(e) => {
                errors.failed(e, &sockets).await;
                continue;
            }
        };
        let Some(socket) = sockets.register(peer.ip()) else {
            tracing::debug!(%peer, "socket cap reached and nothing idle to shed: closing");
            continue;
        };
        // Events are small frames written as they come: with Nagle's algorithm a
        // frame written while the previous one is unacknowledged waits for the
        // client's delayed ACK (40 ms on Linux) — that was the bench's p90.
        let _ = stream.set_nodelay(true);
        crate::sockets::give_up_unacknowledged(&stream, opts.unacknowledged_timeout);
        let wire = WriteTimeout::new(stream, opts.write_timeout, Arc::clone(&socket));
        let conn = Conn {
            router: router.clone(),
            peer,
            socket,
            stop: stop.clone(),
            hyper: Arc::clone(&hyper),
            _running: running.clone(),
        };
        let span = tracing::debug_span!("http", %peer);
        tokio::spawn(conn.run(wire).instrument(span));
    }
    drop(listener);
    drop(running);
    let _ = all_done.recv().await;
    Ok(())
}

/// How hyper is set up for the connections it serves: HTTP/1, and with
/// `--http2` also h2 with prior knowledge, told apart by the connection's
/// first bytes (`H2_PREFACE`). Not hyper-util's `auto` builder: it serves
/// HTTP/1 on a stream of its own, so a WebSocket upgrade would not give
/// rowcast its socket back (`into_raw`).
struct Hyper {
    h1: hyper::server::conn::http1::Builder,
    h2: Option<hyper::server::conn::http2::Builder<TokioExecutor>>,
}

/// How an h2 connection with prior knowledge starts; as much of it as
/// tells it from any HTTP/1 request (`direct_http1` hands such a connection
/// over as soon as it reads a version other than HTTP/1.x).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2";

/// One accepted connection, until it closes.
struct Conn {
    router: Router,
    peer: SocketAddr,
    socket: Arc<Socket>,
    stop: Shutdown,
    hyper: Arc<Hyper>,
    /// Held until the connection ends: `serve` waits for every clone.
    _running: mpsc::Sender<()>,
}

impl Conn {
    /// SSE streams and long polls are answered directly (`direct_http1`),
    /// everything else by hyper, which then keeps the connection. Not an
    /// `async fn`: one taking `mut self` would hold the connection twice.
    fn run(self, wire: WriteTimeout<TcpStream>) -> impl Future<Output = ()> {
        let (mut conn, mut wire) = (self, wire);
        async move {
            let read = match crate::direct_http1::serve(
                &mut wire,
                &conn.router,
                conn.peer,
                &conn.socket,
                &mut conn.stop,
            )
            .await
            {
                Handoff::Closed => return,
                Handoff::Hyper(read) => read,
                Handoff::TakeOver(task) => {
                    // `conn` (its place among the running connections) stays
                    // until the task is done
                    let rest = task(wire.into_raw(Bytes::new()));
                    return rest.await;
                }
            };
            conn.into_hyper(read, wire).await
        }
    }

    /// Boxed: hyper's connection state is large, and a connection answered
    /// directly (an idle SSE stream or long poll) must not carry its size.
    fn into_hyper(
        self,
        read: Bytes,
        wire: WriteTimeout<TcpStream>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(self.with_hyper(Replay::new(read, wire)))
    }

    async fn with_hyper(self, wire: Replay<WriteTimeout<TcpStream>>) {
        let h2 = wire.read.starts_with(H2_PREFACE);
        let Conn {
            router,
            peer,
            socket,
            stop,
            hyper,
            _running,
        } = self;
        socket.served_by_hyper();
        let io = TokioIo::new(wire);
        let svc = service(router, peer, Arc::clone(&socket));
        match &hyper.h2 {
            Some(h2_builder) if h2 => {
                let conn = h2_builder.serve_connection(io, svc);
                drive(conn, |c| c.graceful_shutdown(), socket, stop).await
            }
            // without --http2, hyper's HTTP/1 answers the preface 400
            _ => {
                let conn = hyper.h1.serve_connection(io, svc).with_upgrades();
                drive(conn, |c| c.graceful_shutdown(), socket, stop).await
            }
        }
    }
}

/// The upgraded connection's own socket, when hyper served it from this
/// module's accept loop (always, for `serve`'s connections).
pub(crate) fn into_raw(
    upgraded: hyper::upgrade::Upgraded,
) -> Result<RawSocket, hyper::upgrade::Upgraded> {
    let parts = upgraded.downcast::<TokioIo<Replay<WriteTimeout<TcpStream>>>>()?;
    let Replay { read, inner } = parts.io.into_inner();
    // hyper's buffer holds what it read past the request, `read` what it
    // never asked for. Copied: even empty, a slice of hyper's 8 KiB read
    // buffer would keep all of it for the connection's life.
    let read = if parts.read_buf.is_empty() && read.is_empty() {
        Bytes::new()
    } else {
        let mut both = bytes::BytesMut::with_capacity(parts.read_buf.len() + read.len());
        both.extend_from_slice(&parts.read_buf);
        both.extend_from_slice(&read);
        both.freeze()
    };
    Ok(inner.into_raw(read))
}

/// A connection's stream that first gives back the bytes `direct_http1`
/// already read, so that hyper sees the connection from its first byte.
struct Replay<S> {
    read: Bytes,
    inner: S,
}

impl<S> Replay<S> {
    fn new(read: Bytes, inner: S) -> Replay<S> {
        Replay { read, inner }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.read.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.read.len().min(buf.remaining());
        buf.put_slice(&self.read.split_to(n));
        if self.read.is_empty() {
            // frees the buffer
            self.read = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The per-request service: marks the socket busy for as long as the answer
/// streams, and an upgraded socket busy for good.
fn service(
    router: Router,
    peer: SocketAddr,
    socket: Arc<Socket>,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = hyper::Response<Body>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<hyper::Response<Body>, std::convert::Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        let busy = socket.begin_request();
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut()
            .insert(ClientSocket(Some(Arc::clone(&socket))));
        let answer = router.clone().oneshot(req);
        let socket = Arc::clone(&socket);
        async move {
            let resp = answer.await?;
            if resp.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
                socket.upgraded();
                return Ok(resp);
            }
            Ok(resp.map(|body| Body::new(Busy { body, _busy: busy })))
        }
    })
}

/// A response body that keeps its socket busy until it is dropped, which
/// hyper does once the body has been written out (or the connection ends).
struct Busy {
    body: Body,
    _busy: crate::sockets::RequestGuard,
}

impl HttpBody for Busy {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Runs one connection until it ends, is shed, stays idle past the limit, or
/// (gracefully) the server stops. Dropping `conn` closes the socket.
async fn drive<C, E>(conn: C, graceful: fn(Pin<&mut C>), socket: Arc<Socket>, mut stop: Shutdown)
where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        let idle_at = match socket.next() {
            Next::Shed => {
                tracing::debug!("shed to make room");
                return;
            }
            Next::IdleUntil(at) => Some(at),
            Next::Busy => None,
        };
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    // hyper's own header timeout may end a silent socket a
                    // moment before ours does: count it the same way
                    if !socket.idle_expired(Instant::now()) {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                return;
            }
            _ = stop.recv(), if !stopping => {
                stopping = true;
                graceful(conn.as_mut());
            }
            _ = socket.changed() => {}
            _ = tokio::time::sleep_until(idle_at.unwrap_or_else(Instant::now)), if idle_at.is_some() => {
                if socket.idle_expired(Instant::now()) {
                    tracing::debug!("no request within the header timeout: closing");
                    return;
                }
            }
        }
    }
}

/// `accept` failures: shed, back off, and log without flooding.
struct AcceptErrors {
    /// Consecutive failures with nothing to shed (the backoff exponent).
    streak: u32,
    logged: crate::logging::Throttle,
}

/// At most one accept-failure log line per this interval.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

impl Default for AcceptErrors {
    fn default() -> AcceptErrors {
        AcceptErrors {
            streak: 0,
            logged: crate::logging::Throttle::new(ACCEPT_LOG_EVERY),
        }
    }
}

impl AcceptErrors {
    async fn failed(&mut self, e: std::io::Error, sockets: &Sockets) {
        use std::io::ErrorKind::*;
        // the peer gave up between SYN and accept: nothing is wrong here
        if matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted) {
            return;
        }
        sockets.metrics.accept_errors.inc();
        if let Some(left_out) = self.logged.ready() {
            tracing::warn!(
                error = %e,
                open_sockets = sockets.open(),
                similar_errors_not_logged = left_out,
                "accept failed; shedding idle connections (rowcast_accept_errors_total counts every failure)"
            );
        }
        // Out of descriptors (EMFILE/ENFILE) or memory: an idle socket makes
        // room, and the next accept goes on at once. With nothing idle, every
        // descriptor serves a request: back off instead of spinning.
        if sockets.shed_oldest() {
            sockets.released(Duration::from_millis(100)).await;
        } else {
            let pause = Duration::from_millis(10) * 2u32.pow(self.streak.min(7));
            self.streak += 1;
            tokio::time::sleep(pause.min(Duration::from_secs(1))).await;
        }
    }
}

/// A socket whose writes fail once they have made no progress for `limit`,
/// and whose drop releases its place in the `Sockets` registry.
///
/// Why: a client that stops reading fills its TCP window, and from then on the
/// connection's writes stay pending forever. For SSE nothing above the socket
/// can notice (the HTTP stack simply stops polling the body stream), so the
/// connection, its subscription and its queue would live until the kernel
/// gives up, hours later. Failing the write makes hyper close the connection,
/// which drops the stream and frees everything; the client resumes by cursor.
///
/// The timeout is counted in `rowcast_slow_consumer_drops_total` under the
/// transport whose handler claimed the socket (`ClientSocket::serves`): an
/// SSE stream, a long poll's answer, or a WebSocket whose own frame-level
/// timeout did not fire first. Other requests (`/metrics`) are not counted.
pub(crate) struct WriteTimeout<S> {
    inner: S,
    limit: Duration,
    /// Armed while a write is pending; reset by any progress.
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// Declared last, so dropped after `inner`: the registry learns that the
    /// descriptor is free only once it is.
    socket: OpenSocket,
}

impl WriteTimeout<TcpStream> {
    /// The socket itself, its place in the registry, and `read`: the bytes
    /// already read past the request.
    pub(crate) fn into_raw(self, read: Bytes) -> RawSocket {
        let WriteTimeout { inner, socket, .. } = self;
        RawSocket {
            tcp: inner,
            read,
            open: socket,
        }
    }
}

impl<S> WriteTimeout<S> {
    pub(crate) fn new(inner: S, limit: Duration, socket: Arc<Socket>) -> WriteTimeout<S> {
        WriteTimeout {
            inner,
            limit,
            stalled: None,
            socket: OpenSocket::new(socket),
        }
    }

    /// Turns a pending write into an error once it has been pending for `limit`.
    fn pending<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<T>> {
        use std::future::Future;
        let limit = self.limit;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => {
                tracing::debug!(?limit, "client socket accepted nothing: closing");
                if let Some(c) = self.socket.stalled_counter() {
                    c.inc();
                }
                std::task::Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "client stopped reading (write timeout)",
                )))
            }
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    fn progress<T>(
        &mut self,
        r: std::task::Poll<std::io::Result<T>>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<T>> {
        match r {
            std::task::Poll::Pending => self.pending(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl crate::direct_http1::Wire for WriteTimeout<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        &self.inner
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteTimeout<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteTimeout<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(r, cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(r, cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::future_size::of2;

    /// A connection answered directly (an idle SSE stream or long poll) is
    /// one task holding this future for its whole life: it must not carry
    /// hyper's connection state (boxed, `Conn::into_hyper`), which was most of
    /// what such a connection cost (README, "Performance"). 576 bytes today.
    #[test]
    fn a_directly_answered_connection_is_small() {
        let task = of2(Conn::run);
        assert!(task <= 640, "Conn::run's future is {task} bytes");
        assert!(
            task < of2(Conn::with_hyper),
            "hyper's connection is inline in every connection's task"
        );
    }
}
