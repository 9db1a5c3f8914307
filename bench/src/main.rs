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
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let report = rt
        .block_on(rowcast_bench::run(opts))
        .context("bench failed")?;
    if let Some(path) = &json {
        std::fs::write(path, report.to_json() + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let _ = writeln!(std::io::stdout(), "{}", report.table());
    Ok(())
}
