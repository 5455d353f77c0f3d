//! The operator binary: parses the command line and runs the library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Render(args) => operator::render::run(&args, &mut std::io::stdout().lock()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
