//! `swrepl switchover …` (placeholder: being written).

use std::process::ExitCode;

/// Arguments of `swrepl switchover`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub async fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("swrepl switchover is not implemented yet")
}
