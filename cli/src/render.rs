//! `kubectl contracts render`: the Envoy resources of a contract file, made by the operator's own
//! translation ([`operator::render`]), and with `--validate` the verdict of a real `envoy --mode validate`
//! on a bootstrap that embeds them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use operator::envoy::bootstrap;
use operator::model::{EnvoyResources, ProxyOptions};

/// Arguments of `render`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "Examples:
  # What the operator would serve for a contract
  kubectl contracts render -f payment-verify.yaml

  # With endpoints, and Envoy's own verdict on the result
  kubectl contracts render -f payment-verify.yaml --endpoints endpoints.yaml --validate

Endpoints file: {channels: {<channel>: [{address: 10.0.0.7, port: 8080, region: gz, ready: true}]}}.
Exit codes: 0 rendered (and Envoy accepts it, with --validate), 1 the contract is invalid or Envoy refuses
the configuration, 2 a file cannot be read or --validate finds no Envoy.")]
pub struct RenderArgs {
    /// The ChannelContract YAML file (`-` for standard input).
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
    /// The endpoints of each channel (YAML). Omitted: clusters without endpoints.
    #[arg(long, value_name = "FILE")]
    pub endpoints: Option<PathBuf>,
    /// Run `envoy --mode validate` on a bootstrap that embeds the resources.
    #[arg(long)]
    pub validate: bool,
    /// The Envoy binary for --validate. Default: `envoy` on PATH.
    #[arg(long, value_name = "PATH", env = "CSP_ENVOY")]
    pub envoy: Option<PathBuf>,
    /// Print nothing but the verdict (with --validate).
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// Why `render` failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The operator's render failed: unreadable file, invalid contract, …
    #[error(transparent)]
    Render(#[from] operator::render::RenderError),
    /// `--validate` without an Envoy.
    #[error(
        "--validate needs Envoy, and there is no `envoy` on PATH ({0}); install Envoy (https://www.envoyproxy.io/docs/envoy/latest/start/install) or give its path with --envoy"
    )]
    NoEnvoy(String),
    /// Envoy could not be run.
    #[error("cannot run {path}: {reason}")]
    EnvoyFailed {
        /// The binary.
        path: String,
        /// Why.
        reason: String,
    },
}

impl RenderError {
    /// 1 for a contract that is wrong, 2 for what kept the command from judging it.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Render(
                operator::render::RenderError::InvalidContract { .. } | operator::render::RenderError::Translate { .. },
            ) => 1,
            _ => 2,
        }
    }
}

/// Envoy's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The binary that judged.
    pub envoy: String,
    /// Its version line.
    pub version: String,
    /// Whether it accepts the configuration.
    pub accepted: bool,
    /// What it said, when it refused.
    pub output: String,
}

/// The resources of a contract file.
pub fn resources(args: &RenderArgs) -> Result<EnvoyResources, RenderError> {
    let contract_text = operator::render::read(&args.file)?;
    let endpoints_text = args.endpoints.as_deref().map(operator::render::read).transpose()?;
    let endpoints_path = args.endpoints.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    Ok(operator::render::render(
        &args.file.display().to_string(),
        &contract_text,
        &endpoints_path,
        endpoints_text.as_deref(),
        &ProxyOptions::default(),
    )?)
}

/// The YAML stream the resources print as: `# configVersion`, then `cds.yaml`, `lds.yaml`, `rds.yaml`.
pub fn text(resources: &EnvoyResources) -> String {
    let mut out = format!("# configVersion: {}\n", resources.config_version);
    for (name, text) in &resources.files {
        out.push_str(&format!("---\n# {name}\n{text}"));
    }
    out
}

/// The Envoy binary: `explicit`, else `envoy` on PATH.
pub fn find_envoy(explicit: Option<&Path>) -> Result<PathBuf, RenderError> {
    if let Some(path) = explicit {
        return Ok(path.to_owned());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("envoy"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| RenderError::NoEnvoy(std::env::var("PATH").unwrap_or_default()))
}

/// `envoy --mode validate` on a bootstrap that embeds the resources (routes inline).
pub fn validate(resources: &EnvoyResources, envoy: &Path) -> Result<Verdict, RenderError> {
    let failed = |reason: String| RenderError::EnvoyFailed { path: envoy.display().to_string(), reason };
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], 9901));
    let yaml = bootstrap::embedded(resources, admin, "kubectl-contracts-validate")
        .and_then(|b| bootstrap::to_yaml(&b))
        .map_err(operator::render::RenderError::from)?;
    let dir = tempfile::tempdir().map_err(|e| failed(e.to_string()))?;
    let config = dir.path().join("bootstrap.yaml");
    std::fs::write(&config, yaml).map_err(|e| failed(e.to_string()))?;
    let version = run(Command::new(envoy).arg("--version"), Duration::from_secs(30))
        .map(|(_, out)| {
            let line = out.lines().find(|l| !l.trim().is_empty()).unwrap_or_default();
            // "<path>  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL": the version is what is worth saying.
            line.split_once("version: ").map_or(line, |(_, v)| v).trim().to_owned()
        })
        .map_err(failed)?;
    let mut cmd = Command::new(envoy);
    cmd.args(["--mode", "validate", "--disable-hot-restart", "-l", "error", "-c"]).arg(&config);
    let (accepted, output) = run(&mut cmd, Duration::from_secs(120)).map_err(failed)?;
    Ok(Verdict { envoy: envoy.display().to_string(), version, accepted, output })
}

/// Runs a command with a deadline: (success, stdout and stderr).
fn run(cmd: &mut Command, timeout: Duration) -> Result<(bool, String), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let log = dir.path().join("out");
    let file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().map_err(|e| e.to_string())?)
        .stderr(file)
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("no answer after {}s", timeout.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok((status.success(), std::fs::read_to_string(&log).unwrap_or_default()))
}
