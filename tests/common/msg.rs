//! What every client yields, and reading it with the arrival bound.

use crate::common::ARRIVAL;
use serde_json::Value;
use tokio::sync::mpsc;

/// An event as a client sees it: the envelope.
#[derive(Clone, Debug)]
pub(crate) struct Ev {
    pub id: String,
    pub topic: String,
    pub event: String,
    pub data: Value,
    /// The emitting transaction's id (`"tx"`), as the envelope writes it.
    pub tx: Option<String>,
}

impl Ev {
    pub(crate) fn from_envelope(v: &Value) -> Ev {
        Ev {
            id: v["id"].as_str().expect("id").to_string(),
            topic: v["topic"].as_str().expect("topic").to_string(),
            event: v["event"].as_str().expect("event").to_string(),
            data: v["data"].clone(),
            tx: v["tx"].as_str().map(str::to_string),
        }
    }
}

/// What any client yields: events and control messages, in order.
#[derive(Clone, Debug)]
pub(crate) enum Msg {
    Event(Ev),
    /// WS control message or SSE non-event (e.g. resync), as JSON.
    Control(Value),
    /// SSE comment line, or WS close (code, reason) rendered as text.
    Closed(String),
}

/// The next message, within the arrival bound.
pub(crate) async fn next_msg(rx: &mut mpsc::UnboundedReceiver<Msg>) -> Msg {
    tokio::time::timeout(ARRIVAL, rx.recv())
        .await
        .expect("message within the arrival bound")
        .expect("client stream open")
}

/// Next event, skipping control messages, within the arrival bound in all.
pub(crate) async fn next_event(rx: &mut mpsc::UnboundedReceiver<Msg>) -> Ev {
    let deadline = tokio::time::Instant::now() + ARRIVAL;
    loop {
        let msg = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("an event within the arrival bound")
            .expect("client stream open");
        match msg {
            Msg::Event(e) => return e,
            Msg::Control(_) => continue,
            Msg::Closed(c) => panic!("stream closed ({c}) while waiting for an event"),
        }
    }
}

/// `f` within the arrival bound in all (a loop that skips messages while it
/// waits for one: each wait is bounded, the loop must be too).
pub(crate) async fn within_arrival<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(ARRIVAL, f)
        .await
        .unwrap_or_else(|_| panic!("{what} within the arrival bound"))
}

/// The next `n` events, skipping control messages.
pub(crate) async fn events(rx: &mut mpsc::UnboundedReceiver<Msg>, n: usize) -> Vec<Ev> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(next_event(rx).await);
    }
    out
}

/// The `n` of a `test.n` event (see `pg::emit`).
pub(crate) fn n(e: &Ev) -> i64 {
    e.data["n"].as_i64().expect("a test.n event")
}

/// The `n`s of `test.n` events, in order.
pub(crate) fn ns(evs: &[Ev]) -> Vec<i64> {
    evs.iter().map(n).collect()
}
