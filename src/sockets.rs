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
//!   A socket accepted at the cap makes room by shedding, in this order:
//!   1. a socket of the client address (IPv6: the /64,
//!      `limits::client_block`) holding the most sockets among those that
//!      have one that may be shed, if it holds at least two more than the
//!      newcomer's address: its oldest idle socket, else its oldest request
//!      in flight that hyper serves (an Engine.IO POST whose body is still
//!      coming, a Socket.IO long poll; its client sees the connection close
//!      and retries);
//!   2. else the newcomer's own address's oldest idle socket;
//!   3. else the oldest idle socket of all, once it has been idle for
//!      `IDLE_GRACE` (a client that just connected has that long to send
//!      its request).
//!
//!   With nothing to shed, the newcomer is closed (`{reason="refused"}`,
//!   logged at WARN once a minute at most, as the shedding of requests in
//!   flight is). So neither silent sockets nor requests that trickle, from
//!   one address or from many, keep a newcomer of an address holding fewer
//!   out (a probe of `/healthz` included); the price falls on the address
//!   holding most (a NAT with many clients is one), at the cap only. What
//!   it cannot help against: the cap held by so many addresses that none
//!   holds two more than a newcomer's (a botnet; on IPv6, one /50 holds
//!   16,384 /64s), with nothing idle for `IDLE_GRACE`.
//!   An `accept` failing for lack of file descriptors sheds the oldest
//!   idle socket.
//! - Never shed while busy: a socket upgraded to WebSocket (never idle
//!   again: the session owns it) or handed to an SSE stream on its raw
//!   socket, and an answer served without hyper (`direct_http1`): their
//!   tasks hold the descriptor and do not watch for shedding, and they are
//!   bounded by the request limits.

use prometheus::{IntCounter, IntGauge};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
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
    /// Newcomers closed at once: at the cap with nothing to shed.
    pub refused: IntCounter,
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
            refused: m.sockets_closed.with_label_values(&["refused"]),
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
    /// Counted sockets by client address, for shedding at the cap.
    by_addr: Mutex<ByAddr>,
    busy_shed_log: crate::logging::Throttle,
    refused_log: crate::logging::Throttle,
    /// Signalled whenever a socket's file descriptor is released.
    released: Notify,
    pub metrics: SocketMetrics,
}

/// The counted sockets of each client address, which of them may be shed
/// now, and the addresses ranked by how many sockets they hold (all of
/// them; and those with a socket that may be shed). Kept up at every change
/// of a socket's state (`Socket::track`), so that making room at the cap
/// reads it without looking at any socket (r20: a bounded look was walked
/// around with 64 unsheddable sockets first, or 16 such addresses on top).
#[derive(Default)]
struct ByAddr {
    sockets: HashMap<IpAddr, OfAddr>,
    ranked: BTreeSet<(usize, IpAddr)>,
    ranked_sheddable: BTreeSet<(usize, IpAddr)>,
}

#[derive(Default)]
struct OfAddr {
    all: BTreeMap<u64, Arc<Socket>>,
    /// Idle sockets, by id (accept order).
    idle: BTreeSet<u64>,
    /// Requests in flight that hyper serves.
    in_flight: BTreeSet<u64>,
}

impl OfAddr {
    fn sheddable(&self) -> bool {
        !self.idle.is_empty() || !self.in_flight.is_empty()
    }
}

/// What a socket is for shedding (`Socket::track`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Idle,
    InFlight,
    /// Never shed now: upgraded, handed to its own task, served directly.
    Fixed,
}

impl ByAddr {
    fn count(&self, addr: IpAddr) -> usize {
        self.sockets.get(&addr).map_or(0, |a| a.all.len())
    }

    /// Runs `f` on `addr`'s sockets and keeps both rankings right.
    fn change(&mut self, addr: IpAddr, f: impl FnOnce(&mut OfAddr)) {
        let of = self.sockets.entry(addr).or_default();
        let n = of.all.len();
        f(of);
        let (m, shed_now) = (of.all.len(), of.sheddable());
        if m == 0 {
            self.sockets.remove(&addr);
        }
        self.ranked.remove(&(n, addr));
        self.ranked_sheddable.remove(&(n, addr));
        if m > 0 {
            self.ranked.insert((m, addr));
            if shed_now {
                self.ranked_sheddable.insert((m, addr));
            }
        }
    }

