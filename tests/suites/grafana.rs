//! The shipped dashboard and alert rules only name metrics (and the SLO bucket,
//! `le="2"`, or `"2.0"` as Prometheus 3 stores it) that a running server actually exports.

use crate::common::*;

fn metric_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("rowcast_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out.sort();
    out.dedup();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_name_real_metrics() {
    let url = fresh_db().await;
    let srv = server(&url).await;
    let exported = srv.metrics();
    assert!(exported.contains("rowcast_sync_latency_seconds_bucket{transport=\"ws\",le=\"2\"}"));
    let dashboard = std::fs::read_to_string("grafana/rowcast-dashboard.json").unwrap();
    let _: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    let alerts = std::fs::read_to_string("grafana/alerts.yml").unwrap();
    let mut names = metric_names(&dashboard);
    names.extend(metric_names(&alerts));
    assert!(names.len() > 5);
    for name in names {
        assert!(exported.contains(&name), "{name} is not exported");
    }
    srv.stop().await;
}

/// `promtool` (Debian `prometheus`) checks the rules and runs their unit
/// tests (`grafana/alerts.test.yml`: a firing and a silent case per alert).
/// Without promtool the test is skipped loudly, except in CI (`ROWCAST_CI`).
#[test]
fn alert_rules_parse_and_their_unit_tests_pass() {
    let run = |args: &[&str]| std::process::Command::new("promtool").args(args).output();
    let Ok(version) = run(&["--version"]) else {
        tool_missing(
            "alert rule tests",
            "promtool (Debian package `prometheus`) is needed to test the alert rules",
        );
        return;
    };
    assert!(version.status.success());
    for args in [
        ["check", "rules", "grafana/alerts.yml"],
        ["test", "rules", "grafana/alerts.test.yml"],
    ] {
        let out = run(&args).unwrap();
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// FR-021's four success metrics each have a row on the dashboard: the
/// current value (a stat coloured by its target) and a graph with the target
/// drawn as a line; every recording rule a panel uses is defined.
#[test]
fn dashboard_shows_each_fr021_metric_with_its_target() {
    let text = std::fs::read_to_string("grafana/rowcast-dashboard.json").unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let exprs = |p: &serde_json::Value| -> Vec<String> {
        p["targets"]
            .as_array()
            .map(|t| {
                t.iter()
                    .filter_map(|t| t["expr"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    // (what identifies the metric, its target)
    let slos = [
        ("rowcast_sync_latency_seconds_bucket", "vector(2)"),
        ("rowcast_ws_gap_seconds_total", "vector(0.995)"),
        (
            "rowcast_checkouts_total{result=\"conflict\"}",
            "vector(0.01)",
        ),
        ("rowcast_sessions_total{fallback=\"yes\"}", "vector(0.05)"),
    ];
    let rows: Vec<&str> = panels
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    for (i, (metric, target)) in slos.iter().enumerate() {
        let row = format!("FR-021 {} ", i + 1);
        assert!(
            rows.iter().any(|r| r.starts_with(&row)),
            "no row {row}: {rows:?}"
        );
        let graph = panels
            .iter()
            .find(|p| p["type"] == "timeseries" && exprs(p).iter().any(|e| e.contains(metric)));
        let graph = graph.unwrap_or_else(|| panic!("no graph of {metric}"));
        assert!(
            exprs(graph).iter().any(|e| e == target),
            "{metric}: no target line {target}"
        );
        let stat = panels
            .iter()
            .find(|p| p["type"] == "stat" && exprs(p).iter().any(|e| e.contains(metric)));
        let stat = stat.unwrap_or_else(|| panic!("no current value of {metric}"));
        let steps = stat["fieldConfig"]["defaults"]["thresholds"]["steps"]
            .as_array()
            .unwrap();
        assert_eq!(
            steps.len(),
            2,
            "{metric}: the stat is coloured by its target"
        );
    }
    let rules = std::fs::read_to_string("grafana/alerts.yml").unwrap();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("rowcast:") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        let rule = &tail[..end];
        assert!(
            rules.contains(&format!("record: {rule}\n")),
            "{rule} is not a recording rule in alerts.yml"
        );
        rest = &tail[end..];
    }
    for file in [
        "grafana/provisioning/datasources/rowcast.yml",
        "grafana/provisioning/dashboards/rowcast.yml",
        "grafana/prometheus.yml",
    ] {
        assert!(std::path::Path::new(file).is_file(), "{file}");
    }
}

/// `rowcast_sessions_total` counts sessions that opened: not requests
/// refused (a forbidden topic, a 410 poll; a WebSocket refused after its
/// admission, by a 503 while the database is down, likewise: a client's
/// retries of one would count again and again), and `fallback=NONE` is no
/// fallback, whatever its case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_count_what_opened() {
    use rowcast::cursor::Cursor;
    use rowcast::snapshot::Snapshot;
    let url = fresh_market_db().await;
    let srv = server(&url).await;
    let base = srv.base_url();
    let sessions = |fallback: &str, transport: &str| {
        srv.metric(&format!(
            "rowcast_sessions_total{{fallback=\"{fallback}\",transport=\"{transport}\"}}"
        ))
    };
    // a topic the market policy denies an anonymous client
    let denied = "topics=farm-1-orders&fallback=ws_failed";
    let refused = reqwest::get(format!("{base}/v1/events?{denied}"))
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(poll_raw(&base, denied).await.0, 403);
    let far = Cursor::boundary(Snapshot::new(1 << 40, vec![])).encode();
    let (status, _) = poll_raw(
        &base,
        &format!("topics=farm-1&cursor={far}&fallback=ws_failed"),
    )
    .await;
    assert_eq!(status, 410);
    for (f, t) in [("yes", "sse"), ("yes", "poll"), ("no", "ws")] {
        assert_eq!(sessions(f, t), 0.0, "{f} {t}");
    }
    // what opens counts once, and NONE is none
    let _sse = SseClient::connect(&base, "topics=farm-1&fallback=NONE", None).await;
    assert_eq!(
        poll_raw(&base, "topics=farm-1&fallback=ws_failed").await.0,
        200
    );
    let _ws = WsClient::connect(&base, "topics=farm-1").await;
    eventually("the sessions counted", || {
        sessions("no", "sse") == 1.0
            && sessions("yes", "poll") == 1.0
            && sessions("no", "ws") == 1.0
    })
    .await;
    assert_eq!(sessions("yes", "sse"), 0.0);
    srv.stop().await;
}

/// What any exporter shows of its process, the build, and the client pool
/// (its connections by state and the requests waiting for one, as of the
/// scrape), beside rowcast's own series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_build_and_pool_series_are_exported() {
    let url = fresh_db().await;
    let srv = server(&url).await;
    // a poll with a cursor uses a pooled connection
    let cursor = resumable_cursor(&srv.base_url(), "x").await;
    let (status, _) = poll_raw(&srv.base_url(), &format!("topics=x&cursor={cursor}")).await;
    assert_eq!(status, 200);
    let m = srv.metrics();
    for series in [
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_cpu_seconds_total ",
        &format!(
            "rowcast_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        ),
        "rowcast_pool_connections{state=\"idle\"} ",
        "rowcast_pool_connections{state=\"in_use\"} ",
        "rowcast_pool_waiting 0",
    ] {
        assert!(m.contains(series), "{series} missing from\n{m}");
    }
    let pooled = srv.metric("rowcast_pool_connections{state=\"idle\"}")
        + srv.metric("rowcast_pool_connections{state=\"in_use\"}");
    assert!(pooled >= 1.0, "the pool made no connection: {pooled}");
    srv.stop().await;
}
