//! The `lens` binary: parses the command line, sets up logging and calls one
//! library function per subcommand.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lens::config::PredictArgs;

/// Lens: an image-classification serving system.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Classify image files and folders offline.
    Predict(PredictArgs),
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Predict(args) => lens::predict::run(&args),
    }
}
