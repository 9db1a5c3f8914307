//! The shipped dashboard and alert rules only name metrics (and the `le="2"`
//! SLO bucket) that a running server actually exports.

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