    fn insert(&mut self, socket: &Arc<Socket>) {
        self.change(socket.addr, |of| {
            of.all.insert(socket.id, Arc::clone(socket));
            of.idle.insert(socket.id);
        });
    }

    fn set_mode(&mut self, socket: &Socket, mode: Mode) {
        self.change(socket.addr, |of| {
            if !of.all.contains_key(&socket.id) {
                return;
            }
            of.idle.remove(&socket.id);
            of.in_flight.remove(&socket.id);
            match mode {
                Mode::Idle => of.idle.insert(socket.id),
                Mode::InFlight => of.in_flight.insert(socket.id),
                Mode::Fixed => false,
            };
        });
    }

    fn remove(&mut self, socket: &Socket) {
        if !self.sockets.contains_key(&socket.addr) {
            return;
        }
        self.change(socket.addr, |of| {
            of.all.remove(&socket.id);
            of.idle.remove(&socket.id);
            of.in_flight.remove(&socket.id);
        });
    }

    /// `addr`'s socket to shed: its oldest idle one, else (with `busy`) its
    /// oldest request in flight that hyper serves.
    fn victim_of(&self, addr: IpAddr, busy: bool) -> Option<Arc<Socket>> {
        let of = self.sockets.get(&addr)?;
        let id = match (of.idle.first(), busy) {
            (Some(id), _) => id,
            (None, true) => of.in_flight.first()?,
            (None, false) => return None,
        };
        of.all.get(id).cloned()
    }

    /// Step 1 of the module doc: the address holding most among those with
    /// a socket to shed, if it holds at least two more than `addr`.
    fn fair_victim(&self, addr: IpAddr) -> Option<(Arc<Socket>, usize)> {
        let &(held, top) = self.ranked_sheddable.last()?;
        if top == addr || held < self.count(addr) + 2 {
            return None;
        }
        Some((self.victim_of(top, true)?, held))
    }
}

/// At most one WARN line about shedding requests in flight, and one about
/// refusing newcomers, per this interval.
const CAP_LOG_EVERY: Duration = Duration::from_secs(60);
/// How long a socket may stay idle at the cap before any newcomer may shed
/// it (step 3 of the module doc).
const IDLE_GRACE: Duration = Duration::from_secs(1);

/// One accepted connection.
pub(crate) struct Socket {
    id: u64,
    /// The client's address block (`limits::client_block`).
    addr: IpAddr,
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
    /// Served by hyper, whose driver closes the socket when it is shed,
    /// busy or not (`http::drive`).
    hyper: bool,
    /// Requests in flight (several at once only on HTTP/2).
    busy: usize,
    /// `Some` while idle.
    idle_since: Option<Instant>,
    upgraded: bool,
    closed: bool,
}

