//! Engine.IO v4 and Socket.IO v5 packets, text only. Parsing is total: any
//! input is a packet or a `PacketError`, never a panic (property-tested in
//! `tests/suites/parsers.rs`, fuzzed by `fuzz/fuzz_targets/socketio_packet.rs`).
//!
//! Engine.IO: one character for the type (`0` open, `1` close, `2` ping,
//! `3` pong, `4` message, `5` upgrade, `6` noop), then the data. Over HTTP
//! long-polling several packets travel in one body, separated by `\x1e`.
//! Binary packets (`b<base64>` on polling, binary frames on WebSocket) are
//! refused: rowcast speaks JSON.
//!
//! Socket.IO (inside an Engine.IO message): one digit for the type (`0`
//! connect, `1` disconnect, `2` event, `3` ack, `4` connect_error, `5`/`6`
//! binary event/ack), an optional namespace (`/admin,`), an optional ack id
//! (digits), then JSON.

use serde_json::Value;

/// Separates packets in a long-polling body.
pub const SEPARATOR: char = '\u{1e}';

/// An Engine.IO packet from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnginePacket<'a> {
    Close,
    /// `2probe` during an upgrade; a plain ping otherwise (clients of v4 do not send them).
    Ping(&'a str),
    Pong(&'a str),
    Message(&'a str),
    Upgrade,
    Noop,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("empty packet")]
    Empty,
    #[error("binary packets are not supported: send JSON text")]
    Binary,
    #[error("unknown Engine.IO packet type {0:?}")]
    EngineType(char),
    #[error("unknown Socket.IO packet type {0:?}")]
    SocketType(char),
    #[error("malformed Socket.IO packet: {0}")]
    Malformed(&'static str),
    #[error("Socket.IO packet data is not valid JSON")]
    Json,
}

pub fn parse_engine(text: &str) -> Result<EnginePacket<'_>, PacketError> {
    let mut chars = text.chars();
    let kind = chars.next().ok_or(PacketError::Empty)?;
    let data = chars.as_str();
    Ok(match kind {
        '1' => EnginePacket::Close,
        '2' => EnginePacket::Ping(data),
        '3' => EnginePacket::Pong(data),
        '4' => EnginePacket::Message(data),
        '5' => EnginePacket::Upgrade,
        '6' => EnginePacket::Noop,
        'b' => return Err(PacketError::Binary),
        other => return Err(PacketError::EngineType(other)),
    })
}

/// A Socket.IO packet from a client.
#[derive(Debug, Clone, PartialEq)]
pub struct SocketPacket<'a> {
    pub kind: SocketKind,
    /// `/` unless the packet names another namespace.
    pub namespace: &'a str,
    pub ack: Option<u64>,
    /// The JSON after the header (`None` when there is none).
    pub data: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
}

/// Longest ack id accepted (socket.io-client counts up from 0).
const MAX_ACK_DIGITS: usize = 15;

pub fn parse_socket(text: &str) -> Result<SocketPacket<'_>, PacketError> {
    let mut rest = text;
    let kind = match rest.chars().next().ok_or(PacketError::Empty)? {
        '0' => SocketKind::Connect,
        '1' => SocketKind::Disconnect,
        '2' => SocketKind::Event,
        '3' => SocketKind::Ack,
        '4' => SocketKind::ConnectError,
        '5' | '6' => return Err(PacketError::Binary),
        other => return Err(PacketError::SocketType(other)),
    };
    rest = &rest[1..];
    let mut namespace = "/";
    if rest.starts_with('/') {
        let end = rest.find(',').unwrap_or(rest.len());
        namespace = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or("");
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let ack = if digits > 0 {
        if digits > MAX_ACK_DIGITS {
            return Err(PacketError::Malformed("ack id too long"));
        }
        let id = rest[..digits]
            .parse()
            .map_err(|_| PacketError::Malformed("ack id"))?;
        rest = &rest[digits..];
        Some(id)
    } else {
        None
    };
    let data = if rest.is_empty() {
        None
    } else {
        Some(serde_json::from_str(rest).map_err(|_| PacketError::Json)?)
    };
    Ok(SocketPacket {
        kind,
        namespace,
        ack,
        data,
    })
}

/// The Engine.IO open packet.
pub fn open(
    sid: &str,
    upgrades: bool,
    ping_interval_ms: u64,
    ping_timeout_ms: u64,
    max_payload: usize,
) -> String {
    let upgrades: &[&str] = if upgrades { &["websocket"] } else { &[] };
    format!(
        "0{}",
        serde_json::json!({
            "sid": sid,
            "upgrades": upgrades,
            "pingInterval": ping_interval_ms,
            "pingTimeout": ping_timeout_ms,
            "maxPayload": max_payload,
        })
    )
}

