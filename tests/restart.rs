//! Issue #3: PostgreSQL goes away and comes back; connected clients lose nothing
//! and get nothing twice, and `/readyz` tells the truth meanwhile.
//! (Own test binary: it stops the cluster the binary shares.)

mod common;

use common::*;
use std::time::Duration;

async fn readyz(base: &str) -> u16 {
    match reqwest::get(format!("{base}/readyz")).await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

async fn wait_readyz(base: &str, want: u16) {
    for _ in 0..600 {
        if readyz(base).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("/readyz never answered {want}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_loses_nothing() {
    let url = fresh_db().await;
    let srv = server(&url).await;
    let base = srv.base_url();
    let mut ws = WsClient::connect(&base, "topics=r").await;
    let mut sse = SseClient::connect(&base, "topics=r", None).await;
    let mut poller = Poller::start(&base, "r").await;
    let emit = |db: tokio_postgres::Client, from: i64, to: i64| async move {
        db.execute(
            "SELECT rowcast.emit(ARRAY['r'], 'test.n', jsonb_build_object('n', g))
               FROM generate_series($1::bigint, $2::bigint) g",
            &[&from, &to],
        )
        .await
        .unwrap();
    };
    emit(connect(&url).await, 1, 50).await;
    let mut got_ws = events(&mut ws.rx, 50).await;
    let mut got_sse = events(&mut sse.rx, 50).await;

    let pg = cluster();
    tokio::task::spawn_blocking(move || pg.stop())
        .await
        .unwrap()
        .unwrap();
    wait_readyz(&base, 503).await;
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("rowcast_source_connected 0"), "{metrics}");
    tokio::task::spawn_blocking(move || pg.start_again())
        .await
        .unwrap()
        .unwrap();
    wait_readyz(&base, 200).await;

    emit(connect(&url).await, 51, 100).await;
    got_ws.extend(events(&mut ws.rx, 50).await);
    got_sse.extend(events(&mut sse.rx, 50).await);
    let got_poll = poller.events(100).await;
    let want: Vec<i64> = (1..=100).collect();
    for (who, got) in [("ws", got_ws), ("sse", got_sse), ("poll", got_poll)] {
        let ns: Vec<i64> = got.iter().map(|e| e.data["n"].as_i64().unwrap()).collect();
        assert_eq!(ns, want, "{who}");
    }
    // and a restart with `pg_ctl restart -m fast` while writes continue
    let writer = {
        let url = url.clone();
        tokio::spawn(async move {
            let mut done = 100;
            for _ in 0..2000 {
                if done >= 200 {
                    break;
                }
                let Ok((db, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                tokio::spawn(conn);
                while done < 200 {
                    let n = done + 1;
                    match db
                        .execute(
                            "SELECT rowcast.emit(ARRAY['r'], 'test.n', jsonb_build_object('n', $1::bigint))",
                            &[&n],
                        )
                        .await
                    {
                        Ok(_) => done = n,
                        Err(_) => break,
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::task::spawn_blocking(move || pg.restart())
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    // An emit whose commit raced the restart may or may not have committed:
    // the log is the truth, and every client must match it exactly.
    let db = connect(&url).await;
    let committed = column_i64(
        &db,
        "SELECT (payload->>'n')::bigint FROM rowcast.changes WHERE (payload->>'n')::bigint > 100 ORDER BY id",
    )
    .await;
    let k = committed.len();
    let ws_more: Vec<i64> = events(&mut ws.rx, k)
        .await
        .iter()
        .map(|e| e.data["n"].as_i64().unwrap())
        .collect();
    let sse_more: Vec<i64> = events(&mut sse.rx, k)
        .await
        .iter()
        .map(|e| e.data["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ws_more, committed);
    assert_eq!(sse_more, committed);
    // nothing beyond
    db.execute(
        "SELECT rowcast.emit(ARRAY['r'], 'test.n', '{\"n\": -1}')",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(next_event(&mut ws.rx).await.data["n"], -1);
    assert_eq!(next_event(&mut sse.rx).await.data["n"], -1);
    srv.stop().await;
}
