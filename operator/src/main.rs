//! The operator binary: parses the command line and runs the library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// The Channel Contracts operator.
#[derive(Parser, Debug)]
#[command(name = "operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the Envoy configuration of a ChannelContract file, with no cluster.
    Render(operator::render::RenderArgs),
    /// Run the controller: serve every ChannelContract to proxies over xDS and/or publish it as a ConfigMap.
    Run(operator::runtime::run::RunArgs),
    /// Print the Envoy bootstrap that connects a proxy to the operator's xDS server.
    Bootstrap(operator::runtime::bootstrap::BootstrapArgs),
    /// Check an installation in a throwaway namespace: the webhook denies a Service that falls short of a
    /// policy, and the operator programs a contract (what `helm test` runs).
    Check(operator::runtime::check::CheckArgs),
    /// Run the fleet hub: apply the ContractPolicies labelled csp.contracts.dev/propagate=true to every
    /// member cluster, keep them there, and roll the members' compliance up into the policies' status.
    Fleet(operator::fleet::FleetArgs),
}

fn check(args: operator::runtime::check::CheckArgs) -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(async {
        let client = kube::Client::try_default().await?;
        operator::runtime::check::run(&args, client, &mut std::io::stdout().lock()).await?;
        println!("passed");
        Ok(())
    })
}

fn run(args: operator::runtime::run::RunArgs) -> anyhow::Result<()> {
    lifecycle::init_logging(args.log_format);
    tokio::runtime::Runtime::new()?.block_on(async {
        let cancel = CancellationToken::new();
        lifecycle::cancel_on_signal(cancel.clone());
        operator::runtime::run::run(args, cancel).await
    })?;
    tracing::info!("stopped");
    Ok(())
}

fn fleet(args: operator::fleet::FleetArgs) -> anyhow::Result<()> {
    lifecycle::init_logging(args.log_format);
    tokio::runtime::Runtime::new()?.block_on(async {
        let cancel = CancellationToken::new();
        lifecycle::cancel_on_signal(cancel.clone());
        operator::fleet::run(args, cancel).await.map_err(Into::into)
    })
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Render(args) => operator::render::run(&args, &mut std::io::stdout().lock()).map_err(Into::into),
        Command::Run(args) => run(args),
        Command::Bootstrap(args) => {
            operator::runtime::bootstrap::run(&args, &mut std::io::stdout().lock()).map_err(Into::into)
        }
        Command::Check(args) => check(args),
        Command::Fleet(args) => fleet(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "exiting");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
