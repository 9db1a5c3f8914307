//! Issue #9 item 16 (and the `track` half of issue #8 defect 2):
//! `rowcast.track` names are unique across schemas, the key column is
//! checked, and tracking says nothing (no NOTICE) when all is well.

use crate::common::*;
use futures::StreamExt;
use std::sync::{Arc, Mutex};

/// A raw connection that records every NOTICE the server sends it.
async fn noticing(url: &str) -> (tokio_postgres::Client, Arc<Mutex<Vec<String>>>) {
    let (client, mut conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let notices = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&notices);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(futures::stream::poll_fn(|cx| conn.poll_message(cx)));
        while let Some(Ok(m)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notice(n) = m {
                sink.lock().unwrap().push(n.message().to_string());
            }
        }
    });
    (client, notices)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_names_are_unique_across_schemas_and_keys_are_checked() {
    let url = fresh_db().await;
    let (db, notices) = noticing(&url).await;
    db.batch_execute(
        "CREATE SCHEMA a; CREATE SCHEMA b;
         CREATE TABLE a.items (id bigint PRIMARY KEY, v text);
         CREATE TABLE b.items (id bigint PRIMARY KEY, v text);
         CREATE TABLE public.items (id bigint PRIMARY KEY, v text, maybe text);
         SELECT rowcast.track('a.items');
         SELECT rowcast.track('b.items');
         SELECT rowcast.track('items');
         SELECT rowcast.track('items');      -- again: replaces, silently
         SELECT rowcast.untrack('b.items');
         SELECT rowcast.untrack('b.items');  -- not tracked: nothing to say
         SELECT rowcast.track('b.items');",
    )
    .await
    .unwrap();
    assert_eq!(*notices.lock().unwrap(), Vec::<String>::new());

    let srv = server(&url).await;
    let base = srv.base_url();
    let mut p = Poller::start(&base, "a.items-1,b.items-1,items-1").await;
    db.batch_execute(
        "INSERT INTO a.items VALUES (1, 'a');
         INSERT INTO b.items VALUES (1, 'b');
         INSERT INTO public.items VALUES (1, 'p');",
    )
    .await
    .unwrap();
    let got: Vec<(String, String, String)> = p
        .events(3)
        .await
        .into_iter()
        .map(|e| {
            let v = e.data["row"]["v"].as_str().unwrap().to_string();
            (e.topic, e.event, v)
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("a.items-1".into(), "a.items.inserted".into(), "a".into()),
            ("b.items-1".into(), "b.items.inserted".into(), "b".into()),
            ("items-1".into(), "items.inserted".into(), "p".into()),
        ]
    );

    // a key column that does not exist, or may be NULL, is refused at track
    // time, with PostgreSQL's message in rowcast's error text
    for (sql, says) in [
        (
            "SELECT rowcast.track('items', 'x', 'no_such_column')",
            "there is no column no_such_column",
        ),
        ("SELECT rowcast.track('items', 'x', 'maybe')", "allows NULL"),
        ("SELECT rowcast.track('items', 'a,b')", "comma"),
    ] {
        let e = db.batch_execute(sql).await.unwrap_err();
        let text = rowcast::Error::from(e).to_string();
        assert!(text.contains(says), "{sql}: {text}");
        assert!(!text.ends_with("db error"), "{text}");
    }
    // the refused calls left the previous trigger in place: writes go on,
    // and no change without a topic was ever written
    db.execute("UPDATE public.items SET v = 'q' WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(p.events(1).await[0].event, "items.updated");
    let bad: i64 = db
        .query_one(
            "SELECT count(*) FROM rowcast.changes
              WHERE topics IS NULL OR array_position(topics, NULL) IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(bad, 0);
    assert_eq!(*notices.lock().unwrap(), Vec::<String>::new());
    srv.stop().await;
}

/// An UPDATE of a tracked row's key moves the row between topics: `deleted`
/// on the old key's topic, `inserted` on the new key's, so the old topic's
/// clients hear that it left and its snapshot no longer shows it as a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_change_moves_the_row_between_topics() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE public.tags (slug text PRIMARY KEY, label text);
         SELECT rowcast.track('tags');
         INSERT INTO public.tags VALUES ('o1', 'one');",
    )
    .await
    .unwrap();
    let srv = server(&url).await;
    let base = srv.base_url();
    let mut p = Poller::start(&base, "tags-o1,tags-o9").await;
    db.batch_execute(
        "UPDATE public.tags SET slug = 'o9' WHERE slug = 'o1';
         UPDATE public.tags SET label = 'nine' WHERE slug = 'o9';",
    )
    .await
    .unwrap();
    let got: Vec<(String, String, String)> = p
        .events(3)
        .await
        .into_iter()
        .map(|e| {
            let side = if e.data.get("row").is_some() {
                "row"
            } else {
                "old"
            };
            let slug = e.data[side]["slug"].as_str().unwrap().to_string();
            (e.topic, e.event, format!("{side}:{slug}"))
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("tags-o1".into(), "tags.deleted".into(), "old:o1".into()),
            ("tags-o9".into(), "tags.inserted".into(), "row:o9".into()),
            ("tags-o9".into(), "tags.updated".into(), "row:o9".into()),
        ]
    );
    let (_, snap) = poll_raw(&base, "topics=tags-o1&snapshot=true").await;
    let last: Vec<&str> = snap["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(last, ["tags.deleted"]);
    srv.stop().await;
}

/// A statement that shifts keys onto keys that stay taken (`SET id = id + 1`
/// on a DEFERRABLE key) marks no live row deleted: each row's `inserted`
/// lands on its new key, and only the key left free gets `deleted`. A table
/// whose name holds a line break cannot be tracked (its events could not be
/// named).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_shifted_in_one_statement_leave_no_live_row_deleted() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    db.batch_execute(
        "CREATE TABLE public.seats (id int PRIMARY KEY DEFERRABLE, who text);
         SELECT rowcast.track('seats');
         INSERT INTO public.seats VALUES (1, 'ann'), (2, 'bob'), (3, 'cyd');",
    )
    .await
    .unwrap();
    let srv = server(&url).await;
    let base = srv.base_url();
    let topics = "seats-1,seats-2,seats-3,seats-4";
    let mut p = Poller::start(&base, topics).await;
    db.batch_execute("UPDATE public.seats SET id = id + 1")
        .await
        .unwrap();
    let mut got: Vec<(String, String)> = p
        .events(4)
        .await
        .into_iter()
        .map(|e| {
            let who = e.data.get("row").unwrap_or(&e.data["old"])["who"]
                .as_str()
                .unwrap()
                .to_string();
            (e.topic, format!("{} {who}", e.event))
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("seats-1".to_string(), "seats.deleted ann".to_string()),
            ("seats-2".to_string(), "seats.inserted ann".to_string()),
            ("seats-3".to_string(), "seats.inserted bob".to_string()),
            ("seats-4".to_string(), "seats.inserted cyd".to_string()),
        ]
    );
    let (_, snap) = poll_raw(&base, &format!("topics={topics}&snapshot=true")).await;
    let mut state: Vec<String> = snap["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["topic"].as_str().unwrap(),
                e["event"].as_str().unwrap()
            )
        })
        .collect();
    state.sort();
    assert_eq!(
        state,
        [
            "seats-1 seats.deleted",
            "seats-2 seats.inserted",
            "seats-3 seats.inserted",
            "seats-4 seats.inserted"
        ]
    );
    let e = db
        .batch_execute(
            "CREATE TABLE public.\"two\nlines\" (id int PRIMARY KEY);
             SELECT rowcast.track('public.\"two\nlines\"', 'two');",
        )
        .await
        .unwrap_err();
    let e = rowcast::Error::from(e).to_string();
    assert!(e.contains("line break"), "{e}");
    srv.stop().await;
}

