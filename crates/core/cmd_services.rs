//! `swrepl services …` (placeholder: being written).

use std::process::ExitCode;

/// Arguments of `swrepl services`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub async fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("swrepl services is not implemented yet")
}
