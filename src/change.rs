//! A change read from the log, with its wire frames rendered once and shared by
//! every subscriber (behind an `Arc`), whatever the fan-out.

use crate::cursor::Cursor;
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use std::sync::{Arc, OnceLock};

/// This host's clock on the scale of [`Change::emitted_us`] (µs since the
/// epoch): what a change's age and a user's idle time are measured against.
/// Here, with the timestamps it reads, so that `metrics` and `presence` both
/// use it without importing each other.
pub(crate) fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[derive(Debug)]
pub(crate) struct Change {
    pub id: i64,
    /// The writing transaction (xid8), for snapshot visibility.
    pub xid: u64,
    /// The transaction that made the change, for the envelope's `tx`: `xid`,
    /// except for a change captured by the slot, which the capturer's
    /// transaction wrote to the log after its writer's commit (`capture`).
    pub tx: u64,
    pub topics: Vec<String>,
    pub event: String,
    /// When the writer emitted it (PostgreSQL's clock), µs since the epoch.
    pub emitted_us: i64,
    /// The change's resume position, encoded.
    pub cursor: String,
    /// Shared: the same change at another position (`with_cursor`) copies
    /// only its cursor, never the payload.
    payload: Arc<RawValue>,
    /// One frame per entry of `topics` (the envelope names the topic it was
    /// delivered for), rendered on first use and shared by every connection
    /// that gets it (by the publisher, under the hub's lock, when it writes
    /// to a live WebSocket: once per change and topic); never for a topic
    /// nobody is subscribed to.
    frames: Vec<OnceLock<Frame>>,
    /// The Socket.IO form, the same whichever topic it is delivered for.
    socketio: OnceLock<SocketIoFrame>,
}

/// The envelope, identical on WebSocket, SSE and polling.
///
/// `tx` is the emitting transaction's id (`Change::tx`, the xid8 PostgreSQL's
/// `pg_current_xact_id()` returned in it) as a decimal string: a client that
/// wrote through an API answering with its transaction's id (the market API's
/// `"tx"`) knows its own write has arrived when a change carries that id, and
/// drops its optimistic state then. Socket.IO frames do not carry it: their
/// first argument must stay exactly `data`, and their last the cursor.
#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    topic: &'a str,
    event: &'a str,
    data: &'a RawValue,
    ts: i64,
    tx: &'a str,
}

#[derive(Debug)]
pub(crate) struct Frame {
    /// `{"type":"event","id":..,"topic":..,"event":..,"data":..,"ts":..}`:
    /// the payload part of `ws` (the same bytes).
    pub json: Bytes,
    /// The whole WebSocket frame carrying `json`: a server's frames are
    /// unmasked, so the header depends only on the length, and the frame is
    /// written as it is to every socket that receives it.
    pub ws: Bytes,
    sse: OnceLock<Bytes>,
    /// `sse` as one HTTP/1.1 chunk (`<length in hex>\r\n<sse>\r\n`), for
    /// SSE streams written on the raw socket: made once, shared by all.
    sse_chunk: OnceLock<Bytes>,
}

/// A change's Socket.IO event packet, and the WebSocket frame carrying it
/// (`packet` is the frame's payload: the same bytes).
#[derive(Debug)]
pub(crate) struct SocketIoFrame {
    packet: Bytes,
    ws: Bytes,
}

/// The longest WebSocket frame header (FIN + opcode, 127, 64-bit length).
const WS_HEADER_MAX: usize = 10;

