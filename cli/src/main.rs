//! `kubectl-contracts`: see [`cli`].

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    cli::run(cli::Cli::parse()).await
}
