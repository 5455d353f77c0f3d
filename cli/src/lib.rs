//! `kubectl contracts`: the command line of Channel Contracts (the binary `kubectl-contracts`, a kubectl
//! plugin).
//!
//! Offline, on files, for CI: [`suite`] (`test`: policy tests with expected answers, JUnit and JSON),
//! [`check`] (manifests judged as the webhook would, exit code by enforcement action, OpenReports) and
//! [`render`] (a contract's Envoy resources, judged by a real `envoy --mode validate`). On a cluster:
//! [`cluster`] (`status` and `drill`). The judgements are the webhook's own code ([`offline`]) and the
//! resources the operator's own translation: nothing is re-implemented here.

pub mod check;
pub mod cluster;
pub mod manifests;
pub mod offline;
pub mod render;
pub mod report;
pub mod suite;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// The command line.
#[derive(Parser, Debug)]
#[command(
    name = "kubectl-contracts",
    bin_name = "kubectl contracts",
    version,
    about = "Channel Contracts on the command line: test and check policies offline, render contracts, see status and run drills",
    after_help = "Examples:
  kubectl contracts test policies/tests/                      # policy tests; --junit report.xml for CI
  kubectl contracts check -f deploy/ --policies policies/     # would the webhook admit these manifests?
  kubectl contracts render -f contract.yaml --validate        # the Envoy resources, judged by Envoy
  kubectl contracts status                                    # contracts, proxies, policies, fleet
  kubectl contracts drill payment-verify --region gz --within 2s --wait

Exit codes: 0 success, 1 a test failed / a Deny policy refuses / Envoy refuses / a drill failed,
2 the input cannot be read or the command cannot run."
)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run policy test suites: each case's object judged by the webhook's evaluation against the expected
    /// answer.
    Test(TestArgs),
    /// Judge manifests offline against ContractPolicies, as the webhook would on `kubectl apply`.
    Check(check::CheckArgs),
    /// Print a contract's Envoy resources; with --validate, Envoy's own verdict on them.
    Render(render::RenderArgs),
    /// Contracts with their proxies, policies with their compliance, and the fleet when this is a hub.
    Status(cluster::StatusArgs),
    /// Create a ContractDrill and, with --wait, follow it and exit by its result.
    Drill(cluster::DrillArgs),
    /// Print the JSON Schema of test suite files.
    Schema,
    /// Print a shell completion script.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// How `test` writes its machine output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TestOutput {
    /// One JSON document on standard output.
    Json,
}

/// Arguments of `test`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "Examples:
  # Every suite under policies/tests (files with kind: Suite), JUnit for the CI system
  kubectl contracts test policies/tests/ --junit test-results/contracts.xml

  # JSON on standard output, the human summary on standard error
  kubectl contracts test suite.yaml -o json > results.json

Suite format: cli/suite.schema.json (`kubectl contracts schema`).
Exit codes: 0 every case passed, 1 a case failed, 2 a suite cannot be read.")]
pub struct TestArgs {
    /// Suite files, or directories to search for them.
    #[arg(required = true, value_name = "SUITE")]
    pub suites: Vec<PathBuf>,
    /// Also write JUnit XML here.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Also write JSON on standard output.
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<TestOutput>,
    /// Also print what the webhook said for passing cases.
    #[arg(short = 'v', long)]
    pub verbose: bool,
}

/// Runs a command; what it prints goes to standard output and standard error.
pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Test(args) => test(&args),
        Command::Check(args) => check_command(&args),
        Command::Render(args) => render_command(&args),
        Command::Status(args) => status_command(&args).await,
        Command::Drill(args) => drill_command(&args).await,
        Command::Schema => {
            println!("{}", serde_json::to_string_pretty(&suite::schema()).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Command::Completion { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "kubectl-contracts", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
    }
}

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}

