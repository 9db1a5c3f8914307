//! Issue #3 chaos test: random transactions (some held open, some rolled back),
//! 20 clients on random transports disconnecting and resuming at random moments
//! against two rowcast nodes (one in-process, one a separate process), a
//! PostgreSQL `restart -m fast`, and a SIGKILL + restart of the second node.
//! Node A reads the log in pages of 8 changes, and its database connection
//! fails (injected) between two pages of a batch six times.
//! Every client must end with exactly the committed changes of its topics:
//! no gap, no duplicate, each topic in commit order.
//!
//! Ground truth: each change carries a per-topic sequence number taken from a
//! counter row that the writing transaction locks, so sequence order is commit
//! order, and rolled-back transactions leave no number behind.

// This binary uses part of the harness that tests/main.rs uses in full.
#[allow(dead_code, unused_imports)]
mod common;

use common::*;
use futures::StreamExt;
use serde_json::Value;
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

const TOPICS: usize = 10;
const WRITERS: usize = 8;
const CLIENTS: usize = 20;
const LOAD: Duration = Duration::from_secs(20);
/// After the load: how long clients get to reach the final state.
const SETTLE: Duration = Duration::from_secs(90);

fn topic(i: usize) -> String {
    format!("chaos-{i}")
}

struct Node {
    child: Mutex<Option<Child>>,
    port: u16,
    url: String,
}

impl Node {
    fn spawn(&self) {
        let child = Command::new(env!("CARGO_BIN_EXE_rowcast"))
            .args(["serve", "--database-url", &self.url])
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            // node B answers every resume from the log, node A mostly from memory
            .args(["--window-changes", "0"])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn rowcast serve");
        *self.child.lock().unwrap() = Some(child);
    }