/// `json`, rendered after `WS_HEADER_MAX` reserved bytes, as a final text
/// frame: the header is written just before the payload and the reserved
/// bytes it does not use are sliced off (no copy of the payload).
fn ws_text_frame(mut buf: Vec<u8>) -> (Bytes, Bytes) {
    let len = buf.len() - WS_HEADER_MAX;
    let mut header = [0u8; WS_HEADER_MAX];
    header[0] = 0x81; // FIN, text
    let n = if len < 126 {
        header[1] = len as u8;
        2
    } else if len <= usize::from(u16::MAX) {
        header[1] = 126;
        header[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    let start = WS_HEADER_MAX - n;
    buf[start..WS_HEADER_MAX].copy_from_slice(&header[..n]);
    let ws = Bytes::from(buf).slice(start..);
    let json = ws.slice(n..);
    (ws, json)
}

impl Frame {
    /// The Server-Sent Events form: `id:`, `event:` and `data:` lines.
    pub(crate) fn sse(&self, change: &Change) -> &Bytes {
        self.sse.get_or_init(|| {
            let mut s = Vec::with_capacity(self.json.len() + change.cursor.len() + 48);
            s.extend_from_slice(b"id: ");
            s.extend_from_slice(change.cursor.as_bytes());
            s.extend_from_slice(b"\nevent: ");
            s.extend_from_slice(sse_safe(&change.event).as_bytes());
            s.extend_from_slice(b"\ndata: ");
            s.extend_from_slice(&self.json);
            s.extend_from_slice(b"\n\n");
            Bytes::from(s)
        })
    }

    /// `sse(change)` as one HTTP/1.1 chunk.
    pub(crate) fn sse_chunk(&self, change: &Change) -> &Bytes {
        self.sse_chunk.get_or_init(|| http_chunk(self.sse(change)))
    }
}

/// Appends `data` to `out` as one HTTP/1.1 chunk: `<length in hex>\r\n`,
/// the data, `\r\n` (RFC 9112, 7.1). Every chunk rowcast writes is made here.
pub(crate) fn http_chunk_into(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

fn http_chunk(data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 12);
    http_chunk_into(&mut out, data);
    Bytes::from(out)
}

/// SSE fields end at a line break, so an event name must not contain one:
/// CR and LF become spaces (README: what SSE does with such a name).
fn sse_safe(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['\n', '\r']) {
        std::borrow::Cow::Owned(s.replace(['\n', '\r'], " "))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

impl Change {
    /// The Socket.IO form, an Engine.IO message carrying an event:
    /// `42["<event>",<data>,"<cursor>"]`. The first argument is the envelope's
    /// `data` exactly; the last is the cursor, which socket.io-client keeps as
    /// its recovery offset.
    pub(crate) fn socketio_frame(&self) -> &Bytes {
        &self.socketio().packet
    }

    /// `socketio_frame` as a whole WebSocket text frame (the same bytes after
    /// the header), written as it is to every Socket.IO WebSocket.
    pub(crate) fn socketio_ws(&self) -> &Bytes {
        &self.socketio().ws
    }

    fn socketio(&self) -> &SocketIoFrame {
        self.socketio.get_or_init(|| {
            let name = serde_json::to_string(&self.event).unwrap_or_default();
            let cursor = serde_json::to_string(&self.cursor).unwrap_or_default();
            let data = self.payload.get();
            let mut s =
                Vec::with_capacity(WS_HEADER_MAX + 8 + name.len() + data.len() + cursor.len());
            s.resize(WS_HEADER_MAX, 0);
            s.extend_from_slice(b"42[");
            s.extend_from_slice(name.as_bytes());
            s.push(b',');
            s.extend_from_slice(data.as_bytes());
            s.push(b',');
            s.extend_from_slice(cursor.as_bytes());
            s.push(b']');
            let (ws, packet) = ws_text_frame(s);
            SocketIoFrame { packet, ws }
        })
    }

    /// `payload` must be valid JSON text (it comes from a `jsonb` column);
    /// anything else is delivered as `null`.
    pub(crate) fn new(
        id: i64,
        xid: u64,
        topics: Vec<String>,
        event: String,
        payload: &str,
        emitted_us: i64,
        cursor: &Cursor,
    ) -> Change {
        let payload: Arc<RawValue> = serde_json::from_str::<Box<RawValue>>(payload)
            .unwrap_or_else(|_| null())
            .into();
        Change {
            id,
            xid,
            tx: xid,
            frames: topics.iter().map(|_| OnceLock::new()).collect(),
            topics,
            event,
            emitted_us,
            cursor: cursor.encode(),
            payload,
            socketio: OnceLock::new(),
        }
    }

    /// The change's data, as JSON text.
    pub(crate) fn payload(&self) -> &str {
        self.payload.get()
    }

    /// The same change carrying other data (a snapshot bringing presence up
    /// to date); `payload` must be JSON text, anything else becomes `null`.
    pub(crate) fn with_payload(&self, payload: &str) -> Change {
        let payload: Arc<RawValue> = serde_json::from_str::<Box<RawValue>>(payload)
            .unwrap_or_else(|_| null())
            .into();
        Change {
            payload,
            ..self.with_cursor_text(self.cursor.clone())
        }
    }

    /// The same change at another position (a resume reads it as part of a
    /// different batch than the live stream did).
    pub(crate) fn with_cursor(&self, cursor: &Cursor) -> Change {
        self.with_cursor_text(cursor.encode())
    }

    fn with_cursor_text(&self, cursor: String) -> Change {
        Change {
            id: self.id,
            xid: self.xid,
            tx: self.tx,
            topics: self.topics.clone(),
            event: self.event.clone(),
            emitted_us: self.emitted_us,
            cursor,
            payload: Arc::clone(&self.payload),
            frames: self.topics.iter().map(|_| OnceLock::new()).collect(),
            socketio: OnceLock::new(),
        }
    }

    pub(crate) fn frame(&self, topic_index: usize) -> Option<&Frame> {
        let topic = self.topics.get(topic_index)?;
        let cell = self.frames.get(topic_index)?;
        Some(cell.get_or_init(|| {
            let tx = self.tx.to_string();
            let mut buf = Vec::with_capacity(WS_HEADER_MAX + self.approx_frame_len(topic_index));
            buf.resize(WS_HEADER_MAX, 0);
            let written = serde_json::to_writer(
                &mut buf,
                &Envelope {
                    kind: "event",
                    id: &self.cursor,
                    topic,
                    event: &self.event,
                    data: &self.payload,
                    ts: self.emitted_us.div_euclid(1000),
                    tx: &tx,
                },
            );
            if written.is_err() {
                buf.truncate(WS_HEADER_MAX);
            }
            let (ws, json) = ws_text_frame(buf);
            Frame {
                json,
                ws,
                sse: OnceLock::new(),
                sse_chunk: OnceLock::new(),
            }
        }))
    }

    /// About what this change costs in memory with one rendered frame.
    pub(crate) fn approx_len(&self) -> usize {
        self.approx_frame_len(0) + self.payload.get().len()
    }

    /// The size of a frame without rendering it, for queue accounting.
    pub(crate) fn approx_frame_len(&self, topic_index: usize) -> usize {
        let topic = self.topics.get(topic_index).map_or(0, String::len);
        // the fixed keys (68 bytes), ts and tx (up to 20 characters each),
        // the WebSocket header (up to 10); JSON escapes in the topic or event
        // name are not counted
        self.payload.get().len() + self.cursor.len() + topic + self.event.len() + 118
    }

    /// Index of the first of this change's topics that `wanted` contains.
    pub(crate) fn first_topic_in(&self, wanted: impl Fn(&str) -> bool) -> Option<usize> {
        self.topics.iter().position(|t| wanted(t))
    }
}

fn null() -> Box<RawValue> {
    // "null" is valid JSON; the fallback keeps this total without unwrap
    RawValue::from_string("null".to_owned()).unwrap_or_else(|_| Box::<RawValue>::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Snapshot;

    #[test]
    fn envelope_shape() {
        let c = Change::new(
            7,
            1234,
            vec!["product-1".into(), "farm-2".into()],
            "inventory.updated".into(),
            r#"{"newQuantity": 15}"#,
            1_764_000_000_123_456,
            &Cursor::boundary(Snapshot::new(10, vec![])),
        );
        let v: serde_json::Value = serde_json::from_slice(&c.frame(1).unwrap().json).unwrap();
        assert_eq!(v["type"], "event");
        assert_eq!(v["topic"], "farm-2");
        assert_eq!(v["event"], "inventory.updated");
        assert_eq!(v["data"]["newQuantity"], 15);
        assert_eq!(v["ts"], 1_764_000_000_123i64);
        assert_eq!(v["tx"], "1234", "the emitting transaction, as a string");
        assert_eq!(v["id"], c.cursor.as_str());
        assert_eq!(
            v.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["data", "event", "id", "topic", "ts", "tx", "type"]
        );
        assert!(
            c.frame(0).unwrap().ws.len() <= c.approx_frame_len(0),
            "the estimate bounds the frame"
        );
        let sse = String::from_utf8(c.frame(0).unwrap().sse(&c).to_vec()).unwrap();
        assert!(sse.starts_with(&format!(
            "id: {}\nevent: inventory.updated\ndata: {{",
            c.cursor
        )));
        assert!(sse.ends_with("}\n\n"));
        // Socket.IO: data exactly, then the cursor; no tx
        let sio = String::from_utf8(c.socketio_frame().to_vec()).unwrap();
        assert_eq!(
            sio,
            format!(
                "42[\"inventory.updated\",{{\"newQuantity\": 15}},\"{}\"]",
                c.cursor
            )
        );
        let ws = c.socketio_ws();
        assert_eq!(ws[0], 0x81, "a final text frame");
        assert_eq!(usize::from(ws[1]), sio.len(), "unmasked, short length");
        assert_eq!(&ws[2..], sio.as_bytes(), "carrying the packet");
    }

    /// The WebSocket form is the JSON behind a text frame's header, for
    /// each of the three length encodings, and shares the JSON's bytes.
    #[test]
    fn ws_frames_are_whole() {
        for size in [10usize, 200, 70_000] {
            let payload = format!("{{\"b\":\"{}\"}}", "x".repeat(size));
            let c = Change::new(
                1,
                2,
                vec!["t".into()],
                "e".into(),
                &payload,
                0,
                &Cursor::boundary(Snapshot::new(10, vec![])),
            );
            let f = c.frame(0).unwrap();
            let len = f.json.len();
            let header: Vec<u8> = match len {
                0..=125 => vec![0x81, len as u8],
                126..=65535 => [vec![0x81, 126], (len as u16).to_be_bytes().to_vec()].concat(),
                _ => [vec![0x81, 127], (len as u64).to_be_bytes().to_vec()].concat(),
            };
            assert_eq!(&f.ws[..header.len()], &header[..], "{size}");
            assert_eq!(&f.ws[header.len()..], &f.json[..]);
            assert_eq!(f.ws[header.len()..].as_ptr(), f.json.as_ptr(), "one buffer");
            let v: serde_json::Value = serde_json::from_slice(&f.json).unwrap();
            assert_eq!(v["topic"], "t");
        }
    }
}
