//! A client's socket, written by two parties: the connection's task and the
//! publisher (the hub's `Direct` writer), so that a live event reaches a
//! client that keeps up without waking its task. Used by the WebSocket
//! (`ws`: whole WebSocket frames), by Socket.IO's WebSocket transport
//! (`socketio::ws`: whole WebSocket frames carrying Engine.IO packets) and
//! by SSE streams served on the raw socket (`sse::direct`: one HTTP chunk
//! per SSE event); `Render` says which form of a change's frame the
//! publisher writes.
//!
//! The contract, kept here:
//! - One list of byte strings waiting to be written, under one small lock,
//!   each a whole frame (WebSocket frame, HTTP chunk): every frame (events,
//!   control messages, pings, keepalive comments, the closing frame) is
//!   appended to it, and whoever writes (the task, or a publishing thread
//!   in `Direct::write`) writes from its front, under the lock. So frames
//!   never interleave and leave in the order they were appended: per
//!   connection, events in feed order, each control message after the
//!   events appended before it.
//! - Who appends: the task (catch-up and queued events, its messages,
//!   pings and comments; `push` writes at once when nothing waits), and the
//!   publisher for a subscription that went direct (`hub`'s contract: the
//!   feed is live and nothing is queued), which appends under the hub's
//!   lock and writes after it, on any worker thread (`Hub::publish`). The
//!   publisher never waits: what the socket does not take wakes the task,
//!   which writes it when the socket is writable (`flush`).
//! - Slow consumers (the hub's contract, kept here for direct writes): what
//!   the publisher may leave waiting is bounded by the queue limits (frames
//!   and bytes, `--queue-events`, `--queue-bytes`); over them it refuses
//!   (`Taken::Full`) and the subscription lags as a full queue does (`hub`),
//!   continued from the log once the waiting bytes are out. A frame is
//!   always taken when nothing waits (it is shared, not copied). A client
//!   whose TCP stack acknowledges nothing for the transport's write timeout
//!   while bytes wait ends the connection (`flush`: WebSocket close 4008; SSE, the
//!   socket-level timeout, counted as a stall), and so does one that stopped
//!   reading while what it was sent fit in the socket, its window closed on
//!   bytes the socket holds (`reading`, looked at on each keepalive tick of
//!   its task); its last frames queued
//!   behind the whole frames already in the socket (`last_word`), then the
//!   socket kept, its input read and dropped, until the client goes
//!   (`linger`). A client that takes bytes at all, however slowly, is not
//!   cut (`flush`), and what the server's kernel still takes into a full
//!   socket is not the client taking it.
//! - Once the task starts closing (`close_direct`) the publisher appends
//!   nothing more: the closing frame is the last frame.
//! - A delivery the publisher takes is counted as delivered (deliveries,
//!   the SLO latency histogram) when it is taken.

use crate::config::QueueLimits;
use crate::feed::Delivery;
use crate::feed::{Direct, Taken};
use crate::metrics::{LiveMetrics, LiveTally};
use crate::sockets::RawSocket;
use crate::transport::close::Disconnect;
use bytes::Bytes;
use std::collections::VecDeque;
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::net::TcpStream;

/// Frames written (and flushed once) together when several are ready at
/// once, on every streaming transport.
pub(crate) const MAX_COALESCE: usize = 64;

/// Slices written with one `writev` when draining what is pending.
const WRITEV_MAX: usize = 32;
/// Room made in a full socket for a connection's last frames (a close
/// frame, SSE's ending comment: about 100 bytes, but the kernel counts each
/// write's bookkeeping too).
const LAST_WORD_ROOM: usize = 64 * 1024;
/// Bytes a client sends where nothing more is read from it are dropped,
/// this many at a time (`hangup`) ...
const DISCARD: usize = 512;
/// ... and at most this many times per wake-up.
const DISCARD_TURNS: usize = 16;
/// A drained pending list keeps at most this many slots allocated.
const PENDING_KEEP: usize = 4;

