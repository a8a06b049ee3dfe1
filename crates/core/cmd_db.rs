//! `swrepl db …` (placeholder: being written).

use std::process::ExitCode;

/// Arguments of `swrepl db`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub async fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("swrepl db is not implemented yet")
}
