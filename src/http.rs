//! The accept loop. `axum::serve` has no header-read timeout, so a client that
//! trickles its request head one byte at a time (slowloris) would hold a
//! connection and its memory forever; hyper has the knob once it is given a
//! timer, so rowcast drives hyper-util's connection builder itself.

use crate::shutdown::Shutdown;
use axum::extract::connect_info::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceExt;
use tracing::Instrument;

/// Serves `router` until `stop` turns true, then waits (bounded by the caller)
/// for in-flight requests. Each request carries `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_read_timeout: Duration,
    write_timeout: Duration,
    stalled_drops: prometheus::IntCounter,
    mut stop: Shutdown,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.recv() => break,
        };
        let (stream, peer): (_, SocketAddr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Events are small frames written as they come: with Nagle's algorithm a
        // frame written while the previous one is unacknowledged waits for the
        // client's delayed ACK (40 ms on Linux) — that was the bench's p90.
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(req)
        });
        let conn = builder
            .serve_connection_with_upgrades(
                TokioIo::new(WriteTimeout::new(
                    stream,
                    write_timeout,
                    stalled_drops.clone(),
                )),
                svc,
            )
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(
            async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            .instrument(tracing::debug_span!("http", %peer)),
        );
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A socket whose writes fail once they have made no progress for `limit`.
///
/// Why: a client that stops reading fills its TCP window, and from then on the
/// connection's writes stay pending forever. For SSE nothing above the socket
/// can notice (the HTTP stack simply stops polling the body stream), so the
/// connection, its subscription and its queue would live until the kernel
/// gives up, hours later. Failing the write makes hyper close the connection,
/// which drops the stream and frees everything; the client resumes by cursor.
pub struct WriteTimeout<S> {
    inner: S,
    limit: Duration,
    /// Armed while a write is pending; reset by any progress.
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    drops: prometheus::IntCounter,
}

impl<S> WriteTimeout<S> {
    pub fn new(inner: S, limit: Duration, drops: prometheus::IntCounter) -> WriteTimeout<S> {
        WriteTimeout {
            inner,
            limit,
            stalled: None,
            drops,
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
                self.drops.inc();
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