/// Which form of a change's frame the publisher writes (`change::Frame`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::transport) enum Render {
    /// The whole WebSocket frame (`Frame::ws`).
    Ws,
    /// The SSE event as one HTTP/1.1 chunk (`Frame::sse_chunk`).
    SseChunk,
    /// The Socket.IO event packet as a whole WebSocket frame, the same for
    /// every topic (`Change::socketio_ws`).
    SocketIo,
}

pub(in crate::transport) struct Wire {
    tcp: TcpStream,
    out: Mutex<Out>,
    metrics: LiveMetrics,
    render: Render,
    /// The socket's place in the registry: released after `tcp` is closed.
    _open: crate::sockets::OpenSocket,
}

#[derive(Default)]
struct Out {
    /// Frames not yet written (the first possibly in part), in order.
    pending: VecDeque<Bytes>,
    /// Their bytes.
    bytes: usize,
    /// Bytes written so far: progress, for the write timeout.
    written: u64,
    /// The first pending frame was written in part: the client has its
    /// beginning, so the rest must follow before anything else.
    begun: bool,
    /// The connection is closing: the publisher writes nothing more.
    closed: bool,
    /// Its last frames are being written (`last_word`): straight to the
    /// socket, not after the runtime's readiness, which a full socket's
    /// kernel may not signal again however much room was made.
    last: bool,
    /// The socket failed: nothing more can be written.
    broken: bool,
    /// The client's window was seen closed (`Wire::reading`) with
    /// this many bytes acknowledged (`Sending::acked`), first at this tick.
    closed_window: Option<(u64, tokio::time::Instant)>,
    /// The task, waiting for something to be pending.
    waker: Option<Waker>,
}

impl Out {
    fn keep(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.pending.push_back(frame);
    }

    /// `n` bytes of the pending frames were written.
    fn consumed(&mut self, mut n: usize) {
        self.written += n as u64;
        self.bytes -= n;
        while n > 0 {
            let Some(first) = self.pending.front_mut() else {
                return;
            };
            if first.len() <= n {
                n -= first.len();
                self.pending.pop_front();
                self.begun = false;
            } else {
                let _ = first.split_to(n);
                self.begun = true;
                n = 0;
            }
        }
        if self.pending.is_empty() && self.pending.capacity() > PENDING_KEEP {
            self.pending = VecDeque::new();
        }
    }

    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

pub(in crate::transport) fn gone() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client socket failed")
}

impl Wire {
    /// The upgraded socket, and the bytes the client sent past its request.
    pub(in crate::transport) fn new(
        raw: RawSocket,
        metrics: LiveMetrics,
        render: Render,
    ) -> (Arc<Wire>, Bytes) {
        let RawSocket { tcp, read, open } = raw;
        let wire = Arc::new(Wire {
            tcp,
            out: Mutex::new(Out::default()),
            metrics,
            render,
            _open: open,
        });
        (wire, read)
    }

    fn out(&self) -> MutexGuard<'_, Out> {
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The TCP stream, for readiness and reads (writes go through `push`).
    pub(in crate::transport) fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// The socket failed: nothing more can be written.
    pub(in crate::transport) fn is_broken(&self) -> bool {
        self.out().broken
    }

    /// Writes `frame` after everything pushed before it (see the contract).
    pub(in crate::transport) fn push(&self, frame: Bytes) {
        let mut out = self.out();
        self.push_locked(&mut out, frame);
    }