/// The app's own role, with the grants the README lists and nothing on
/// rowcast's tables besides, writes a tracked table, and the change is
/// delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_role_with_the_documented_grants_writes_a_tracked_table() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    let role = role_of_this_db(&db, "app").await;
    db.batch_execute(&format!(
        "CREATE TABLE public.tickets (id bigint PRIMARY KEY, title text);
         SELECT rowcast.track('tickets');
         CREATE ROLE {role} LOGIN;
         GRANT SELECT, INSERT, UPDATE, DELETE ON public.tickets TO {role};
         GRANT USAGE ON SCHEMA rowcast TO {role};
         GRANT INSERT ON rowcast.changes TO {role};
         GRANT SELECT, INSERT, UPDATE ON rowcast.presence TO {role};
         GRANT CREATE ON SCHEMA public TO {role};"
    ))
    .await
    .unwrap();
    let srv = server(&url).await;
    let mut p = Poller::start(&srv.base_url(), "tickets-1,presence-u1").await;
    let mut as_app: tokio_postgres::Config = url.parse().unwrap();
    as_app.user(&role);
    let (app, conn) = as_app.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    app.batch_execute(
        "INSERT INTO public.tickets VALUES (1, 'first');
         UPDATE public.tickets SET title = 'second' WHERE id = 1;
         DELETE FROM public.tickets WHERE id = 1;",
    )
    .await
    .expect("the app's role writes with the documented grants");
    // and, owning a table of its own, tracks it
    app.batch_execute(
        "CREATE TABLE public.notes (id bigint PRIMARY KEY, body text);
         SELECT rowcast.track('notes');
         INSERT INTO public.notes VALUES (1, 'mine');",
    )
    .await
    .expect("the owner of a table tracks it with the same grants");
    // and, with the presence grant, reports a user's activity from its own SQL
    app.batch_execute("SELECT rowcast.touch('u1')")
        .await
        .expect("the app's role calls rowcast.touch with the documented grant");
    let got: Vec<String> = p.events(4).await.into_iter().map(|e| e.event).collect();
    assert_eq!(
        got,
        [
            "tickets.inserted",
            "tickets.updated",
            "tickets.deleted",
            "user.presence"
        ]
    );
    srv.stop().await;
}

