//! A Server-Sent Events client that turns the stream into `Msg`s.

use crate::common::{Ev, Msg};
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;

pub(crate) struct SseClient {
    pub rx: mpsc::UnboundedReceiver<Msg>,
    task: tokio::task::JoinHandle<()>,
}

/// Dropping a client closes its stream.
impl Drop for SseClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SseClient {
    pub(crate) async fn connect(base: &str, query: &str, last_event_id: Option<&str>) -> SseClient {
        match last_event_id {
            Some(id) => SseClient::connect_with(base, query, &[("Last-Event-ID", id)]).await,
            None => SseClient::connect_with(base, query, &[]).await,
        }
    }

    /// Connects with extra request headers; the answer must be a stream (200).
    pub(crate) async fn connect_with(
        base: &str,
        query: &str,
        headers: &[(&str, &str)],
    ) -> SseClient {
        let mut req = reqwest::Client::new().get(format!("{base}/v1/events?{query}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("sse connect");
        assert_eq!(resp.status(), 200, "sse status");
        let (etx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut body = resp.bytes_stream();
            let mut buf = String::new();
            while let Some(chunk) = body.next().await {
                let Ok(chunk) = chunk else { break };
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    if let Some(msg) = parse_block(&block, &etx) {
                        if etx.send(msg).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = etx.send(Msg::Closed("eof".into()));
        });
        SseClient { rx, task }
    }
}

/// One SSE block: its event or resync notice (a `: resync` comment is sent
/// ahead as `Closed`).
fn parse_block(block: &str, etx: &mpsc::UnboundedSender<Msg>) -> Option<Msg> {
    let mut event = None;
    let mut data = None;
    for line in block.lines() {
        if let Some(c) = line.strip_prefix(':') {
            if c.trim().starts_with("resync") {
                let _ = etx.send(Msg::Closed(c.trim().to_string()));
            }
        } else if let Some(v) = line.strip_prefix("event: ") {
            event = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("data: ") {
            data = Some(v.to_string());
        }
    }
    let v: Value = serde_json::from_str(&data?).expect("sse data is JSON");
    Some(if event.as_deref() == Some("resync") {
        Msg::Control(v)
    } else {
        Msg::Event(Ev::from_envelope(&v))
    })
}