    fn push_locked(&self, out: &mut Out, frame: Bytes) {
        if out.broken || frame.is_empty() {
            return;
        }
        if out.last {
            out.keep(frame);
            match self.try_drain(out, true) {
                Ok(true) => return,
                Ok(false) => {}
                Err(_) => out.broken = true,
            }
            out.wake();
            return;
        }
        if !out.pending.is_empty() {
            out.keep(frame);
            return;
        }
        match self.tcp.try_write(&frame) {
            Ok(n) if n == frame.len() => {
                out.written += n as u64;
                return;
            }
            Ok(n) => {
                out.written += n as u64;
                out.keep(frame.slice(n..));
                out.begun = n > 0;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => out.keep(frame),
            Err(_) => out.broken = true,
        }
        // something is pending (or the socket failed): the task takes over
        out.wake();
    }

    /// Writes what is pending until the socket would block: true when
    /// nothing is left. `raw`: straight to the socket (the publisher), not
    /// through the runtime's readiness (the task).
    fn try_drain(&self, out: &mut Out, raw: bool) -> std::io::Result<bool> {
        while !out.pending.is_empty() {
            let written = {
                let mut slices = [IoSlice::new(&[]); WRITEV_MAX];
                let mut count = 0;
                for (slot, frame) in slices.iter_mut().zip(out.pending.iter()) {
                    *slot = IoSlice::new(frame);
                    count += 1;
                }
                if raw {
                    self.writev(&slices[..count])
                } else {
                    self.tcp.try_write_vectored(&slices[..count])
                }
            };
            match written {
                Ok(n) => out.consumed(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Writes what is pending as far as the socket takes it: ready (`Ok`)
    /// once nothing is left.
    pub(in crate::transport) fn poll_drain(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut out = self.out();
        loop {
            if out.broken {
                return Poll::Ready(Err(gone()));
            }
            if out.pending.is_empty() {
                return Poll::Ready(Ok(()));
            }
            if out.last {
                match self.try_drain(&mut out, true) {
                    Ok(true) => return Poll::Ready(Ok(())),
                    Ok(false) => {}
                    Err(e) => {
                        out.broken = true;
                        return Poll::Ready(Err(e));
                    }
                }
            }
            match self.tcp.poll_write_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    out.broken = true;
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(())) => {}
            }
            // a stale readiness is cleared by the WouldBlock and polled again above
            if let Err(e) = self.try_drain(&mut out, false) {
                out.broken = true;
                return Poll::Ready(Err(e));
            }
        }
    }

    /// Completes when something is pending for the task to write (the
    /// publisher left part of a frame), or the socket failed.
    pub(in crate::transport) fn backlog(&self) -> Backlog<'_> {
        Backlog(self)
    }

    /// Writes everything pending; a client that takes nothing for `limit`
    /// meanwhile is a slow consumer, cut within a quarter of `limit` after
    /// that. Progress is what the client's TCP stack acknowledged
    /// ([`Wire::acknowledged`]), looked at whenever the socket is writable
    /// and every eighth of `limit` while it is not (the kernel signals a
    /// full socket writable only once half of what it holds has gone, so a
    /// client that reads, slowly, can go longer than `limit` without a
    /// signal; each look writes once more straight away). Not what the socket
    /// accepted: a full socket can still take more into its send buffer
    /// (the kernel grew one by 180 KB on loopback while its client read
    /// nothing), and counting that, only looked at when `limit` ran out,
    /// gave such a client twice the limit, long enough on SSE for the
    /// kernel's own unacknowledged-data timeout to drop it first, uncounted
    /// as a slow consumer. The timer is made only when the socket does not
    /// take the bytes at once.
    pub(in crate::transport) async fn flush(&self, limit: Duration) -> Result<(), Disconnect> {
        let look = limit / 8;
        // the bytes acknowledged, and since when
        let mut progress: Option<(u64, tokio::time::Instant)> = None;
        let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
        std::future::poll_fn(|cx| loop {
            match self.poll_drain(cx) {
                Poll::Ready(Ok(())) => return Poll::Ready(Ok(())),
                Poll::Ready(Err(_)) => return Poll::Ready(Err(Disconnect::ClientGone)),
                Poll::Pending => {}
            }
            let now = tokio::time::Instant::now();
            let taken = self.acknowledged_now();
            let since = match progress {
                Some((t, at)) if t == taken => at,
                _ => now,
            };
            progress = Some((taken, since));
            let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(look)));
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // a look: write once more, then judge the progress since
            let mut out = self.out();
            match self.try_drain(&mut out, true) {
                // all written, or failed: `poll_drain` says which
                Ok(true) => continue,
                Err(_) => {
                    out.broken = true;
                    continue;
                }
                Ok(false) => {}
            }
            let written = out.written;
            drop(out);
            if self.acknowledged(written) == taken && now.saturating_duration_since(since) >= limit
            {
                return Poll::Ready(Err(Disconnect::SlowConsumer));
            }
            timer.as_mut().reset(now + look);
        })
        .await
    }

