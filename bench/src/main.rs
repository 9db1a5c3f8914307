//! The `rowcast-bench` command line. Errors become `anyhow` here and nowhere else.

use anyhow::Context;
use clap::Parser;
use rowcast_bench::cli::Cli;
use std::io::Write;

/// The log filter unless `RUST_LOG` says otherwise: the bench's progress at
/// INFO, the PostgreSQL driver's NOTICEs not at all.
const DEFAULT_LOG: &str = "info,tokio_postgres=warn";

fn main() -> anyhow::Result<()> {
    rowcast::logging::init(DEFAULT_LOG);
    let cli = Cli::parse();
    let json = cli.json.clone();
    let opts = cli.options(std::env::args().collect())?;
    // a JSON path that cannot be written is refused before a run, not after it
    if let Some(path) = &json {
        let existed = path.exists();
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("--json {}: cannot write there", path.display()))?;
        if !existed {
            let _ = std::fs::remove_file(path);
        }
    }
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    // Ctrl-C or SIGTERM ends the run: dropping it stops the server and the
    // database it started (their handles kill them when dropped); exiting on
    // the signal's default would leave them running
    let report = rt
        .block_on(async {
            tokio::select! {
                r = rowcast_bench::run(opts) => Some(r),
                () = interrupted() => None,
            }
        })
        .transpose()
        .context("bench failed")?;
    let Some(report) = report else {
        anyhow::bail!("interrupted: the run was stopped, and what it started with it");
    };
    let _ = writeln!(std::io::stdout(), "{}", report.table());
    if let Some(path) = &json {
        std::fs::write(path, report.to_json() + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn interrupted() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
