//! Any cursor text a client can send (query, Last-Event-ID, subscribe message):
//! decoding must never panic, and whatever decodes must re-encode to the same cursor.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rowcast::cursor::Cursor;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = Cursor::decode(text) {
        let again = Cursor::decode(&c.encode()).expect("a decoded cursor re-encodes");
        assert_eq!(again, c);
    }
});
