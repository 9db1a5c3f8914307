//! A WebSocket client that turns what it receives into `Msg`s.

use crate::common::{next_msg, Ev, Msg, ARRIVAL};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

type WsSink = futures::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Message,
>;

pub(crate) struct WsClient {
    pub tx: WsSink,
    pub rx: mpsc::UnboundedReceiver<Msg>,
    reader: tokio::task::JoinHandle<()>,
}

/// Dropping a client closes its connection (the reader task holds the read half).
impl Drop for WsClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl WsClient {
    pub(crate) async fn connect(base: &str, query: &str) -> WsClient {
        WsClient::connect_with(base, query, &[])
            .await
            .expect("ws connect")
    }

    /// Connects with extra request headers; an HTTP refusal is `Err((status, body))`.
    pub(crate) async fn connect_with(
        base: &str,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<WsClient, (u16, String)> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::Error as WsError;
        let url = format!("{}/v1/ws?{query}", base.replacen("http://", "ws://", 1));
        let mut req = url.into_client_request().expect("ws request");
        for (k, v) in headers {
            req.headers_mut().insert(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                v.parse().expect("header value"),
            );
        }
        let ws = match Box::pin(tokio_tungstenite::connect_async(req)).await {
            Ok((ws, _)) => ws,
            Err(WsError::Http(r)) => {
                let body = r
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                return Err((r.status().as_u16(), body));
            }
            Err(e) => panic!("ws connect: {e}"),
        };
        let (tx, mut read) = ws.split();
        let (etx, rx) = mpsc::unbounded_channel();
        // The server registers URL topics after the upgrade: a test that writes
        // right after connecting must first know the subscription is in place.
        let (settled_tx, settled_rx) = tokio::sync::oneshot::channel::<()>();
        let mut settled_tx = Some(settled_tx);
        let wait_settled = query
            .split('&')
            .any(|kv| kv.strip_prefix("topics=").is_some_and(|t| !t.is_empty()));
        let reader = tokio::spawn(async move {
            while let Some(m) = read.next().await {
                match m {
                    Ok(Message::Text(t)) => {
                        let v: Value = serde_json::from_str(t.as_str()).expect("server sent JSON");
                        if v["type"] != "event" {
                            if let Some(s) = settled_tx.take() {
                                let _ = s.send(());
                            }
                        }
                        let msg = if v["type"] == "event" {
                            Msg::Event(Ev::from_envelope(&v))
                        } else {
                            Msg::Control(v)
                        };
                        if etx.send(msg).is_err() {
                            return;
                        }
                    }
                    Ok(Message::Close(f)) => {
                        let text = f
                            .map(|f| format!("{} {}", u16::from(f.code), f.reason))
                            .unwrap_or_default();
                        let _ = etx.send(Msg::Closed(text));
                        return;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        let _ = etx.send(Msg::Closed("error".into()));
                        return;
                    }
                }
            }
            let _ = etx.send(Msg::Closed("eof".into()));
        });
        if wait_settled {
            // a closed connection also ends the wait (the sender is dropped)
            let _ = tokio::time::timeout(ARRIVAL, settled_rx).await;
        }
        Ok(WsClient { tx, rx, reader })
    }

    pub(crate) async fn send(&mut self, v: Value) {
        self.tx
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("ws send");
    }

    /// Sends any frame; a failure (the server closed first) is for the
    /// reader to report.
    pub(crate) async fn send_raw(&mut self, m: Message) {
        let _ = self.tx.send(m).await;
    }

    /// The next message, within the arrival bound.
    pub(crate) async fn next(&mut self) -> Msg {
        next_msg(&mut self.rx).await
    }
}
