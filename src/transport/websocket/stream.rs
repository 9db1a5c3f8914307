//! The WebSocket's socket as tungstenite sees it: reads from the TCP stream
//! (after the bytes read with the upgrade request), writes through
//! `Wire::push`, so that tungstenite's frames and the publisher's share the
//! wire's one list (`transport::wire`).

use crate::metrics::LiveMetrics;
use crate::sockets::RawSocket;
use crate::transport::close::Disconnect;
use crate::transport::wire::{gone, Render, Wire};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::{Message, Utf8Bytes};

/// How long the close frame (and reading what the client already sent) may take.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The end of a WebSocket (plain or Socket.IO): no more direct writes, the
/// close frame of `end` if it has one, then the socket closed; bounded, so
/// that a client that stopped reading cannot hold the task. A slow consumer
/// (its socket accepted nothing for the write timeout) gets its close frame
/// after the whole frames already in its socket (`Wire::last_word`), to
/// read whenever it reads again; its caller then lets go of the feed and
/// lingers (`Wire::linger`), so that what the client sends meanwhile does
/// not make the kernel reset the connection. After closing a
/// misbehaving client (a rejection, a 1008), what it already sent is read
/// and dropped until its close reply: closing a socket with unread input
/// resets the TCP connection, and the client would lose the close frame
/// and its reason.
pub(in crate::transport) async fn close(
    socket: &mut tokio_tungstenite::WebSocketStream<Stream>,
    wire: &Wire,
    end: Disconnect,
) {
    wire.close_direct();
    if end == Disconnect::SlowConsumer {
        // its socket is full: the close frame would never get in
        wire.last_word();
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        if let Some(code) = end.ws_code() {
            let frame = CloseFrame {
                code: code.into(),
                reason: Utf8Bytes::from_static(end.reason()),
            };
            let _ = socket.send(Message::Close(Some(frame))).await;
            if end.rejection().is_some() || code == 1008 {
                drain(socket).await;
            }
        }
        let _ = SinkExt::close(socket).await;
    })
    .await;
}

/// Sends one message (a control message, a ping, a Socket.IO packet) and
/// waits until the socket took it and everything before it, under `limit`
/// as every write is (`Wire::flush`: a socket that takes no byte that long
/// is a slow consumer; one that reads, however slowly, is not). tungstenite
/// writes the whole frame into the wire at once (no write buffer), so only
/// the wait is the wire's.
pub(in crate::transport) async fn send_within(
    socket: &mut tokio_tungstenite::WebSocketStream<Stream>,
    wire: &Wire,
    message: Message,
    limit: Duration,
) -> Result<(), Disconnect> {
    let sent = {
        let mut send = socket.send(message);
        futures::poll!(&mut send)
    };
    match sent {
        Poll::Ready(Ok(())) => Ok(()),
        Poll::Ready(Err(_)) => Err(Disconnect::ClientGone),
        Poll::Pending => wire.flush(limit).await,
    }
}

/// Reads (and drops) what the client sent, until its close reply; bounded
/// in time and count, so a client that keeps sending cannot stay.
async fn drain(socket: &mut tokio_tungstenite::WebSocketStream<Stream>) {
    let deadline = Instant::now() + CLOSE_WAIT / 2;
    for _ in 0..1024 {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => return,
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// The socket as tungstenite sees it: reads from the TCP stream (after the
/// bytes read with the upgrade request), writes through `Wire::push`.
pub(in crate::transport) struct Stream {
    wire: Arc<Wire>,
    read: Bytes,
}

impl Stream {
    fn new(wire: Arc<Wire>, read: Bytes) -> Stream {
        Stream { wire, read }
    }
}

/// The server's side of a WebSocket on an upgraded socket: tungstenite over
/// a `Stream`, and the `Wire` it writes through, which the publisher writes
/// `render`'s form of a change to.
pub(in crate::transport) async fn websocket(
    raw: RawSocket,
    live: LiveMetrics,
    render: Render,
    config: tungstenite::protocol::WebSocketConfig,
) -> (Arc<Wire>, tokio_tungstenite::WebSocketStream<Stream>) {
    let (wire, read) = Wire::new(raw, live, render);
    let stream = Stream::new(Arc::clone(&wire), read);
    let socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
        stream,
        tungstenite::protocol::Role::Server,
        Some(config),
    )
    .await;
    (wire, socket)
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.read.is_empty() {
            let n = this.read.len().min(buf.remaining());
            buf.put_slice(&this.read.split_to(n));
            if this.read.is_empty() {
                // frees the buffer
                this.read = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        let tcp = this.wire.tcp();
        loop {
            match tcp.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            match tcp.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Stream {
    /// Takes the whole buffer (tungstenite writes one whole frame at a
    /// time): a frame is never left half in tungstenite's buffer, where a
    /// direct write could overtake the rest of it.
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.wire.is_broken() {
            return Poll::Ready(Err(gone()));
        }
        self.wire.push(Bytes::copy_from_slice(buf));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.wire.poll_drain(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.wire.poll_drain(cx)
    }
}