/// Socket.IO CONNECT reply on the default namespace, as an Engine.IO message.
pub fn connected(sid: &str, pid: &str) -> String {
    format!("40{}", serde_json::json!({"sid": sid, "pid": pid}))
}

/// Socket.IO CONNECT_ERROR on `namespace`, as an Engine.IO message.
pub fn connect_error(namespace: &str, message: &str) -> String {
    let body = serde_json::json!({"message": message});
    if namespace == "/" {
        format!("44{body}")
    } else {
        format!("44{namespace},{body}")
    }
}

/// Socket.IO EVENT on the default namespace: `42["name",args...]`.
pub fn event(name: &str, args: &[&Value]) -> String {
    let mut arr = Vec::with_capacity(args.len() + 1);
    arr.push(Value::String(name.to_owned()));
    arr.extend(args.iter().map(|v| (*v).clone()));
    format!("42{}", Value::Array(arr))
}

/// The ack id of a Socket.IO binary event header (`5<attachments>-[/ns,]<id>[...]`),
/// if it asks for one: its refusal goes there, or an `emitWithAck` would
/// wait for ever. `None` for anything else (a binary ack, `6`, is answered
/// by nobody).
pub fn binary_ack(text: &str) -> Option<u64> {
    let rest = text.strip_prefix('5')?;
    let (count, rest) = rest.split_once('-')?;
    if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let rest = match rest.strip_prefix('/') {
        Some(ns) => ns.split_once(',')?.1,
        None => rest,
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    match digits {
        1..=MAX_ACK_DIGITS => rest[..digits].parse().ok(),
        _ => None,
    }
}

/// Socket.IO ACK on the default namespace: `43<id>[args...]`.
pub fn ack(id: u64, arg: &Value) -> String {
    format!("43{id}[{arg}]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_event_headers_say_their_ack_id() {
        assert_eq!(
            binary_ack(r#"51-7["x",{"_placeholder":true,"num":0}]"#),
            Some(7)
        );
        assert_eq!(binary_ack(r#"52-/admin,12["x"]"#), Some(12));
        assert_eq!(
            binary_ack(r#"51-["x",{"_placeholder":true,"num":0}]"#),
            None
        );
        assert_eq!(binary_ack(r#"61-7[{"_placeholder":true,"num":0}]"#), None);
        assert_eq!(binary_ack("5"), None);
        assert_eq!(binary_ack("5x-7[]"), None);
        assert_eq!(binary_ack(&format!("51-{}[]", "9".repeat(40))), None);
    }

    #[test]
    fn engine_packets() {
        assert_eq!(parse_engine("2probe"), Ok(EnginePacket::Ping("probe")));
        assert_eq!(parse_engine("3"), Ok(EnginePacket::Pong("")));
        assert_eq!(parse_engine("40"), Ok(EnginePacket::Message("0")));
        assert_eq!(parse_engine("5"), Ok(EnginePacket::Upgrade));
        assert_eq!(parse_engine(""), Err(PacketError::Empty));
        assert_eq!(parse_engine("bAAA"), Err(PacketError::Binary));
        assert_eq!(parse_engine("9"), Err(PacketError::EngineType('9')));
    }

    #[test]
    fn socket_packets() {
        let p = parse_socket(r#"0{"token":"t"}"#).unwrap();
        assert_eq!(p.kind, SocketKind::Connect);
        assert_eq!(p.namespace, "/");
        assert_eq!(p.data.unwrap()["token"], "t");
        let p = parse_socket(r#"212["subscribe",["a"]]"#).unwrap();
        assert_eq!((p.kind, p.ack), (SocketKind::Event, Some(12)));
        let p = parse_socket(r#"0/admin,{"x":1}"#).unwrap();
        assert_eq!(p.namespace, "/admin");
        let p = parse_socket("1").unwrap();
        assert_eq!((p.kind, p.data), (SocketKind::Disconnect, None));
        assert_eq!(parse_socket("5-0[]").unwrap_err(), PacketError::Binary);
        assert_eq!(parse_socket("2[").unwrap_err(), PacketError::Json);
        assert!(parse_socket(&format!("2{}[]", "9".repeat(30))).is_err());
        assert!(parse_socket("x").is_err());
    }

    #[test]
    fn rendering() {
        assert_eq!(
            ack(3, &serde_json::json!({"ok":true})),
            r#"433[{"ok":true}]"#
        );
        assert_eq!(
            connect_error("/x", "Invalid namespace"),
            r#"44/x,{"message":"Invalid namespace"}"#
        );
    }
}
