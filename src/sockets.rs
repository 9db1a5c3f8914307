//! Every accepted TCP connection, from `accept` to the close of its file
//! descriptor, and what bounds them before any request has been made.
//!
//! Why this exists: the limits of `access` (`--max-connections`,
//! `--max-connections-per-ip`) apply to requests. A peer that connects and
//! sends nothing never makes one, so without this registry a silent socket
//! would hold a file descriptor forever, and enough of them would leave the
//! process unable to accept anyone (`EMFILE`), `/healthz` included.
//!
//! The contract, kept here:
//! - A socket is *idle* while no request is in flight on it: before its first
//!   request, and between two requests of a keep-alive connection. An idle
//!   socket is closed once it has been idle for the idle limit
//!   (`--header-timeout`): that is the deadline for the first request bytes,
//!   and the idle timeout of kept-alive HTTP/1 and HTTP/2 connections alike.
//! - Every socket, idle or not, counts against one global cap (`--max-sockets`).
//!   A socket accepted at the cap, or an `accept` failing for lack of file
//!   descriptors, sheds the *oldest idle* socket. Sockets with a request in
//!   flight (a WebSocket, an SSE stream, a long poll) are never shed: those are
//!   bounded by the request limits instead. With no idle socket to shed, the
//!   newcomer is the one closed.
//! - A socket upgraded to WebSocket is never idle again: the session owns it.

use prometheus::{IntCounter, IntGauge};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Counters of the registry (`rowcast_sockets`, `rowcast_sockets_closed_total`).
#[derive(Clone)]
pub(crate) struct SocketMetrics {
    pub open: IntGauge,
    /// Closed because no request came within the idle limit.
    pub closed_idle: IntCounter,
    /// Closed to make room: at the cap, or out of file descriptors.
    pub shed: IntCounter,
    pub accept_errors: IntCounter,
    /// Socket-level write timeouts, by the transport that owned the connection.
    pub stalled: [IntCounter; crate::metrics::Transport::ALL.len()],
}

impl SocketMetrics {
    /// The handles of one listener's registry, from the server's metrics.
    pub(crate) fn new(m: &crate::metrics::Metrics) -> SocketMetrics {
        SocketMetrics {
            open: m.sockets.clone(),
            closed_idle: m.sockets_closed.with_label_values(&["idle"]),
            shed: m.sockets_closed.with_label_values(&["shed"]),
            accept_errors: m.accept_errors.clone(),
            stalled: crate::metrics::Transport::ALL
                .map(|t| m.slow_consumer_drops.with_label_values(&[t.as_str()])),
        }
    }
}

/// All sockets of one listener.
pub(crate) struct Sockets {
    max: usize,
    idle_limit: Duration,
    open: AtomicUsize,
    next_id: AtomicU64,
    /// Idle sockets by (idle since, id): the first entry is the one to shed.
    idle: Mutex<BTreeMap<(Instant, u64), Arc<Socket>>>,
    /// Signalled whenever a socket's file descriptor is released.
    released: Notify,
    pub metrics: SocketMetrics,
}

/// One accepted connection.
pub(crate) struct Socket {
    id: u64,
    registry: Arc<Sockets>,
    state: Mutex<State>,
    /// Wakes the connection's driver: it became idle, or it is to be shed.
    wake: Notify,
    shed: AtomicBool,
    /// Still counted in `open`: a shed socket stops counting at once, so the
    /// cap holds while its driver is closing it.
    counted: AtomicBool,
    /// `Transport::index()` (into `Transport::ALL`) plus one; 0 until a handler claims it.
    transport: AtomicU8,
}

struct State {
    /// Requests in flight (several at once only on HTTP/2).
    busy: usize,
    /// `Some` while idle.
    idle_since: Option<Instant>,
    upgraded: bool,
    closed: bool,
}

/// What the connection's driver should do next.
pub(crate) enum Next {
    /// Nothing to watch but the connection itself.
    Busy,
    /// Close the socket if it is still idle at this instant.
    IdleUntil(Instant),
    /// Close it now: it was shed.
    Shed,
}