/// README "Plugging in": names are the stored identifiers, unquoted and case
/// kept; an UPDATE that moves a row to another partition reaches clients as
/// `deleted` then `inserted` on the row's topic (PostgreSQL fires no row
/// UPDATE trigger for it), and an UPDATE within a partition as `updated`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quoted_names_and_rows_moving_between_partitions() {
    let url = fresh_db().await;
    let db = connect(&url).await;
    db.batch_execute(
        r#"CREATE SCHEMA "Support";
         CREATE TABLE "Support"."Open Tickets" (id bigint PRIMARY KEY, title text);
         SELECT rowcast.track('"Support"."Open Tickets"');
         CREATE TABLE public.audit (id bigint NOT NULL, at date NOT NULL, what text,
                                    PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
         CREATE TABLE public.audit_2026 PARTITION OF public.audit
             FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
         CREATE TABLE public.audit_2027 PARTITION OF public.audit
             FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
         SELECT rowcast.track('public.audit', NULL, 'id');"#,
    )
    .await
    .unwrap();
    let srv = server(&url).await;
    let mut p = Poller::start(&srv.base_url(), "Support.Open Tickets-1,audit-1").await;
    db.batch_execute(
        r#"INSERT INTO "Support"."Open Tickets" VALUES (1, 'first');
         INSERT INTO public.audit VALUES (1, '2026-05-01', 'a');
         UPDATE public.audit SET what = 'b' WHERE id = 1;
         UPDATE public.audit SET at = '2027-06-01' WHERE id = 1;"#,
    )
    .await
    .unwrap();
    let got: Vec<(String, String)> = p
        .events(5)
        .await
        .into_iter()
        .map(|e| (e.topic, e.event))
        .collect();
    let want = [
        ("Support.Open Tickets-1", "Support.Open Tickets.inserted"),
        ("audit-1", "audit.inserted"),
        ("audit-1", "audit.updated"),
        ("audit-1", "audit.deleted"),
        ("audit-1", "audit.inserted"),
    ];
    assert_eq!(
        got,
        want.map(|(t, e)| (t.to_string(), e.to_string())).to_vec()
    );
    srv.stop().await;
}
