#![no_main]
//! Socket.IO packets from a client (WebSocket message or polling body):
//! every input is a packet or an error, never a panic.
use libfuzzer_sys::fuzz_target;
use rowcast::protocol::socketio::{parse_engine, parse_socket, EnginePacket, SEPARATOR};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        for part in text.split(SEPARATOR) {
            if let Ok(EnginePacket::Message(m)) = parse_engine(part) {
                let _ = parse_socket(m);
            }
        }
        let _ = parse_socket(text);
    }
});