impl Sockets {
    pub(crate) fn new(max: usize, idle_limit: Duration, metrics: SocketMetrics) -> Arc<Sockets> {
        Arc::new(Sockets {
            max: max.max(1),
            idle_limit,
            open: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            idle: Mutex::new(BTreeMap::new()),
            released: Notify::new(),
            metrics,
        })
    }

    /// Sockets counted against the cap: open ones, less those being shed.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Registers a freshly accepted socket, idle from now. `None` when the cap
    /// is reached and no idle socket could be shed: close the newcomer.
    pub(crate) fn register(self: &Arc<Self>) -> Option<Arc<Socket>> {
        if self.open.load(Ordering::Relaxed) >= self.max && !self.shed_oldest() {
            self.metrics.shed.inc();
            return None;
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        self.metrics.open.inc();
        let now = Instant::now();
        let socket = Arc::new(Socket {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            registry: Arc::clone(self),
            state: Mutex::new(State {
                busy: 0,
                idle_since: Some(now),
                upgraded: false,
                closed: false,
            }),
            wake: Notify::new(),
            shed: AtomicBool::new(false),
            counted: AtomicBool::new(true),
            transport: AtomicU8::new(0),
        });
        self.idle_map()
            .insert((now, socket.id), Arc::clone(&socket));
        Some(socket)
    }

    /// Asks the oldest idle socket to close. False when no socket is idle.
    pub(crate) fn shed_oldest(&self) -> bool {
        let victim = self.idle_map().pop_first();
        match victim {
            Some((_, s)) => {
                s.shed.store(true, Ordering::Release);
                s.uncount();
                s.wake.notify_one();
                self.metrics.shed.inc();
                true
            }
            None => false,
        }
    }

    /// Completes when some socket's descriptor is released (or after `max`).
    pub(crate) async fn released(&self, max: Duration) {
        let _ = tokio::time::timeout(max, self.released.notified()).await;
    }

    fn idle_map(&self) -> MutexGuard<'_, BTreeMap<(Instant, u64), Arc<Socket>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Socket {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request arrived: the socket is busy until the returned guard drops
    /// (the guard travels with the response body, so a streaming answer keeps
    /// the socket busy for as long as it streams).
    pub(crate) fn begin_request(self: &Arc<Self>) -> RequestGuard {
        let mut st = self.state();
        st.busy += 1;
        if let Some(since) = st.idle_since.take() {
            self.registry.idle_map().remove(&(since, self.id));
        }
        RequestGuard {
            socket: Arc::clone(self),
        }
    }

    /// The connection was upgraded (WebSocket): never idle again.
    pub(crate) fn upgraded(&self) {
        self.state().upgraded = true;
    }

    /// Claims the socket for a transport, so that a write timeout on it is
    /// counted under the right label. On HTTP/2 the last claim wins.
    pub(crate) fn serves(&self, transport: crate::metrics::Transport) {
        self.transport
            .store(transport.index() as u8 + 1, Ordering::Relaxed);
    }

    /// The counter a write timeout on this socket goes to, if a client
    /// transport owns it.
    pub(crate) fn stalled_counter(&self) -> Option<&IntCounter> {
        match self.transport.load(Ordering::Relaxed) {
            0 => None,
            i => self.registry.metrics.stalled.get(usize::from(i) - 1),
        }
    }

    /// What the driver waits for now.
    pub(crate) fn next(&self) -> Next {
        if self.shed.load(Ordering::Acquire) {
            return Next::Shed;
        }
        match self.state().idle_since {
            Some(since) => Next::IdleUntil(since + self.registry.idle_limit),
            None => Next::Busy,
        }
    }

    /// Completes when `next` may have changed.
    pub(crate) async fn changed(&self) {
        self.wake.notified().await
    }

    /// Called by the driver when `IdleUntil(at)` passed: true (and counted)
    /// when the socket is indeed still idle since then, so it must close.
    pub(crate) fn idle_expired(&self, now: Instant) -> bool {
        let st = self.state();
        match st.idle_since {
            Some(since) if since + self.registry.idle_limit <= now => {
                self.registry.metrics.closed_idle.inc();
                true
            }
            _ => false,
        }
    }

    /// The file descriptor is gone (the connection's I/O object dropped).
    pub(crate) fn close(&self) {
        let mut st = self.state();
        if std::mem::replace(&mut st.closed, true) {
            return;
        }
        if let Some(since) = st.idle_since.take() {
            self.registry.idle_map().remove(&(since, self.id));
        }
        drop(st);
        self.uncount();
        self.registry.released.notify_waiters();
    }

    fn uncount(&self) {
        if self.counted.swap(false, Ordering::AcqRel) {
            self.registry.open.fetch_sub(1, Ordering::Relaxed);
            self.registry.metrics.open.dec();
        }
    }
}

/// Keeps a socket busy while one request is in flight.
pub(crate) struct RequestGuard {
    socket: Arc<Socket>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let s = &self.socket;
        let mut st = s.state();
        st.busy = st.busy.saturating_sub(1);
        if st.busy == 0 && !st.upgraded && !st.closed {
            let now = Instant::now();
            st.idle_since = Some(now);
            s.registry.idle_map().insert((now, s.id), Arc::clone(s));
            drop(st);
            s.wake.notify_one();
        }
    }
}

