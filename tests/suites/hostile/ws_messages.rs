//! Hostile WebSocket messages from an authenticated customer: each gets its
//! error (the connection stays usable) or its close code.

use super::arena::{text, ws_case, Arena, WsAnswer};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

/// `name: messages => answer[, counts "series", …]`: one test that sends the
/// messages in an arena and checks the answer (and that each series counted).
macro_rules! ws_message_case {
    ($name:ident: $msgs:expr => $answer:expr $(, counts $($series:expr),+)?) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let arena = Arena::open().await;
            ws_case(&arena, stringify!($name), $msgs, $answer).await;
            arena.close(&[$($($series),+)?]).await;
        }
    };
}

const FORBIDDEN: &str = "rowcast_rejected_total{reason=\"forbidden\"}";
const FRAME_TOO_LARGE: &str = "rowcast_rejected_total{reason=\"frame_too_large\"}";

ws_message_case!(malformed_json: vec![text("{")] => WsAnswer::Error("bad_message"));
ws_message_case!(json_array: vec![text("[1,2]")] => WsAnswer::Error("bad_message"));
ws_message_case!(
    unknown_type: vec![text(r#"{"type":"nope"}"#)] => WsAnswer::Error("bad_message")
);
ws_message_case!(
    unknown_field: vec![text(r#"{"type":"subscribe","topics":["product-1"],"x":1}"#)]
        => WsAnswer::Error("bad_message")
);
ws_message_case!(
    unknown_field_on_ping: vec![text(r#"{"type":"ping","x":1}"#)] => WsAnswer::Error("bad_message")
);
ws_message_case!(
    unknown_field_on_activity: vec![text(r#"{"type":"activity","foo":1}"#)]
        => WsAnswer::Error("bad_message")
);
ws_message_case!(
    unknown_field_on_auth: vec![text(r#"{"type":"auth","token":"t","x":1}"#)]
        => WsAnswer::Error("bad_message")
);
ws_message_case!(
    message_as_array: vec![text(r#"["ping"]"#)] => WsAnswer::Error("bad_message")
);
ws_message_case!(
    subscribe_as_array: vec![text(r#"["subscribe",["product-1"]]"#)]
        => WsAnswer::Error("bad_message")
);
ws_message_case!(
    topics_not_a_list: vec![text(r#"{"type":"subscribe","topics":"a"}"#)]
        => WsAnswer::Error("bad_message")
);
ws_message_case!(
    topic_not_a_string: vec![text(r#"{"type":"subscribe","topics":[1]}"#)]
        => WsAnswer::Error("bad_message")
);
ws_message_case!(
    cursor_not_a_string: vec![text(r#"{"type":"subscribe","topics":["product-1"],"cursor":5}"#)]
        => WsAnswer::Error("bad_message")
);
ws_message_case!(
    empty_topic: vec![text(r#"{"type":"subscribe","topics":[""]}"#)]
        => WsAnswer::Error("bad_topic")
);
ws_message_case!(
    no_topics: vec![text(r#"{"type":"subscribe","topics":[]}"#)] => WsAnswer::Error("bad_topic")
);
ws_message_case!(
    control_characters: vec![text(r#"{"type":"subscribe","topics":["a\nb"]}"#)]
        => WsAnswer::Error("bad_topic")
);
ws_message_case!(
    topic_too_long: vec![text(json!({"type":"subscribe","topics":["x".repeat(201)]}).to_string())]
        => WsAnswer::Error("bad_topic")
);
ws_message_case!(
    topics_101: vec![text(
        json!({"type":"subscribe","topics":(0..101).map(|i| format!("product-{i}")).collect::<Vec<_>>()})
            .to_string()
    )] => WsAnswer::Error("too_many_topics")
);
ws_message_case!(
    sql_quote_topic: vec![text(
        json!({"type":"subscribe","topics":["order-1' OR '1'='1"]}).to_string()
    )] => WsAnswer::Forbidden("order-1' OR '1'='1"), counts FORBIDDEN
);
ws_message_case!(
    sql_drop_topic: vec![text(
        json!({"type":"subscribe","topics":["order-1; DROP TABLE market.orders; --"]}).to_string()
    )] => WsAnswer::Forbidden("order-1; DROP TABLE market.orders; --"), counts FORBIDDEN
);
ws_message_case!(
    non_numeric_id: vec![text(r#"{"type":"subscribe","topics":["order-abc"]}"#)]
        => WsAnswer::Forbidden("order-abc"), counts FORBIDDEN
);
ws_message_case!(
    huge_id: vec![text(r#"{"type":"subscribe","topics":["order-99999999999999999999999"]}"#)]
        => WsAnswer::Forbidden("order-99999999999999999999999"), counts FORBIDDEN
);
ws_message_case!(
    someone_elses_order: vec![text(r#"{"type":"subscribe","topics":["order-2"]}"#)]
        => WsAnswer::Forbidden("order-2"), counts FORBIDDEN
);
ws_message_case!(
    malformed_cursor: vec![text(r#"{"type":"subscribe","topics":["product-1"],"cursor":"!!!"}"#)]
        => WsAnswer::Error("bad_cursor")
);
ws_message_case!(
    long_cursor: vec![text(
        json!({"type":"subscribe","topics":["product-1"],"cursor":"A".repeat(5000)}).to_string()
    )] => WsAnswer::Error("bad_cursor")
);
ws_message_case!(
    second_auth: vec![text(json!({"type":"auth","token":super::arena::customer_token()}).to_string())]
        => WsAnswer::Error("auth_not_allowed")
);
ws_message_case!(
    binary_frame: vec![Message::Binary(vec![1u8, 2, 3].into())]
        => WsAnswer::Error("binary_not_supported")
);
ws_message_case!(
    invalid_utf8: vec![Message::Frame(Frame::message(
        vec![0xff, 0xfe, 0xfd],
        OpCode::Data(Data::Text),
        true
    ))] => WsAnswer::Close(1007)
);
ws_message_case!(
    huge_frame: vec![text("x".repeat(70 * 1024))] => WsAnswer::Close(1009), counts FRAME_TOO_LARGE
);
ws_message_case!(
    topics_10_000: vec![text(
        json!({"type":"subscribe","topics":(0..10_000).map(|i| i.to_string()).collect::<Vec<_>>()})
            .to_string()
    )] => WsAnswer::Close(1009), counts FRAME_TOO_LARGE
);
ws_message_case!(
    message_flood: (0..200).map(|_| text(r#"{"type":"ping"}"#)).collect()
        => WsAnswer::PongsThenClose(1008), counts "rowcast_rejected_total{reason=\"rate_limited\"}"
);