fn test(args: &TestArgs) -> ExitCode {
    let files = match suite::find(&args.suites) {
        Ok(files) => files,
        Err(e) => return fail(2, e),
    };
    if files.is_empty() {
        let places: Vec<String> = args.suites.iter().map(|p| p.display().to_string()).collect();
        return fail(2, format!("no suite (kind: Suite, apiVersion: {}) in {}", suite::API_VERSION, places.join(", ")));
    }
    let results: Vec<suite::SuiteResult> = files.iter().map(|f| suite::run(f)).collect();
    eprint!("{}", report::human(&results, args.verbose));
    if let Some(path) = &args.junit {
        // Its folder is made as needed (`--junit test-results/policies.xml` in a fresh checkout).
        let written = report::junit(&results).map_err(|e| e.to_string()).and_then(|xml| {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            }
            std::fs::write(path, xml).map_err(|e| e.to_string())
        });
        if let Err(e) = written {
            return fail(2, format!("cannot write {}: {e}", path.display()));
        }
    }
    if args.output == Some(TestOutput::Json) {
        println!("{}", serde_json::to_string_pretty(&report::json(&results)).unwrap_or_default());
    }
    let totals = report::Totals::of(&results);
    if totals.broken > 0 {
        ExitCode::from(2)
    } else if totals.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn check_command(args: &check::CheckArgs) -> ExitCode {
    let (checked, cluster, objects) = match check::check(args) {
        Ok(found) => found,
        Err(e) => return fail(2, e),
    };
    match args.output {
        check::CheckOutput::Human => print!("{}", check::human(&checked, args.verbose)),
        check::CheckOutput::Json => println!("{}", serde_json::to_string_pretty(&checked).unwrap_or_default()),
        check::CheckOutput::Openreports => {
            for report in check::openreports(&cluster, &objects, &args.namespace) {
                match yaml_serde::to_string(&report) {
                    Ok(yaml) => print!("---\n{yaml}"),
                    Err(e) => return fail(2, format!("cannot write a Report: {e}")),
                }
            }
            eprint!("{}", check::human(&checked, false));
        }
    }
    if check::fails(&checked, args.strict) { ExitCode::from(1) } else { ExitCode::SUCCESS }
}

fn render_command(args: &render::RenderArgs) -> ExitCode {
    let resources = match render::resources(args) {
        Ok(r) => r,
        Err(e) => return fail(e.exit_code(), e),
    };
    if !args.quiet {
        print!("{}", render::text(&resources));
        let _ = std::io::stdout().flush();
    }
    if !args.validate {
        return ExitCode::SUCCESS;
    }
    let verdict = render::find_envoy(args.envoy.as_deref()).and_then(|envoy| render::validate(&resources, &envoy));
    match verdict {
        Ok(v) if v.accepted => {
            eprintln!("Envoy accepts the configuration {} ({}: {})", resources.config_version, v.envoy, v.version);
            ExitCode::SUCCESS
        }
        Ok(v) => {
            eprintln!(
                "Envoy refuses the configuration {} ({}: {}):\n{}",
                resources.config_version,
                v.envoy,
                v.version,
                v.output.trim_end()
            );
            ExitCode::from(1)
        }
        Err(e) => fail(e.exit_code(), e),
    }
}

async fn status_command(args: &cluster::StatusArgs) -> ExitCode {
    let (client, _) = match cluster::connect(&args.cluster).await {
        Ok(c) => c,
        Err(e) => return fail(2, e),
    };
    match cluster::status(&client, args.cluster.namespace.as_deref()).await {
        Ok(status) => {
            match args.output {
                cluster::StatusOutput::Table => print!("{}", cluster::table(&status)),
                cluster::StatusOutput::Json => {
                    println!("{}", serde_json::to_string_pretty(&status).unwrap_or_default())
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(2, e),
    }
}

async fn drill_command(args: &cluster::DrillArgs) -> ExitCode {
    let (client, namespace) = match cluster::connect(&args.cluster).await {
        Ok(c) => c,
        Err(e) => return fail(2, e),
    };
    let started = std::time::Instant::now();
    let mut say = |line: &str| {
        let s = started.elapsed().as_secs_f64();
        println!("[{s:6.1}s] {line}");
        let _ = std::io::stdout().flush();
    };
    match cluster::drill(&client, &namespace, args, &mut say).await {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(crds::DrillPhase::Passed)) => ExitCode::SUCCESS,
        Ok(Some(_)) => ExitCode::from(1),
        Err(e) => fail(2, e),
    }
}