    /// A look from the connection's task at its keepalive tick, for the
    /// client that `flush` never sees: one that stopped reading while what
    /// it was sent fit in the socket. Nothing waits in rowcast, but the
    /// socket holds bytes it cannot send because the client's window is
    /// closed (`TCP_INFO`: bytes not sent, the window the client last
    /// advertised 0): its kernel buffered all it could and its reader reads
    /// nothing. `Stuck` when the window was seen closed at a look at least
    /// `limit` ago and the client acknowledged nothing since: a slow
    /// consumer, as `flush` judges one (looked at every tick, so cut between
    /// `limit` and `limit` plus two ticks after it stopped); until then
    /// `Stopped`, and a ping it cannot read does not end it meanwhile
    /// (`ws::keepalive`, Socket.IO's pings). `Open` for a client whose window
    /// is open while nothing is acknowledged (a vanished host, a network
    /// path that dropped): a quiet one is keepalive's, and the kernel drops
    /// any at `TCP_USER_TIMEOUT` (`sockets::give_up_unacknowledged`), so that
    /// a phone out of reach for a few seconds is not cut for it (unless its
    /// socket fills meanwhile: `flush`). `Open` too where the kernel does
    /// not say (before Linux 5.4, no window).
    pub(in crate::transport) fn reading(
        &self,
        now: tokio::time::Instant,
        limit: Duration,
    ) -> Reading {
        let mut out = self.out();
        let Some(Sending {
            acked,
            unsent: 1..,
            window: 0,
        }) = self.sending()
        else {
            out.closed_window = None;
            return Reading::Open;
        };
        match out.closed_window {
            Some((a, since)) if a == acked => match now.saturating_duration_since(since) >= limit {
                true => Reading::Stuck,
                false => Reading::Stopped,
            },
            _ => {
                out.closed_window = Some((acked, now));
                Reading::Stopped
            }
        }
    }

    /// What the kernel says of the socket's sending side (`TCP_INFO`):
    /// `None` where it does not say it all.
    #[allow(unsafe_code)] // getsockopt: see the SAFETY note
    fn sending(&self) -> Option<Sending> {
        use std::os::fd::AsRawFd;
        // SAFETY: `tcp_info` is plain integers, for which all zeroes is a value.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::tcp_info>();
        let mut len = libc::socklen_t::try_from(size).ok()?;
        // SAFETY: the descriptor is the open socket `self.tcp` owns, for as
        // long as `self` lives; the kernel writes at most `len` bytes to
        // `info`, a live local of that size, and sets `len` to how many.
        let r = unsafe {
            libc::getsockopt(
                self.tcp.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                std::ptr::addr_of_mut!(info).cast(),
                &mut len,
            )
        };
        // the window is the last field needed: an older kernel's shorter answer lacks it
        let needed = std::mem::offset_of!(libc::tcp_info, tcpi_snd_wnd) + 4;
        let said = usize::try_from(len).unwrap_or(0);
        (r == 0 && said >= needed).then_some(Sending {
            acked: info.tcpi_bytes_acked,
            unsent: info.tcpi_notsent_bytes,
            window: info.tcpi_snd_wnd,
        })
    }

    /// The bytes written so far that the client's TCP stack has
    /// acknowledged ([`Wire::acknowledged`]).
    pub(in crate::transport) fn acknowledged_now(&self) -> u64 {
        let written = self.out().written;
        self.acknowledged(written)
    }

