//! `rowcast-floor`: the minimal relay the bench compares rowcast with (see
//! `rowcast_bench::floor`). Errors become `anyhow` here and nowhere else.

use clap::Parser;
use rowcast_bench::floor::{run_blocking, FloorArgs};

fn main() -> anyhow::Result<()> {
    rowcast::logging::init("warn");
    run_blocking(FloorArgs::parse())?;
    Ok(())
}
