//! The webhook binary: parse arguments, set up logging, run until a signal.
#![forbid(unsafe_code)]

use clap::Parser;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = webhook::Args::parse();
    lifecycle::init_logging(args.log_format);
    let cancel = CancellationToken::new();
    lifecycle::cancel_on_signal(cancel.clone());
    webhook::run(args, cancel).await?;
    tracing::info!("stopped");
    Ok(())
}