    /// Of `written` bytes, those the client's TCP stack has acknowledged:
    /// `written` less what the socket still holds (`SIOCOUTQ`: sent and not
    /// yet acknowledged, or not yet sent). `written` itself where the kernel
    /// does not say.
    #[allow(unsafe_code)] // ioctl: see the SAFETY note
    fn acknowledged(&self, written: u64) -> u64 {
        use std::os::fd::AsRawFd;
        let mut queued: libc::c_int = 0;
        // SAFETY: the descriptor is the open socket `self.tcp` owns, for as
        // long as `self` lives, and `TIOCOUTQ` (`SIOCOUTQ` for a TCP socket)
        // writes one `int` to the pointer given, a live local.
        let r = unsafe { libc::ioctl(self.tcp.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
        match r {
            0 => written.saturating_sub(u64::try_from(queued).unwrap_or(0)),
            _ => written,
        }
    }

    /// `writev(2)` on the socket, bypassing the runtime's readiness: the
    /// publisher's writes. `perf` at 500 writes/s x fan-out 100: 2.3 % of the
    /// server's samples were `Registration::try_io` loading each socket's
    /// readiness, a cache miss per socket written; the kernel knows better
    /// anyway. A `WouldBlock` here leaves the runtime's readiness as it was:
    /// the task, woken to write the rest, then finds the socket full itself
    /// and waits for it the runtime's way.
    #[allow(unsafe_code)] // writev: see the SAFETY note
    fn writev(&self, slices: &[IoSlice<'_>]) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        // never more than the slices there are (`try_drain` passes at most
        // `WRITEV_MAX`, far below `IOV_MAX`)
        let count = slices.len().min(WRITEV_MAX) as libc::c_int;
        loop {
            // SAFETY: the descriptor is the open socket `self.tcp` owns, for
            // as long as `self` lives; `IoSlice` is ABI-compatible with
            // `iovec` on Unix (std documents it), and `count` slices are
            // valid for reads.
            let n = unsafe {
                libc::writev(
                    self.tcp.as_raw_fd(),
                    slices.as_ptr().cast::<libc::iovec>(),
                    count,
                )
            };
            match usize::try_from(n) {
                Ok(n) => return Ok(n),
                Err(_) => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Bytes written to the socket so far, by the task and the publisher.
    pub(in crate::transport) fn written(&self) -> u64 {
        self.out().written
    }

    /// From now on the publisher writes nothing more (the task is about to
    /// send its close frame).
    pub(in crate::transport) fn close_direct(&self) {
        self.out().closed = true;
    }

    /// After the last frames of a connection cut as a slow consumer
    /// (`last_word`): the socket's sending side is shut (the client gets the
    /// end of the stream after the bytes in flight), and what the client
    /// sends is read and dropped until it closes, its connection fails, the
    /// server stops, or `limit` passes (the socket's unacknowledged-data
    /// timeout, `ServerConfig::unacknowledged_timeout`: the kernel keeps the
    /// bytes in flight that long anyway). A socket closed with
    /// unread input, or sent input once closed, is reset by the kernel,
    /// which throws away the bytes in flight, the last frames among them:
    /// a client that sent a ping while it stalled would never read them.
    /// The caller has let go of its feed first: lingering holds the socket
    /// and its connection's slots, nothing more.
    pub(in crate::transport) async fn linger(
        &self,
        limit: Duration,
        mut shutdown: crate::shutdown::Shutdown,
    ) {
        shut_sending(&self.tcp);
        tokio::select! {
            _ = tokio::time::timeout(limit, hangup(&self.tcp)) => {}
            () = shutdown.recv() => {}
        }
    }

    /// Makes room for the last frames of a connection cut because its
    /// socket accepted nothing for the write timeout (with `close_direct`
    /// first): the frames not yet begun are dropped (the client resumes
    /// after the last whole one it read: it never had them), the rest of one
    /// begun is kept (the client has its beginning), and the socket's send
    /// buffer is widened by `LAST_WORD_ROOM` beyond those (`widen_send_buffer`),
    /// so that the frames pushed next (the close frame, SSE's ending) go
    /// into the kernel behind the bytes already there, for the client to read
    /// whenever it reads again, instead of never.
    pub(in crate::transport) fn last_word(&self) {
        let mut out = self.out();
        out.last = true;
        let keep = match out.begun {
            true => out.pending.pop_front(),
            false => None,
        };
        out.pending.clear();
        out.bytes = 0;
        let rest = keep.map_or(0, |frame| {
            let len = frame.len();
            out.keep(frame);
            len
        });
        drop(out);
        crate::sockets::widen_send_buffer(&self.tcp, rest.saturating_add(LAST_WORD_ROOM));
    }
}

impl Direct for Wire {
    fn take(&self, d: &Delivery, limits: &QueueLimits, tally: &mut LiveTally) -> Taken {
        let frame = match (self.render, d.change.frame(d.topic)) {
            (Render::SocketIo, _) => d.change.socketio_ws(),
            (Render::Ws, Some(frame)) => &frame.ws,
            (Render::SseChunk, Some(frame)) => frame.sse_chunk(&d.change),
            // no frame for that topic: nothing to write
            (_, None) => return Taken::Yes,
        };
        let mut out = self.out();
        if out.closed || out.broken {
            return Taken::Closed;
        }
        let first = out.pending.is_empty();
        if !first
            && (out.pending.len() >= limits.max_events.max(1)
                || out.bytes + frame.len() > limits.max_bytes)
        {
            return Taken::Full;
        }
        out.keep(frame.clone());
        drop(out);
        tally.delivered(&self.metrics, d.change.emitted_us);
        if first {
            Taken::First
        } else {
            Taken::Yes
        }
    }

    fn write(&self) {
        let mut out = self.out();
        if out.broken || out.pending.is_empty() {
            return;
        }
        match self.try_drain(&mut out, true) {
            Ok(true) => {}
            // the socket is full: the task waits until it is writable
            Ok(false) => out.wake(),
            Err(_) => {
                out.broken = true;
                out.wake();
            }
        }
    }
}

/// What `Wire::reading` found of a client's reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::transport) enum Reading {
    /// Its window is open (or the kernel does not say).
    Open,
    /// It stopped reading: its window is closed on bytes the socket holds,
    /// not yet for the limit.
    Stopped,
    /// Its window has been closed, nothing acknowledged, for the limit: a
    /// slow consumer.
    Stuck,
}

/// A socket's sending side, as the kernel says it (`Wire::sending`).
#[derive(Debug)]
struct Sending {
    /// Bytes the client's TCP stack acknowledged, since the connection began.
    acked: u64,
    /// Bytes the socket holds and has not sent.
    unsent: u32,
    /// The receive window the client last advertised.
    window: u32,
}

/// See `Wire::backlog`.
pub(in crate::transport) struct Backlog<'a>(&'a Wire);

impl std::future::Future for Backlog<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut out = self.0.out();
        if out.broken || !out.pending.is_empty() {
            return Poll::Ready(());
        }
        if !out.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            out.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Completes when the client hung up (end of stream, or a failed socket).
/// What it sends meanwhile is read and dropped (`DISCARD` bytes at a time,
/// `DISCARD_TURNS` reads per wake-up, so a flood cannot hold the thread).
/// Polled on the socket's own readiness, so a waiting stream holds no
/// readiness future.
pub(in crate::transport) async fn hangup(tcp: &TcpStream) {
    std::future::poll_fn(|cx| {
        for _ in 0..DISCARD_TURNS {
            match tcp.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {}
            }
            let mut buf = [0u8; DISCARD];
            match tcp.try_read(&mut buf) {
                Ok(0) => return Poll::Ready(()),
                // a stale readiness is cleared by the WouldBlock
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return Poll::Ready(()),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

/// Shuts the socket's sending side (`shutdown(2)`, `SHUT_WR`): the peer
/// reads the end of the stream after every byte already written. Best
/// effort (a socket already failed has nothing more to send anyway).
#[allow(unsafe_code)] // shutdown: see the SAFETY note
fn shut_sending(tcp: &TcpStream) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is the open socket `tcp` owns, for the call's
    // duration; shutdown only changes the socket's state.
    let _ = unsafe { libc::shutdown(tcp.as_raw_fd(), libc::SHUT_WR) };
}
