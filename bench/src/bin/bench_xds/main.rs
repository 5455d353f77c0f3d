//! The driver of `make bench-xds` (bench/xds.sh); not part of CI.
//!
//! - `run`: against a real API server (the script brings it up): 5,000 contracts with their Services,
//!   EndpointSlices and Nodes, the release operator serving them over xDS, 10 real Envoys and 1,000
//!   simulated proxies (`channel_contracts_bench::simulated_proxy`) connected at once; measures the time
//!   until every proxy has the whole configuration, edit → all proxies acknowledged (seen by the simulated
//!   proxies and in the contracts' `status.proxies`), the operator's memory per connected proxy and its CPU
//!   time per push.
//! - `profile`: the xDS server's own steps in process, without gRPC or an API server (where its time and
//!   memory go).

mod profile;
mod report;
mod run;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "bench_xds", about = "The driver of make bench-xds")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The whole benchmark against a real API server, operator, Envoys and simulated proxies.
    Run(Box<run::RunArgs>),
    /// The xDS server's steps in process: snapshot, respond, encode, request, apply; memory per session.
    Profile(profile::ProfileArgs),
    /// The markdown of a run's results again, from its JSON (`run --json-out`).
    Report {
        /// The run's JSON.
        #[arg(long)]
        json: std::path::PathBuf,
        /// Where the markdown goes.
        #[arg(long)]
        md_out: std::path::PathBuf,
    },
}

fn log(msg: impl AsRef<str>) {
    channel_contracts_bench::log("bench_xds", msg);
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Run(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(run::run(*args))
        }
        Command::Profile(args) => {
            let json = profile::profile(&args)?;
            if let Some(path) = &args.json_out {
                std::fs::write(path, serde_json::to_string_pretty(&json)?)?;
            }
            Ok(())
        }
        Command::Report { json, md_out } => {
            let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&json)?)?;
            std::fs::write(md_out, report::markdown(&json))?;
            Ok(())
        }
    }
}