/// The request's socket, for handlers: `ClientSocket::serves(Transport::Sse)`.
/// Empty when the router runs without `http::serve` (unit tests).
#[derive(Clone, Default)]
pub(crate) struct ClientSocket(pub Option<Arc<Socket>>);

impl ClientSocket {
    pub(crate) fn serves(&self, transport: crate::metrics::Transport) {
        if let Some(s) = &self.0 {
            s.serves(transport);
        }
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientSocket {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<ClientSocket, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<ClientSocket>()
            .cloned()
            .unwrap_or_default())
    }
}

/// A connection's socket outside hyper (a WebSocket after its upgrade, an
/// SSE stream on its raw socket): the TCP stream itself (so that a writer
/// can use it from any task), the bytes already read past the request, and
/// its place in this registry (declared last: released after the stream is
/// closed).
pub(crate) struct RawSocket {
    pub tcp: tokio::net::TcpStream,
    pub read: bytes::Bytes,
    pub open: OpenSocket,
}

/// Tells the registry that the socket's descriptor is closed when dropped.
pub(crate) struct OpenSocket(Arc<Socket>);

impl OpenSocket {
    pub(crate) fn new(socket: Arc<Socket>) -> OpenSocket {
        OpenSocket(socket)
    }

    /// The counter a write timeout on this socket goes to (`Socket::stalled_counter`).
    pub(crate) fn stalled_counter(&self) -> Option<IntCounter> {
        self.0.stalled_counter().cloned()
    }
}

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Drops the connection once bytes written to it have stayed
/// unacknowledged for `after` (`TCP_USER_TIMEOUT`). Without it a client that
/// vanished without a reset (a dead host, a dropped network path) keeps its
/// socket, and everything subscribed through it, for the kernel's whole
/// retransmission schedule (~15 minutes) as long as something is written to
/// it; WebSockets rely on this for connections that receive events and so
/// are not pinged (`transport::ws::keepalive`). A peer that acknowledges but
/// stops reading is the write timeouts' business: `after` is longer than
/// those. Failing to set it is logged and otherwise ignored.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // setsockopt: see the SAFETY note
pub(crate) fn give_up_unacknowledged(stream: &tokio::net::TcpStream, after: Duration) {
    use std::os::fd::AsRawFd;
    let ms = libc::c_uint::try_from(after.as_millis()).unwrap_or(libc::c_uint::MAX);
    // SAFETY: the descriptor is the open socket `stream` owns; setsockopt
    // reads `size_of::<c_uint>()` bytes from a value that lives across the call.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            std::ptr::from_ref(&ms).cast::<libc::c_void>(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "TCP_USER_TIMEOUT not set");
    }
}

/// Elsewhere the kernel's own retransmission limit applies.
#[cfg(not(target_os = "linux"))]
pub(crate) fn give_up_unacknowledged(_stream: &tokio::net::TcpStream, _after: Duration) {}