    fn kill(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One writer: random transactions until `until`.
async fn writer(url: String, until: Instant, seed: u64) -> (u64, u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mut committed, mut failed) = (0u64, 0u64);
    while Instant::now() < until {
        let Ok((db, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        tokio::spawn(conn);
        while Instant::now() < until {
            let mut topics: Vec<usize> = (0..rng.usize(1..=4))
                .map(|_| rng.usize(0..TOPICS))
                .collect();
            topics.sort_unstable(); // one lock order: no deadlocks between writers
            let emits_per_topic = rng.usize(1..=5);
            let hold = rng.u8(..10) == 0;
            let rollback = rng.u8(..20) == 0;
            let r: Result<(), tokio_postgres::Error> = async {
                db.batch_execute("BEGIN").await?;
                for t in &topics {
                    for _ in 0..emits_per_topic {
                        db.execute(
                            "WITH s AS (UPDATE chaos_seq SET n = n + 1 WHERE topic = $1 RETURNING n)
                             SELECT rowcast.emit(ARRAY[$1], 'chaos', jsonb_build_object('t', $1::text, 'n', s.n)) FROM s",
                            &[&topic(*t)],
                        )
                        .await?;
                    }
                }
                if hold {
                    tokio::time::sleep(Duration::from_millis(rng.u64(50..800))).await;
                }
                db.batch_execute(if rollback { "ROLLBACK" } else { "COMMIT" }).await?;
                Ok(())
            }
            .await;
            match r {
                Ok(()) if !rollback => committed += 1,
                Ok(()) => {}
                Err(_) => {
                    failed += 1;
                    if db.is_closed() {
                        break;
                    }
                    let _ = db.batch_execute("ROLLBACK").await;
                }
            }
        }
    }
    (committed, failed)
}

#[derive(Default)]
struct Seen {
    /// (topic, n) in arrival order
    events: Vec<(String, i64)>,
    cursor: Option<String>,
    sessions: u32,
}

impl Seen {
    fn record(&mut self, v: &Value) {
        let d = &v["data"];
        self.events.push((
            d["t"].as_str().unwrap_or("?").to_string(),
            d["n"].as_i64().unwrap_or(-1),
        ));
        self.cursor = v["id"].as_str().map(str::to_string);
    }

    fn reached(&self, target: &HashMap<String, i64>) -> bool {
        target
            .iter()
            .all(|(t, n)| *n == 0 || self.events.iter().any(|(et, en)| et == t && en == n))
    }
}

#[derive(Clone, Copy, Debug)]
enum T {
    Ws,
    Sse,
    Poll,
}

/// One session on one node for up to `len`; returns when the time is up or the connection ended.
async fn session(t: T, base: &str, topics: &str, seen: &mut Seen, len: Duration) {
    let end = Instant::now() + len;
    seen.sessions += 1;
    match t {
        T::Ws => {
            let mut url = format!("{}/v1/ws?topics={topics}", base.replacen("http", "ws", 1));
            if let Some(c) = &seen.cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let Ok(Ok((mut ws, _))) = tokio::time::timeout(
                Duration::from_secs(5),
                tokio_tungstenite::connect_async(&url),
            )
            .await
            else {
                return;
            };
            while let Ok(Some(Ok(m))) = tokio::time::timeout_at(end, ws.next()).await {
                if let tokio_tungstenite::tungstenite::Message::Text(txt) = m {
                    let v: Value = serde_json::from_str(txt.as_str()).expect("JSON");
                    if v["type"] == "event" {
                        seen.record(&v);
                    }
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
        }
        T::Sse => {
            let mut req = reqwest::Client::new().get(format!("{base}/v1/events?topics={topics}"));
            if let Some(c) = &seen.cursor {
                req = req.header("Last-Event-ID", c.as_str());
            }
            let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(5), req.send()).await
            else {
                return;
            };
            if !resp.status().is_success() {
                return;
            }
            let mut body = resp.bytes_stream();
            let mut buf = String::new();
            while let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(end, body.next()).await {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(i) = buf.find("\n\n") {
                    let block: String = buf.drain(..i + 2).collect();
                    let is_event = block.lines().any(|l| l.starts_with("id: "));
                    if let Some(d) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
                        if is_event {
                            seen.record(&serde_json::from_str(d).expect("JSON"));
                        }
                    }
                }
            }
        }
        T::Poll => {
            let http = reqwest::Client::new();
            while Instant::now() < end {
                let mut q = format!("{base}/v1/poll?topics={topics}&wait=1");
                if let Some(c) = &seen.cursor {
                    q.push_str(&format!("&cursor={c}"));
                }
                let Ok(Ok(r)) =
                    tokio::time::timeout(Duration::from_secs(5), http.get(&q).send()).await
                else {
                    return;
                };
                if !r.status().is_success() {
                    return;
                }
                let Ok(text) = r.text().await else { return };
                let Ok(v) = serde_json::from_str::<Value>(&text) else {
                    return;
                };
                for e in v["events"].as_array().into_iter().flatten() {
                    seen.record(e);
                }
                seen.cursor = v["cursor"].as_str().map(str::to_string);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_every_client_gets_exactly_the_committed_changes() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    db.batch_execute("CREATE TABLE chaos_seq (topic text PRIMARY KEY, n bigint NOT NULL)")
        .await
        .unwrap();
    for i in 0..TOPICS {
        db.execute("INSERT INTO chaos_seq VALUES ($1, 0)", &[&topic(i)])
            .await
            .unwrap();
    }
    // small pages, so that batches span several and faults can hit between them
    let a = server_with(&url, |c| c.source_page = 8).await;
    let a_base = a.base_url();
    let b = Arc::new(Node {
        child: Mutex::new(None),
        port: free_port(),
        url: url.clone(),
    });
    b.spawn();
    let b_base = format!("http://127.0.0.1:{}", b.port);
    wait_ready(&b_base).await;

    // Every client starts from a position taken before the first write, so
    // "everything committed" is exactly what each must end up with.
    let (status, v) = poll_raw(&a_base, "topics=chaos-0").await;
    assert_eq!(status, 200, "{v}");
    let origin = v["cursor"].as_str().expect("cursor").to_string();

    let start = Instant::now();
    let load_end = start + LOAD;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(url.clone(), load_end, 1000 + w as u64)))
        .collect();

    // Clients run until told the final target, then until they reach it.
    let target: Arc<Mutex<Option<HashMap<String, i64>>>> = Arc::new(Mutex::new(None));
    let give_up = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let mut rng = fastrand::Rng::with_seed(c as u64);
        let mut mine: Vec<usize> = (0..rng.usize(2..=3))
            .map(|_| rng.usize(0..TOPICS))
            .collect();
        mine.sort_unstable();
        mine.dedup();
        let topics: Vec<String> = mine.iter().map(|i| topic(*i)).collect();
        let home = if c % 2 == 0 {
            a_base.clone()
        } else {
            b_base.clone()
        };
        let other = if c % 2 == 0 {
            b_base.clone()
        } else {
            a_base.clone()
        };
        let (target, give_up) = (Arc::clone(&target), Arc::clone(&give_up));
        let origin = origin.clone();
        clients.push(tokio::spawn(async move {
            let mut seen = Seen {
                cursor: Some(origin),
                ..Seen::default()
            };
            let q = topics.join(",");
            for _ in 0..10_000 {
                if give_up.load(Ordering::Relaxed) {
                    break;
                }
                if let Some(t) = target.lock().unwrap().as_ref() {
                    let mine: HashMap<String, i64> =
                        topics.iter().map(|x| (x.clone(), t[x])).collect();
                    if seen.reached(&mine) {
                        break;
                    }
                }
                let t = [T::Ws, T::Sse, T::Poll][rng.usize(0..3)];
                // mostly the home node; sometimes the other one (cursors work anywhere)
                let base = if rng.u8(..4) == 0 { &other } else { &home };
                let len = Duration::from_millis(rng.u64(300..3000));
                let before = seen.events.len();
                Box::pin(session(t, base, &q, &mut seen, len)).await;
                if seen.events.len() == before {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            (topics, seen)
        }));
    }

    // Faults.
    tokio::time::sleep_until(start + Duration::from_secs(3)).await;
    rowcast::failpoints::fail("source.between_pages", 3);
    tokio::time::sleep_until(start + Duration::from_secs(6)).await;
    let pg = cluster();
    tokio::task::spawn_blocking(move || pg.restart())
        .await
        .unwrap()
        .expect("pg_ctl restart -m fast");
    println!("postgres restarted at {:?}", start.elapsed());
    tokio::time::sleep_until(start + Duration::from_secs(12)).await;
    b.kill();
    println!("node B killed at {:?}", start.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await;
    b.spawn();
    wait_ready(&b_base).await;
    println!("node B back at {:?}", start.elapsed());
    rowcast::failpoints::fail("source.between_pages", 3);

    let mut committed_txns = 0;
    let mut failed_txns = 0;
    for w in writers {
        let (c, f) = w.await.unwrap();
        committed_txns += c;
        failed_txns += f;
    }
    let db = connect(&url).await; // the first connection died with the restart
    let final_n: HashMap<String, i64> = db
        .query("SELECT topic, n FROM chaos_seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let logged: i64 = db
        .query_one("SELECT count(*) FROM rowcast.changes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        logged,
        final_n.values().sum::<i64>(),
        "the log holds exactly the committed changes"
    );
    *target.lock().unwrap() = Some(final_n.clone());
    println!(
        "writers: {committed_txns} transactions committed, {failed_txns} failed; {logged} changes committed"
    );

    let settle = tokio::spawn({
        let give_up = Arc::clone(&give_up);
        async move {
            tokio::time::sleep(SETTLE).await;
            give_up.store(true, Ordering::Relaxed);
        }
    });
    let mut total = 0;
    for (i, c) in clients.into_iter().enumerate() {
        let (topics, seen) = c.await.unwrap();
        let mut per: HashMap<&str, Vec<i64>> = HashMap::new();
        for (t, n) in &seen.events {
            assert!(
                topics.contains(t),
                "client {i} got {t} it did not subscribe to"
            );
            per.entry(t.as_str()).or_default().push(*n);
        }
        for t in &topics {
            let got = per.remove(t.as_str()).unwrap_or_default();
            let want: Vec<i64> = (1..=final_n[t]).collect();
            assert_eq!(
                got, want,
                "client {i} topic {t}: gap, duplicate or disorder"
            );
        }
        println!(
            "client {i:2}: {} sessions, {} events over {topics:?}",
            seen.sessions,
            seen.events.len()
        );
        total += seen.events.len();
    }
    settle.abort();
    assert!(
        !rowcast::failpoints::armed("source.between_pages"),
        "the mid-batch faults were never injected"
    );
    println!("chaos: {total} deliveries checked, all exact");
    a.stop().await;
}
