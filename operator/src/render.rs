//! `operator render`: the Envoy configuration of a contract file, with no cluster at all.
//!
//! ```text
//! operator render -f contract.yaml [--endpoints endpoints.yaml] [--out-dir DIR] [--listen ADDR]
//!                 [--config-dir DIR] [--bootstrap ADMIN_ADDR]
//! ```
//!
//! The contract file is a ChannelContract as users write it for `kubectl apply` (defaults applied; a
//! missing namespace is `default`). It is checked with the same rules as the API server's and the
//! webhook's; an invalid contract prints every broken rule and exits non-zero. The endpoints file is a
//! [`ChannelEndpoints`] (see there for the format); without it, every channel's cluster has no endpoints.
//!
//! Without `--out-dir`, the files (`cds.yaml`, `lds.yaml`, `rds.yaml`) are printed as one YAML stream;
//! with it, they are written there, each by an atomic rename, which is the change an Envoy following the
//! directory picks up. `--bootstrap` adds `envoy.yaml`, a bootstrap that follows `--config-dir`.

use std::fs;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crds::ChannelContract;

use crate::envoy::bootstrap::{self, BootstrapError};
use crate::model::{ChannelEndpoints, DEFAULT_CONFIG_DIR, EnvoyResources, ProxyOptions};
use crate::translate::{self, TranslateError};

/// The namespace of a contract file that names none, as with `kubectl apply`.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Arguments of `operator render`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct RenderArgs {
    /// The ChannelContract YAML file (`-` for standard input).
    #[arg(short = 'f', long = "file", env = "CSP_RENDER_FILE", value_name = "FILE")]
    pub file: PathBuf,

    /// The endpoints of each channel, YAML: `{channels: {primary: [{address: 127.0.0.2, port: 8080,
    /// region: gz, ready: true}], ...}}`. Omitted: clusters with no endpoints.
    #[arg(long, env = "CSP_RENDER_ENDPOINTS", value_name = "FILE")]
    pub endpoints: Option<PathBuf>,

    /// Write the files into this directory (created if needed) instead of printing them.
    #[arg(long, env = "CSP_RENDER_OUT_DIR", value_name = "DIR")]
    pub out_dir: Option<PathBuf>,

    /// The address the listener binds. Omitted: 0.0.0.0:<spec.port>.
    #[arg(long, env = "CSP_RENDER_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Where the proxy reads the files from (the listener takes its routes from <DIR>/rds.yaml).
    #[arg(long, env = "CSP_CONFIG_DIR", value_name = "DIR", default_value = DEFAULT_CONFIG_DIR)]
    pub config_dir: String,

    /// Also produce envoy.yaml, a bootstrap that follows the files in --config-dir, with its admin
    /// interface on this address.
    #[arg(long, env = "CSP_RENDER_BOOTSTRAP", value_name = "ADMIN_ADDR")]
    pub bootstrap: Option<SocketAddr>,
}

/// Why `render` failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// The contract file does not hold a ChannelContract.
    #[error("{path} is not a ChannelContract: {reason}")]
    NotAContract {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The endpoints file is malformed.
    #[error(
        "{path} is not an endpoints file ({{channels: {{<channel>: [{{address, port, region, ready}}]}}}}): {reason}"
    )]
    Endpoints {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The contract breaks rules of the API.
    #[error("{path}: ChannelContract {contract} is invalid:{}", list(.errors))]
    InvalidContract {
        /// The file.
        path: String,
        /// `<namespace>/<name>`.
        contract: String,
        /// Every broken rule.
        errors: crds::validate::InvalidSpec,
    },
    /// The contract and endpoints could not be translated.
    #[error("{path}: {source}")]
    Translate {
        /// The contract file.
        path: String,
        /// Why.
        #[source]
        source: TranslateError,
    },
    /// The bootstrap could not be made.
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The failure.
        #[source]
        source: io::Error,
    },
}

fn list(errors: &crds::validate::InvalidSpec) -> String {
    errors.0.iter().map(|e| format!("\n  - {e}")).collect()
}

