//! `rowcast-floor`: the minimal relay the bench compares rowcast with (see
//! `rowcast_bench::floor`). Errors become `anyhow` here and nowhere else.

use clap::Parser;
use rowcast_bench::floor::{run_blocking, FloorArgs};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    run_blocking(FloorArgs::parse())?;
    Ok(())
}
