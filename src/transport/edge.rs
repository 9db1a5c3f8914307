//! The two checks around the client port's HTTP answers: the origin check
//! (refuse a disallowed `Origin`, answer CORS preflights, tell browsers which
//! origins may read the answer) on the API routes, and rejection counting on
//! every route.
//!
//! Hand-written tower layers rather than `axum::middleware::from_fn`: a
//! `from_fn` future keeps the request's head and its own state for as long
//! as the answer is pending, about 1 KiB per layer for every long poll that
//! waits. These keep the inner future and at most one header value.

use super::App;
use crate::api_error::Rejected;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// Refuses requests from origins that are not allowed (403), answers CORS
/// preflights, and tells browsers which cross origins may read the answers.
#[derive(Clone)]
pub(crate) struct OriginCheck(pub Arc<App>);

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

    fn call(&mut self, req: Request) -> Self::Future {
        let origin = match self.check.0.gate.check_origin(req.headers()) {
            Ok(o) => o,
            Err(e) => return Answer::Ready(Some(e.into_response())),
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
        Answer::Inner {
            inner: self.inner.call(req),
            then: Then::Count(Arc::clone(&self.check.0)),
        }
    }
}

/// The answer to a preflight (`OPTIONS`) from an allowed origin.
fn preflight(origin: Option<HeaderValue>) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Some(o) = origin {
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
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
    Count(Arc<App>),
}

impl Then {
    fn apply(self, mut r: Response) -> Response {
        match self {
            Then::AllowOrigin(Some(o)) => {
                r.headers_mut()
                    .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
                r.headers_mut()
                    .insert(header::VARY, HeaderValue::from_static("Origin"));
            }
            Then::AllowOrigin(None) => {}
            Then::Count(app) => {
                if let Some(Rejected { reason, count }) = r.extensions().get::<Rejected>() {
                    app.metrics
                        .rejected
                        .with_label_values(&[reason])
                        .inc_by(*count);
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