/// Runs `operator render`, writing what it prints to `out`.
pub fn run(args: &RenderArgs, out: &mut impl Write) -> Result<(), RenderError> {
    let contract_path = args.file.display().to_string();
    let contract_text = read(&args.file)?;
    let endpoints_text = args.endpoints.as_deref().map(read).transpose()?;
    let options = ProxyOptions { listener: args.listen, config_dir: args.config_dir.clone(), local_region: None };
    let endpoints_path = args.endpoints.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    let resources = render(&contract_path, &contract_text, &endpoints_path, endpoints_text.as_deref(), &options)?;

    let mut files = resources.files.clone();
    if let Some(admin) = args.bootstrap {
        let yaml = bootstrap::to_yaml(&bootstrap::filesystem(&args.config_dir, admin, "csp-render"))?;
        files.insert("envoy.yaml".to_owned(), yaml);
    }
    let write_err = |source| RenderError::Write { path: "standard output".to_owned(), source };
    match &args.out_dir {
        None => {
            writeln!(out, "# configVersion: {}", resources.config_version).map_err(write_err)?;
            for (name, text) in &files {
                write!(out, "---\n# {name}\n{text}").map_err(write_err)?;
            }
        }
        Some(dir) => {
            fs::create_dir_all(dir).map_err(|source| RenderError::Write { path: dir.display().to_string(), source })?;
            for (name, text) in &files {
                write_atomically(&dir.join(name), text)?;
                writeln!(out, "wrote {}", dir.join(name).display()).map_err(write_err)?;
            }
            writeln!(out, "configVersion: {}", resources.config_version).map_err(write_err)?;
        }
    }
    Ok(())
}

/// The resources for a contract file's text and an endpoints file's text (the paths only name them in
/// errors).
pub fn render(
    contract_path: &str,
    contract_text: &str,
    endpoints_path: &str,
    endpoints_text: Option<&str>,
    options: &ProxyOptions,
) -> Result<EnvoyResources, RenderError> {
    let contract = parse_contract(contract_path, contract_text)?;
    let endpoints = match endpoints_text {
        Some(text) => yaml_serde::from_str::<ChannelEndpoints>(text)
            .map_err(|e| RenderError::Endpoints { path: endpoints_path.to_owned(), reason: e.to_string() })?,
        None => ChannelEndpoints::default(),
    };
    translate::desired(&contract, &endpoints, options).map_err(|source| match source {
        TranslateError::InvalidSpec { contract, source } => {
            RenderError::InvalidContract { path: contract_path.to_owned(), contract, errors: source }
        }
        source => RenderError::Translate { path: contract_path.to_owned(), source },
    })
}

/// A ChannelContract from YAML as users write it: defaults applied, namespace `default` when none.
pub fn parse_contract(path: &str, text: &str) -> Result<ChannelContract, RenderError> {
    let not_a_contract = |reason: String| RenderError::NotAContract { path: path.to_owned(), reason };
    let value: serde_json::Value = yaml_serde::from_str(text).map_err(|e| not_a_contract(e.to_string()))?;
    let field = |name: &str| value.get(name).and_then(serde_json::Value::as_str).unwrap_or("").to_owned();
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    let expected = format!("{}/{}", crds::GROUP, crds::VERSION);
    if kind != "ChannelContract" || api_version != expected {
        return Err(not_a_contract(format!(
            "it has apiVersion {api_version:?} and kind {kind:?}; expected apiVersion {expected:?} and kind \"ChannelContract\""
        )));
    }
    let mut contract: ChannelContract = serde_json::from_value(value).map_err(|e| not_a_contract(e.to_string()))?;
    if contract.metadata.name.as_deref().is_none_or(str::is_empty) {
        return Err(not_a_contract("it has no metadata.name".to_owned()));
    }
    if contract.metadata.namespace.as_deref().is_none_or(str::is_empty) {
        contract.metadata.namespace = Some(DEFAULT_NAMESPACE.to_owned());
    }
    Ok(contract)
}

/// A file's text (`-`: standard input), as `render` reads its contract and endpoints.
pub fn read(path: &Path) -> Result<String, RenderError> {
    let read_err = |source| RenderError::Read { path: path.display().to_string(), source };
    if path == Path::new("-") {
        let mut text = String::new();
        io::Read::read_to_string(&mut io::stdin(), &mut text).map_err(read_err)?;
        return Ok(text);
    }
    fs::read_to_string(path).map_err(read_err)
}

/// Writes a file through a temporary file and a rename, so that a reader never sees half of it and an
/// Envoy watching the directory sees a move.
fn write_atomically(path: &Path, text: &str) -> Result<(), RenderError> {
    let write_err = |source| RenderError::Write { path: path.display().to_string(), source };
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    fs::write(&tmp, text).map_err(write_err)?;
    fs::rename(&tmp, path).map_err(write_err)
}
