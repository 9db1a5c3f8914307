//! The two checks around the client port's HTTP answers: the origin check
//! (refuse a disallowed `Origin`, answer CORS preflights, tell browsers which
//! origins may read the answer) on the API routes, and rejection counting on
//! every route. The second also says `connection: close` on an answer given
//! before its request's body was read to the end (a 413 on the declared
//! length, a 401 before the body, a body that did not arrive in time): the
//! server does not read the rest and closes that connection, and without the
//! header a client's pool may send its next request on it and see it fail.
//!
//! Hand-written tower layers rather than `axum::middleware::from_fn`: a
//! `from_fn` future keeps the request's head and its own state for as long
//! as the answer is pending, about 1 KiB per layer for every long poll that
//! waits. These keep the inner future and at most one header value.

use super::App;
use crate::api_error::{Rejected, Unavailable};
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// Refuses requests from origins that are not allowed (403, readable by that
/// origin), answers CORS preflights, and tells browsers which cross origins
/// may read the answers.
#[derive(Clone)]
pub(crate) struct OriginCheck(pub Arc<App>);

/// Marks a Socket.IO request whose `Origin` is not allowed: its session is
/// refused at its CONNECT (`EngineParams::origin_refused`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RefusedOrigin;

/// Counts every refusal an HTTP answer carries (`rowcast_rejected_total`),
/// whichever handler or extractor built it: the one place HTTP rejections
/// are counted.
#[derive(Clone)]
pub(crate) struct CountRejections(pub Arc<App>);

impl<S> Layer<S> for OriginCheck {
    type Service = Checked<S, OriginCheck>;

    fn layer(&self, inner: S) -> Self::Service {
        Checked {
            inner,
            check: self.clone(),
        }
    }
}

impl<S> Layer<S> for CountRejections {
    type Service = Checked<S, CountRejections>;

    fn layer(&self, inner: S) -> Self::Service {
        Checked {
            inner,
            check: self.clone(),
        }
    }
}

/// A route behind one of the checks.
#[derive(Clone)]
pub(crate) struct Checked<S, C> {
    inner: S,
    check: C,
}

impl<S> Service<Request> for Checked<S, OriginCheck>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Answer<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let origin = match self.check.0.gate.check_origin(req.headers()) {
            Ok(o) => o,
            // Socket.IO refuses it at the CONNECT, where the client can read
            // why (`connect_error` "forbidden_origin: ..."): its Engine.IO
            // answers carry nothing before that, so that origin may read them
            Err(_) if req.uri().path().starts_with(super::socketio::PATH) => {
                let origin = req.headers().get(header::ORIGIN).cloned();
                req.extensions_mut().insert(RefusedOrigin);
                origin
            }
            // Elsewhere it is refused here, and its page may read why (403
            // `forbidden_origin`): its preflight is answered, and the refusal
            // carries its origin, so that a browser shows the page the answer
            // (rowcast.js then stops) instead of a bare network error, which
            // a client can only retry. The refused request does nothing.
            Err(e) => {
                let origin = req.headers().get(header::ORIGIN).cloned();
                let r = match req.method() {
                    &Method::OPTIONS => preflight(origin),
                    _ => Then::AllowOrigin(origin).apply(e.into_response()),
                };
                return Answer::Ready(Some(r));
            }
        };
        if req.method() == Method::OPTIONS {
            return Answer::Ready(Some(preflight(origin)));
        }
        Answer::Inner {
            inner: self.inner.call(req),
            then: Then::AllowOrigin(origin),
        }
    }
}

impl<S> Service<Request> for Checked<S, CountRejections>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Answer<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let (req, read) = track_body(req);
        Answer::Inner {
            inner: self.inner.call(req),
            then: Then::Count(Arc::clone(&self.check.0), read),
        }
    }
}

