//! `swrepl registry …` (placeholder: being written).

use std::process::ExitCode;

/// Arguments of `swrepl registry`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub async fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("swrepl registry is not implemented yet")
}
