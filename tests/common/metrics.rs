//! Reading `/metrics` text, for servers running as child processes (an
//! in-process server answers `Server::metric` / `Server::metrics` directly).

/// The `/metrics` text served at `base`.
pub(crate) async fn scrape(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("/metrics body")
}

/// The value of one series in `/metrics` text, written as exported
/// (`rowcast_connections{transport="sse"}`); 0 when it is absent, as
/// `Server::metric` answers.
pub(crate) fn metric_in(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .filter(|rest| rest.starts_with(' '))
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}
