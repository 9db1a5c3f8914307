//! Polling: single requests and a client that keeps its cursor.

use crate::common::{Ev, ARRIVAL};
use serde_json::Value;

/// One poll request: returns (status, body).
pub(crate) async fn poll_raw(base: &str, query: &str) -> (u16, Value) {
    get_json(base, &format!("/v1/poll?{query}"), &[]).await
}

/// A GET with headers: (status, JSON body, or the text as a JSON string).
pub(crate) async fn get_json(base: &str, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(format!("{base}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("http get");
    let status = r.status().as_u16();
    let text = r.text().await.expect("poll body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The events of a poll answer.
pub(crate) fn events_of(body: &Value) -> Vec<Ev> {
    body["events"]
        .as_array()
        .expect("events array")
        .iter()
        .map(Ev::from_envelope)
        .collect()
}

/// A polling client that keeps its cursor.
pub(crate) struct Poller {
    pub base: String,
    pub topics: String,
    pub cursor: Option<String>,
    /// Sent as `Authorization: Bearer`.
    pub token: Option<String>,
}

impl Poller {
    /// Starts from the server's current position.
    pub(crate) async fn start(base: &str, topics: &str) -> Poller {
        Poller::start_with_token(base, topics, None).await
    }

    pub(crate) async fn start_with_token(
        base: &str,
        topics: &str,
        token: Option<String>,
    ) -> Poller {
        let mut p = Poller::resume(base, topics, None);
        p.token = token;
        let (status, v) = p.request(&format!("topics={topics}")).await;
        assert_eq!(status, 200, "{v}");
        p.cursor = v["cursor"].as_str().map(str::to_string);
        p
    }

    /// Resumes from `cursor` (no request made yet); `None` starts from the
    /// server's position on the first poll.
    pub(crate) fn resume(base: &str, topics: &str, cursor: Option<String>) -> Poller {
        Poller {
            base: base.to_string(),
            topics: topics.to_string(),
            cursor,
            token: None,
        }
    }

    async fn request(&self, query: &str) -> (u16, Value) {
        let bearer = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer
            .iter()
            .map(|b| ("Authorization", b.as_str()))
            .collect();
        get_json(&self.base, &format!("/v1/poll?{query}"), &headers).await
    }

    /// One long poll (`wait` seconds); returns its events and advances the cursor.
    pub(crate) async fn poll(&mut self, wait: u32) -> Vec<Ev> {
        let mut q = format!("topics={}&wait={wait}", self.topics);
        if let Some(c) = &self.cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let (status, v) = self.request(&q).await;
        assert_eq!(status, 200, "{v}");
        self.cursor = v["cursor"].as_str().map(str::to_string);
        events_of(&v)
    }

    /// Polls until `n` events arrived (bounded by the arrival timeout).
    pub(crate) async fn events(&mut self, n: usize) -> Vec<Ev> {
        let deadline = tokio::time::Instant::now() + ARRIVAL;
        let mut out = Vec::new();
        while out.len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "poller got {} of {n} events",
                out.len()
            );
            out.extend(self.poll(2).await);
        }
        out
    }
}

/// A cursor-less poll's cursor that the node resumes from (200): after a
/// declared loss, the first answers may still carry the node's position from
/// before it reads the loss, which expire at once.
pub(crate) async fn resumable_cursor(base: &str, topics: &str) -> String {
    let found = std::sync::Mutex::new(String::new());
    crate::common::eventually_async("a cursor the node resumes from", || async {
        let (_, body) = poll_raw(base, &format!("topics={topics}")).await;
        let cursor = body["cursor"].as_str().unwrap_or_default().to_string();
        let ok = poll_raw(base, &format!("topics={topics}&cursor={cursor}"))
            .await
            .0
            == 200;
        *found.lock().expect("lock") = cursor;
        ok
    })
    .await;
    found.into_inner().expect("lock")
}