/// An HTTP/1 request with a body gets it wrapped so that the answer can tell
/// whether it was read to its end (`None`: no body, or HTTP/2, whose streams
/// end on their own and where `connection` is not a header to send).
fn track_body(req: Request) -> (Request, Option<Arc<AtomicBool>>) {
    if req.version() >= axum::http::Version::HTTP_2 || http_body::Body::is_end_stream(req.body()) {
        return (req, None);
    }
    let read = Arc::new(AtomicBool::new(false));
    let (parts, body) = req.into_parts();
    let body = axum::body::Body::new(Tracked {
        inner: body,
        read: Arc::clone(&read),
    });
    (Request::from_parts(parts, body), Some(read))
}

/// A request body that records when it has been read to its end.
struct Tracked {
    inner: axum::body::Body,
    read: Arc<AtomicBool>,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) || this.inner.is_end_stream() {
            this.read.store(true, Ordering::Relaxed);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `Access-Control-Allow-Credentials: true` beside every origin allowed to
/// read an answer (always that origin itself, never `*`): a page may send
/// its requests `withCredentials` (socket.io-client's option, EventSource's),
/// and a browser reads no credentialed answer without it. Harmless: rowcast
/// reads no cookie; identity is the token the request carries.
fn credentials() -> HeaderValue {
    HeaderValue::from_static("true")
}

/// The answer to a preflight (`OPTIONS`); from a refused origin too, whose
/// request is then refused with a readable 403.
fn preflight(origin: Option<HeaderValue>) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Some(o) = origin {
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, credentials());
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PATCH, DELETE, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, last-event-id, content-type"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    r
}

/// What a check does to the inner answer.
pub(crate) enum Then {
    /// An allowed cross origin may read it.
    AllowOrigin(Option<HeaderValue>),
    /// Count the answer's rejection; say `connection: close` if the request
    /// had a body that was not read to its end.
    Count(Arc<App>, Option<Arc<AtomicBool>>),
}

impl Then {
    fn apply(self, mut r: Response) -> Response {
        match self {
            Then::AllowOrigin(Some(o)) => {
                r.headers_mut()
                    .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
                r.headers_mut()
                    .insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, credentials());
                // a page reads when to come back from a 429 or 503
                r.headers_mut().insert(
                    header::ACCESS_CONTROL_EXPOSE_HEADERS,
                    HeaderValue::from_static("retry-after"),
                );
                r.headers_mut()
                    .insert(header::VARY, HeaderValue::from_static("Origin"));
            }
            Then::AllowOrigin(None) => {}
            Then::Count(app, read) => {
                if let Some(Rejected { reason, count }) = r.extensions().get::<Rejected>() {
                    app.metrics
                        .rejected
                        .with_label_values(&[reason])
                        .inc_by(*count);
                }
                if let Some(Unavailable { reason }) = r.extensions().get::<Unavailable>() {
                    app.metrics.unavailable.with_label_values(&[reason]).inc();
                }
                if read.is_some_and(|read| !read.load(Ordering::Relaxed)) {
                    r.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
            }
        }
        r
    }
}

/// A checked answer: decided by the check, or the inner one, amended.
pub(crate) enum Answer<F> {
    /// `None` once taken.
    Ready(Option<Response>),
    Inner {
        inner: F,
        then: Then,
    },
    Done,
}

impl<F> Future for Answer<F>
where
    F: Future<Output = Result<Response, Infallible>> + Unpin,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let r = match this {
            Answer::Ready(r) => r.take(),
            Answer::Inner { inner, .. } => match Pin::new(inner).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(r)) => Some(r),
                Poll::Ready(Err(never)) => match never {},
            },
            Answer::Done => None,
        };
        let r = match (std::mem::replace(this, Answer::Done), r) {
            (Answer::Inner { then, .. }, Some(r)) => then.apply(r),
            (_, Some(r)) => r,
            // polled after it completed
            (_, None) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        };
        Poll::Ready(Ok(r))
    }
}