impl State {
    /// Whether the socket may be shed now: idle, or busy on hyper, and
    /// neither upgraded nor closed.
    fn sheddable(&self) -> bool {
        !self.upgraded && !self.closed && (self.idle_since.is_some() || self.hyper)
    }
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
            by_addr: Mutex::new(ByAddr::default()),
            busy_shed_log: crate::logging::Throttle::new(CAP_LOG_EVERY),
            refused_log: crate::logging::Throttle::new(CAP_LOG_EVERY),
            released: Notify::new(),
            metrics,
        })
    }

    /// Sockets counted against the cap: open ones, less those being shed.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Registers a freshly accepted socket from `peer`, idle from now. `None`
    /// when the cap is reached and nothing could be shed (see the module
    /// doc): close the newcomer.
    pub(crate) fn register(self: &Arc<Self>, peer: IpAddr) -> Option<Arc<Socket>> {
        let addr = crate::limits::client_block(peer);
        if self.open.load(Ordering::Relaxed) >= self.max && !self.make_room(addr) {
            self.metrics.refused.inc();
            if let Some(left_out) = self.refused_log.ready() {
                let top = self.addr_map().ranked.last().copied();
                tracing::warn!(
                    max_sockets = self.max,
                    %peer,
                    holding_most = ?top.map(|(n, a)| format!("{a} ({n} sockets)")),
                    left_out,
                    "at --max-sockets with nothing to shed: closed a new connection"
                );
            }
            return None;
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        self.metrics.open.inc();
        let now = Instant::now();
        let socket = Arc::new(Socket {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            addr,
            registry: Arc::clone(self),
            state: Mutex::new(State {
                hyper: false,
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
        self.addr_map().insert(&socket);
        Some(socket)
    }

    /// At the cap: sheds a socket for a newcomer from `addr`, by the rule
    /// of the module doc. False when there is none to shed.
    fn make_room(&self, addr: IpAddr) -> bool {
        let (fair, own) = {
            let by = self.addr_map();
            let fair = by.fair_victim(addr);
            let own = match fair {
                Some(_) => None,
                None => by.victim_of(addr, false),
            };
            (fair, own)
        };
        if let Some((victim, held)) = fair {
            let busy = victim.state().idle_since.is_none();
            if !self.shed(&victim) {
                return false;
            }
            if busy {
                if let Some(left_out) = self.busy_shed_log.ready() {
                    tracing::warn!(
                        max_sockets = self.max,
                        client = %victim.addr,
                        sockets_of_client = held,
                        left_out,
                        "at --max-sockets: closed a request in flight of a client address holding many sockets, to let a connection from another in"
                    );
                }
            }
            return true;
        }
        if let Some(victim) = own {
            return self.shed(&victim);
        }
        let oldest = self
            .idle_map()
            .first_key_value()
            .map(|(k, s)| (k.0, Arc::clone(s)));
        match oldest {
            Some((since, victim)) if since + IDLE_GRACE <= Instant::now() => self.shed(&victim),
            _ => false,
        }
    }

    /// Closes `victim` to make room, if it may still be shed (not upgraded,
    /// not closed: idle, or busy on hyper); false otherwise.
    fn shed(&self, victim: &Arc<Socket>) -> bool {
        {
            let mut st = victim.state();
            if !st.sheddable() || victim.shed.load(Ordering::Acquire) {
                return false;
            }
            if let Some(since) = st.idle_since.take() {
                self.idle_map().remove(&(since, victim.id));
            }
            victim.shed.store(true, Ordering::Release);
        }
        victim.uncount();
        victim.wake.notify_one();
        self.metrics.shed.inc();
        true
    }

    /// Asks the oldest idle socket to close (out of file descriptors).
    /// False when no socket is idle.
    pub(crate) fn shed_oldest(&self) -> bool {
        let oldest = self
            .idle_map()
            .first_key_value()
            .map(|(_, s)| Arc::clone(s));
        oldest.is_some_and(|s| self.shed(&s))
    }

    /// Completes when some socket's descriptor is released (or after `max`).
    pub(crate) async fn released(&self, max: Duration) {
        let _ = tokio::time::timeout(max, self.released.notified()).await;
    }

    fn idle_map(&self) -> MutexGuard<'_, BTreeMap<(Instant, u64), Arc<Socket>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn addr_map(&self) -> MutexGuard<'_, ByAddr> {
        self.by_addr.lock().unwrap_or_else(|p| p.into_inner())
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
        self.track(&st);
        RequestGuard {
            socket: Arc::clone(self),
        }
    }

    /// The connection was upgraded (WebSocket), or its raw socket handed to
    /// a task (an SSE stream): never idle again, never shed.
    pub(crate) fn upgraded(&self) {
        let mut st = self.state();
        st.upgraded = true;
        self.track(&st);
    }

    /// hyper serves the connection from now on: its driver closes it when
    /// it is shed, busy or not (`Sockets::shed_busy_for`).
    pub(crate) fn served_by_hyper(&self) {
        let mut st = self.state();
        st.hyper = true;
        self.track(&st);
    }

    /// Tells the registry what the socket is now for shedding (`ByAddr`),
    /// under the socket's lock (the order: a socket's state, then the
    /// registry's maps).
    fn track(&self, st: &State) {
        let mode = if st.upgraded || st.closed {
            Mode::Fixed
        } else if st.idle_since.is_some() {
            Mode::Idle
        } else if st.hyper {
            Mode::InFlight
        } else {
            Mode::Fixed
        };
        self.registry.addr_map().set_mode(self, mode);
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
            self.registry.addr_map().remove(self);
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
        // a shed socket is closing: not idle, and not to be shed twice
        if st.busy == 0 && !st.upgraded && !st.closed && !s.shed.load(Ordering::Acquire) {
            let now = Instant::now();
            st.idle_since = Some(now);
            s.registry.idle_map().insert((now, s.id), Arc::clone(s));
            s.track(&st);
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
            refused: c(),
            accept_errors: c(),
            stalled: [c(), c(), c(), c(), c()],
        }
    }

    #[tokio::test]
    async fn the_oldest_idle_socket_is_shed_and_busy_ones_never() {
        let reg = Sockets::new(2, Duration::from_secs(60), metrics());
        let a = reg.register(ip("10.0.0.1")).unwrap();
        let b = reg.register(ip("10.0.0.1")).unwrap();
        let _busy = b.begin_request();
        // at the cap: a (idle) makes room, b (busy) does not
        let c = reg.register(ip("10.0.0.2")).unwrap();
        assert!(matches!(a.next(), Next::Shed));
        assert!(matches!(b.next(), Next::Busy));
        a.close();
        let _busy_c = c.begin_request();
        // nothing idle left, and no request in flight that hyper serves: the
        // newcomer is refused
        assert!(reg.register(ip("10.0.0.3")).is_none());
        assert_eq!(reg.open(), 2);
        drop(_busy_c);
        assert!(matches!(c.next(), Next::IdleUntil(_)));
        c.close();
        b.close();
        assert_eq!(reg.open(), 0);
        assert_eq!(reg.metrics.open.get(), 0);
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn busy(s: &Arc<Socket>) -> RequestGuard {
        s.served_by_hyper();
        s.begin_request()
    }

    /// r15: requests in flight (trickled Engine.IO POSTs) from a few
    /// addresses filled the cap, and every newcomer was closed. At the cap a
    /// newcomer now sheds from an address holding at least two more sockets
    /// than its own would, the address holding most first: its oldest idle
    /// socket, else its oldest request in flight that hyper serves.
    #[tokio::test]
    async fn at_the_cap_a_newcomer_sheds_from_the_address_holding_most() {
        let reg = Sockets::new(4, Duration::from_secs(60), metrics());
        let a = ip("10.0.0.1");
        let a1 = reg.register(a).unwrap();
        let g1 = busy(&a1);
        let a2 = reg.register(a).unwrap();
        let _g2 = busy(&a2);
        let a3 = reg.register(a).unwrap();
        let _g3 = busy(&a3);
        let b1 = reg.register(ip("10.0.0.2")).unwrap();
        let _g4 = busy(&b1);
        // c holds 0, a 3: a's oldest request goes
        let c1 = reg.register(ip("10.0.0.3")).unwrap();
        assert!(matches!(a1.next(), Next::Shed));
        assert!(matches!(a2.next(), Next::Busy));
        assert_eq!(reg.open(), 4);
        let _g5 = busy(&c1);
        // its request ending as it closes makes it neither idle nor shed twice
        drop(g1);
        assert!(matches!(a1.next(), Next::Shed));
        assert!(!reg.shed_oldest());
        a1.close();
        assert_eq!(reg.open(), 4);
        // a 2, b 1, c 1: a newcomer of b (1 + 2 > 2) or of a is refused
        assert!(reg.register(ip("10.0.0.2")).is_none());
        assert!(reg.register(a).is_none());
        assert_eq!(reg.metrics.refused.get(), 2);
        // one of a fresh IPv6 /64 (0 + 2 <= 2) takes a's oldest in flight
        let d1 = reg.register(ip("2001:db8:1:2::1")).unwrap();
        assert!(matches!(a2.next(), Next::Shed));
        let _g6 = busy(&d1);
        // the /64 counts as one: a, b, c and d hold 1 each now
        assert!(reg.register(ip("2001:db8:1:2::99")).is_none());
        assert_eq!(reg.open(), 4);
    }

    /// r17: an address holding most, but only sockets that are never shed
    /// (WebSockets, answers served without hyper), kept every newcomer out
    /// although the next address held requests that could go. The next
    /// address holding enough is looked at then; and an address's idle
    /// socket goes before its requests in flight.
    #[tokio::test]
    async fn an_address_holding_only_unsheddable_sockets_is_passed_over() {
        let reg = Sockets::new(6, Duration::from_secs(60), metrics());
        let a = ip("10.0.0.1");
        let mut held = Vec::new();
        for i in 0..3 {
            let s = reg.register(a).unwrap();
            let g = busy(&s);
            if i == 0 {
                s.upgraded();
            }
            held.push((s, g));
        }
        let direct = reg.register(a).unwrap();
        let _d = direct.begin_request();
        let b = ip("10.0.0.2");
        let b1 = reg.register(b).unwrap();
        let _gb1 = busy(&b1);
        let b2 = reg.register(b).unwrap();
        // a holds 4 and b 2: a's first sheddable socket is its second
        let c1 = reg.register(ip("10.0.0.3")).unwrap();
        assert!(matches!(held[1].0.next(), Next::Shed));
        let _gc1 = busy(&c1);
        let c2 = reg.register(ip("10.0.0.4")).unwrap();
        assert!(matches!(held[2].0.next(), Next::Shed));
        let _gc2 = busy(&c2);
        // a: the upgraded one and the direct answer (2), b 2, c 1, d 1: a
        // newcomer of e (0) looks at a, finds nothing to shed, and takes b's
        // idle socket before its request in flight
        let e1 = reg.register(ip("10.0.0.5")).unwrap();
        assert!(matches!(b2.next(), Next::Shed));
        assert!(matches!(b1.next(), Next::Busy));
        assert!(matches!(held[0].0.next(), Next::Busy) && matches!(direct.next(), Next::Busy));
        // the per-address counts follow closes
        for (s, _) in &held {
            s.close();
        }
        for s in [&direct, &b1, &b2, &c1, &c2, &e1] {
            s.close();
        }
        assert_eq!(reg.open(), 0);
        assert!(reg.addr_map().sockets.is_empty() && reg.addr_map().ranked.is_empty());
    }

    /// r20: a look at the 16 addresses holding most, 64 sockets each, was
    /// walked around: with 64 never-shed sockets opened first, or 16
    /// addresses of them on top. The registry keeps which sockets may be
    /// shed, so the address holding most among those that have one is found
    /// however many sockets or addresses hold none.
    #[tokio::test]
    async fn no_number_of_unsheddable_sockets_hides_one_that_may_go() {
        let fixed = |reg: &Arc<Sockets>, addr| {
            let s = reg.register(addr).unwrap();
            let g = busy(&s);
            s.upgraded();
            (s, g)
        };
        let reg = Sockets::new(20 * 3 + 100 + 2, Duration::from_secs(60), metrics());
        let mut kept = Vec::new();
        for i in 0..20 {
            for _ in 0..3 {
                kept.push(fixed(&reg, ip(&format!("10.0.1.{i}"))));
            }
        }
        let x = ip("10.0.0.1");
        for _ in 0..100 {
            kept.push(fixed(&reg, x));
        }
        let x1 = reg.register(x).unwrap();
        let _g1 = busy(&x1);
        let x2 = reg.register(x).unwrap();
        let _g2 = busy(&x2);
        assert!(reg.register(ip("10.0.0.2")).is_some());
        assert!(matches!(x1.next(), Next::Shed));
        assert!(matches!(x2.next(), Next::Busy));
        assert!(kept.iter().all(|(s, _)| matches!(s.next(), Next::Busy)));
    }

    /// A newcomer of the address holding most sheds its own address's oldest
    /// idle socket; the oldest idle socket of all goes to anyone only once it
    /// has been idle for `IDLE_GRACE` (r17: an attacker's connections shed
    /// every newcomer that had not yet sent its request).
    #[tokio::test(start_paused = true)]
    async fn idle_sockets_go_to_their_own_address_or_after_a_grace() {
        let reg = Sockets::new(3, Duration::from_secs(60), metrics());
        let a = ip("10.0.0.1");
        let a1 = reg.register(a).unwrap();
        let _g1 = busy(&a1);
        let a2 = reg.register(a).unwrap();
        let _g2 = busy(&a2);
        let b1 = reg.register(ip("10.0.0.2")).unwrap();
        // a (2) cannot shed from b (1), has nothing idle of its own, and b's
        // idle socket is new: refused
        assert!(reg.register(a).is_none());
        tokio::time::advance(IDLE_GRACE).await;
        let a3 = reg.register(a).unwrap();
        assert!(matches!(b1.next(), Next::Shed));
        // a's own idle socket goes to a's next newcomer at once
        let a4 = reg.register(a).unwrap();
        assert!(matches!(a3.next(), Next::Shed));
        assert!(matches!(a4.next(), Next::IdleUntil(_)));
    }

    #[tokio::test]
    async fn upgraded_sockets_stay_busy_and_transports_label_stalls() {
        let reg = Sockets::new(10, Duration::from_secs(60), metrics());
        let s = reg.register(ip("10.0.0.1")).unwrap();
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
