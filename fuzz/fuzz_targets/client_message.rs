//! Any bytes a WebSocket client can send as a text message: parsing must
//! return a message or an error, never panic, and topic checks must be total.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rowcast::protocol::{check_topics, parse_client_message, parse_topic_list, ClientMessage};

fuzz_target!(|data: &[u8]| {
    // tungstenite only hands over valid UTF-8 text frames
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_client_message(text) {
        Ok(ClientMessage::Subscribe { topics, .. }) | Ok(ClientMessage::Unsubscribe { topics }) => {
            let _ = check_topics(&topics);
        }
        Ok(_) | Err(_) => {}
    }
    let _ = parse_topic_list(Some(text));
});
