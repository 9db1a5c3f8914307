//! Hostile requests over HTTP: each refusal is the same on SSE, polling and
//! the WS upgrade; then SSE's resume header, polling parameters and a client
//! that never finishes its headers.

use super::arena::{customer_token, refused_on_every_path, Arena};
use crate::common::*;

/// `name: query[, "Header" = value…] => status "code"[, counts "series", …]`:
/// one test that sends the request on every path in an arena.
macro_rules! http_case {
    (
        $name:ident: $query:expr $(, $header:literal = $value:expr)*
            => $status:literal $code:literal $(, counts $($series:expr),+)?
    ) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let arena = Arena::open().await;
            let query: String = $query.into();
            let headers: Vec<(&str, String)> = vec![$(($header, $value.to_string())),*];
            let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            refused_on_every_path(&arena, stringify!($name), &query, &headers, $status, $code)
                .await;
            arena.close(&[$($($series),+)?]).await;
        }
    };
}

const FORBIDDEN: &str = "rowcast_rejected_total{reason=\"forbidden\"}";
const ORIGIN: &str = "rowcast_rejected_total{reason=\"origin\"}";

http_case!(no_topics: "" => 400 "bad_topic");
http_case!(empty_topics: "topics=,," => 400 "bad_topic");
http_case!(topic_too_long: format!("topics={}", "y".repeat(201)) => 400 "bad_topic");
http_case!(
    topics_10_000: format!(
        "topics={}",
        (0..10_000).map(|i| format!("t{i}")).collect::<Vec<_>>().join(",")
    ) => 400 "too_many_topics"
);
http_case!(
    sql_topic: "topics=order-1%27%20OR%20%271%27%3D%271" => 403 "forbidden", counts FORBIDDEN
);
http_case!(non_numeric_id: "topics=order-abc" => 403 "forbidden", counts FORBIDDEN);
http_case!(
    private_topic_anonymous: "topics=product-1,order-1" => 403 "forbidden", counts FORBIDDEN
);
http_case!(
    someone_elses_order: format!("topics=order-2&token={}", customer_token())
        => 403 "forbidden", counts FORBIDDEN
);
http_case!(malformed_cursor: "topics=product-1&cursor=%21%21%21" => 400 "bad_cursor");
http_case!(
    evil_origin: "topics=product-1", "Origin" = "https://evil.example"
        => 403 "forbidden_origin", counts ORIGIN
);
http_case!(
    null_origin: "topics=product-1", "Origin" = "null" => 403 "forbidden_origin", counts ORIGIN
);

/// SSE's own resume header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_last_event_id() {
    let arena = Arena::open().await;
    let (status, body) = get_json(
        &arena.base,
        "/v1/events?topics=product-1",
        &[("Last-Event-ID", "garbage!")],
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_cursor")));
    arena.close(&[]).await;
}

/// `name: "parameter" => "code"`: one polling test each.
macro_rules! polling_parameter_case {
    ($($name:ident: $param:literal => $code:literal;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let arena = Arena::open().await;
            let path = concat!("/v1/poll?topics=product-1&", $param);
            let (status, body) = get_json(&arena.base, path, &[]).await;
            assert_eq!((status, body["error"].as_str()), (400, Some($code)), "{}", $param);
            arena.close(&[]).await;
        }
    )*};
}

polling_parameter_case! {
    wait_not_a_number: "wait=abc" => "bad_wait";
    wait_negative: "wait=-1" => "bad_wait";
    limit_zero: "limit=0" => "bad_limit";
    limit_huge: "limit=99999999999999999999" => "bad_limit";
}

/// Slow headers: the connection is closed, nobody else waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off() {
    use tokio::io::AsyncWriteExt;
    let arena = Arena::open().await;
    let mut slow = tokio::net::TcpStream::connect(arena.srv.addr)
        .await
        .unwrap();
    slow.write_all(b"GET /v1/poll?topics=product-1 HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // EOF or a reset: either way the server hung up within the bound
    let answer = until_closed(&mut slow).await;
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
    arena.close(&[]).await;
}
