//! Issue #4: property tests of the two parsers that take raw client input
//! (the cargo-fuzz targets in fuzz/ exercise the same functions for longer).
//! Any input must give a value or an error, never a panic, and every valid
//! cursor must survive encode → decode unchanged.

use proptest::prelude::*;
use rowcast::cursor::Cursor;
use rowcast::protocol::{parse_client_message, parse_cursor, parse_topic_list, ClientMessage};
use rowcast::snapshot::Snapshot;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// JSON-shaped client messages: right and wrong types, fields and values.
fn message() -> impl Strategy<Value = String> {
    let ty = prop_oneof![
        Just("\"subscribe\"".to_string()),
        Just("\"unsubscribe\"".to_string()),
        Just("\"ping\"".to_string()),
        Just("\"auth\"".to_string()),
        Just("1".to_string()),
        Just("null".to_string()),
        "\"[a-z]{0,8}\"",
    ];
    let value = prop_oneof![
        Just("[]".to_string()),
        Just("null".to_string()),
        Just("true".to_string()),
        "-?[0-9]{1,25}(\\.[0-9]{1,5})?",
        "\"[^\"\\\\]{0,30}\"",
        prop::collection::vec("\"[ -~&&[^\"\\\\]]{0,12}\"", 0..6)
            .prop_map(|v| format!("[{}]", v.join(","))),
        Just("{\"a\":[{}]}".to_string()),
    ];
    let field = prop_oneof![
        Just("topics"),
        Just("cursor"),
        Just("snapshot"),
        Just("token"),
        Just("type"),
        Just("x")
    ];
    (ty, prop::collection::vec((field, value), 0..5)).prop_map(|(ty, fields)| {
        let mut s = format!("{{\"type\":{ty}");
        for (k, v) in fields {
            s.push_str(&format!(",\"{k}\":{v}"));
        }
        s.push('}');
        s
    })
}

fn snapshot_pair() -> impl Strategy<Value = (Snapshot, Snapshot)> {
    (
        // real snapshots: xids 0-2 are reserved, so xmax and xip start at 3
        2000u64..(1 << 40),
        prop::collection::vec(0u64..1000, 0..20),
        0u64..100_000,
        prop::collection::vec(any::<bool>(), 20),
        prop::collection::vec(0u64..100_000, 0..20),
    )
        .prop_map(|(xmax, lo_gaps, advance, keep, new)| {
            let lo_xip: Vec<u64> = lo_gaps.iter().map(|g| xmax.saturating_sub(g + 1)).collect();
            let lo = Snapshot::new(xmax, lo_xip);
            // still running in hi: some of lo's, and some that started after lo
            let hi_xmax = xmax + advance;
            let mut hi_xip: Vec<u64> = lo
                .xip
                .iter()
                .zip(keep.iter().cycle())
                .filter(|(_, k)| **k)
                .map(|(x, _)| *x)
                .collect();
            hi_xip.extend(new.iter().map(|n| xmax + n));
            (lo, Snapshot::new(hi_xmax, hi_xip))
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn client_messages_never_panic(s in "\\PC{0,300}") {
        let _ = parse_client_message(&s);
    }

    #[test]
    fn json_shaped_messages_never_panic(s in message()) {
        match parse_client_message(&s) {
            Ok(ClientMessage::Subscribe { topics, .. }) | Ok(ClientMessage::Unsubscribe { topics }) => {
                // whatever parsed, topic checks are total too
                let _ = rowcast::protocol::check_topics(&topics);
            }
            Ok(_) => {}
            Err(e) => prop_assert_eq!(e.code().as_str(), "bad_message"),
        }
    }

    #[test]
    fn topic_lists_never_panic(s in "\\PC{0,300}") {
        let _ = parse_topic_list(Some(&s));
    }

    #[test]
    fn cursors_never_panic(s in "\\PC{0,200}") {
        let _ = Cursor::decode(&s);
        let _ = parse_cursor(Some(&s));
    }

    #[test]
    fn base64_cursors_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        use base64::Engine;
        let s = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes);
        if let Ok(c) = Cursor::decode(&s) {
            // anything accepted re-encodes to something that decodes the same
            prop_assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        }
    }

    #[test]
    fn valid_cursors_round_trip((lo, hi) in snapshot_pair(), id in 0i64..i64::MAX) {
        let boundary = Cursor::boundary(lo.clone());
        prop_assert_eq!(Cursor::decode(&boundary.encode()).unwrap(), boundary);
        if lo != hi {
            prop_assert!(lo.covered_by(&hi));
            let c = Cursor { lo, hi, id };
            let text = c.encode();
            prop_assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            prop_assert_eq!(Cursor::decode(&text).unwrap(), c);
        }
    }
}

/// Issue #11: Socket.IO packets as a client might send them, well formed or not.
fn socketio_text() -> impl Strategy<Value = String> {
    let head = prop_oneof![
        Just("4".to_string()),
        Just("40".to_string()),
        Just("42".to_string()),
        Just("421".to_string()),
        Just("4/admin,".to_string()),
        Just("2probe".to_string()),
        Just("b".to_string()),
        "[0-9]{0,3}",
    ];
    let tail = prop_oneof![
        Just(String::new()),
        Just(r#"["subscribe",["a"]]"#.to_string()),
        Just(r#"{"token":"x","pid":"0.0","offset":"AQ"}"#.to_string()),
        "\\PC{0,40}",
    ];
    (head, tail).prop_map(|(h, t)| format!("{h}{t}"))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn socketio_packets_never_panic(s in "\\PC{0,200}") {
        use rowcast::protocol::socketio::{parse_engine, parse_socket};
        let _ = parse_engine(&s);
        let _ = parse_socket(&s);
    }

    #[test]
    fn socketio_shaped_packets_never_panic(s in socketio_text()) {
        use rowcast::protocol::socketio::{parse_engine, parse_socket, EnginePacket};
        if let Ok(EnginePacket::Message(m)) = parse_engine(&s) {
            let _ = parse_socket(m);
        }
        for part in s.split(rowcast::protocol::socketio::SEPARATOR) {
            let _ = parse_engine(part);
        }
    }
}