/// Lets the kernel take about `room` bytes more on a socket whose send
/// buffer is full (its peer stopped reading): `SO_SNDBUF` raised past what
/// the buffer holds now, as far as the system allows (twice
/// `net.core.wmem_max`), so that a connection cut for being slow can still
/// queue its last frame behind the bytes in flight, for the peer to read
/// whenever it reads again. Best effort: where the limit leaves no room, or
/// the call fails, nothing changes but the frame not fitting.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // getsockopt, setsockopt: see the SAFETY notes
pub(crate) fn widen_send_buffer(stream: &tokio::net::TcpStream, room: usize) {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let mut now: libc::c_int = 0;
    let mut len = size;
    // SAFETY: the descriptor is the open socket `stream` owns; getsockopt
    // writes at most `len` bytes into `now`, which we own.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            std::ptr::from_mut(&mut now).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc != 0 {
        return;
    }
    // The kernel doubles what it is given (for its bookkeeping), and a full
    // buffer may hold up to a packet's worth more than its size: ask for
    // twice the size now at least (the new limit costs nothing but what is
    // then written: the last frames).
    let room = libc::c_int::try_from(room).unwrap_or(libc::c_int::MAX);
    let asked = now.max(room);
    // SAFETY: as above; setsockopt reads `size` bytes from `asked`, which
    // lives across the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            std::ptr::from_ref(&asked).cast::<libc::c_void>(),
            size,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "SO_SNDBUF not raised");
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn widen_send_buffer(_stream: &tokio::net::TcpStream, _room: usize) {}

/// The process's soft limit on open file descriptors (RLIMIT_NOFILE).
// rlim_t is u64 on Linux/x86_64 but not on every target: keep the cast.
#[allow(clippy::unnecessary_cast, unsafe_code)]
pub(crate) fn fd_limit() -> Option<usize> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    usize::try_from(lim.rlim_cur as u64).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)] // getsockopt into a value the test owns
    #[tokio::test]
    async fn unacknowledged_bytes_have_a_deadline() {
        use std::os::fd::AsRawFd;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        give_up_unacknowledged(&client, Duration::from_secs(45));
        let mut ms: libc::c_uint = 0;
        let mut len = std::mem::size_of::<libc::c_uint>() as libc::socklen_t;
        // SAFETY: the socket is open; getsockopt writes at most `len` bytes into `ms`.
        let rc = unsafe {
            libc::getsockopt(
                client.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_USER_TIMEOUT,
                std::ptr::from_mut(&mut ms).cast::<libc::c_void>(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        assert_eq!(ms, 45_000);
    }

    fn metrics() -> SocketMetrics {
        let c = || IntCounter::new("c", "c").unwrap();
        SocketMetrics {
            open: IntGauge::new("g", "g").unwrap(),
            closed_idle: c(),
            shed: c(),
            accept_errors: c(),
            stalled: [c(), c(), c(), c(), c()],
        }
    }

    #[tokio::test]
    async fn the_oldest_idle_socket_is_shed_and_busy_ones_never() {
        let reg = Sockets::new(2, Duration::from_secs(60), metrics());
        let a = reg.register().unwrap();
        let b = reg.register().unwrap();
        let _busy = b.begin_request();
        // at the cap: a (idle) makes room, b (busy) does not
        let c = reg.register().unwrap();
        assert!(matches!(a.next(), Next::Shed));
        assert!(matches!(b.next(), Next::Busy));
        a.close();
        let _busy_c = c.begin_request();
        // nothing idle left: the newcomer is refused
        assert!(reg.register().is_none());
        assert_eq!(reg.open(), 2);
        drop(_busy_c);
        assert!(matches!(c.next(), Next::IdleUntil(_)));
        c.close();
        b.close();
        assert_eq!(reg.open(), 0);
        assert_eq!(reg.metrics.open.get(), 0);
    }

    #[tokio::test]
    async fn upgraded_sockets_stay_busy_and_transports_label_stalls() {
        let reg = Sockets::new(10, Duration::from_secs(60), metrics());
        let s = reg.register().unwrap();
        assert!(s.stalled_counter().is_none());
        s.serves(crate::metrics::Transport::Poll);
        s.stalled_counter().unwrap().inc();
        assert_eq!(reg.metrics.stalled[2].get(), 1);
        let g = s.begin_request();
        s.upgraded();
        drop(g);
        assert!(matches!(s.next(), Next::Busy));
        assert!(!reg.shed_oldest());
    }
}
