//! The `lens` binary: parses the command line, sets up logging and calls one
//! library function per subcommand.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lens::config::{BenchArgs, EvalArgs, FeedbackCommand, PredictArgs, QuantizeArgs, ServeArgs, WorkerArgs};
use lens::cpu_policy::CpuPolicy;

/// Lens: an image-classification serving system.
#[derive(Parser)]
#[command(version = lens::version::SHORT, long_version = lens::version::long(), about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Linux scheduling policy of every thread: `batch` (SCHED_BATCH) stops a
    /// thread that wakes up from preempting a running inference; `normal` is
    /// Linux's default (SCHED_OTHER). See docs/operations.md, "CPU scheduling".
    #[arg(long, global = true, value_enum, env = "LENS_CPU_POLICY", default_value_t = CpuPolicy::Batch)]
    cpu_policy: CpuPolicy,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service: API, upload page, queue, batcher and model sessions.
    Serve(Box<ServeArgs>),
    /// Run a model worker that takes jobs from Redis (see `serve --redis`).
    Worker(WorkerArgs),
    /// Classify image files and folders offline.
    Predict(PredictArgs),
    /// Measure the model's own throughput ceiling on this machine.
    Bench(BenchArgs),
    /// Measure accuracy on a labelled ImageFolder tree (one subfolder per class).
    Eval(EvalArgs),
    /// Write a model's int8 variant from your own photos, verified against fp32.
    Quantize(QuantizeArgs),
    /// Work with stored feedback.
    #[command(subcommand)]
    Feedback(FeedbackCommand),
}

fn main() -> anyhow::Result<ExitCode> {
    limit_malloc_arenas();
    let cli = Cli::parse();
    // Before any thread starts: threads inherit the policy of their maker.
    let policy = cli.cpu_policy.apply();
    let (json_logs, role) = match &cli.command {
        Command::Serve(a) => (a.log_json, "serve"),
        Command::Worker(a) => (a.log_json, "worker"),
        _ => (false, "cli"),
    };
    let tracing = init_logging(json_logs, role)?;
    match policy {
        Ok(()) => tracing::debug!(policy = cli.cpu_policy.as_str(), "CPU scheduling policy set"),
        Err(e) => tracing::warn!(policy = cli.cpu_policy.as_str(), "cannot set the CPU scheduling policy: {e}"),
    }
    let code = run(cli.command);
    if let Some(tracing) = tracing {
        tracing.shutdown(std::time::Duration::from_secs(2));
    }
    code
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(lens::serve::run(*args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(lens::worker::run(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Predict(args) => lens::cli::predict::run(&args),
        Command::Bench(args) => {
            lens::cli::bench::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval(args) => lens::cli::eval::run(&args),
        Command::Quantize(args) => lens::cli::quantize::run(&args),
        Command::Feedback(FeedbackCommand::Export(args)) => {
            lens::cli::export::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Caps glibc's malloc at one arena per core (at least two) unless
/// `MALLOC_ARENA_MAX` says otherwise. glibc's default is eight per core, and
/// each arena keeps the memory its threads freed: under 1000 clients sending
/// distinct photos, peak RSS was 318 MB with the default and 282 MB with two
/// arenas on this 2-core machine, at the same throughput
/// (`scripts/bench --scenarios distinct --users 1000`). Must run before any
/// thread starts.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let arenas = lens::config::available_cores().max(2);
        // SAFETY: mallopt only sets a malloc parameter; no other thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, i32::try_from(arenas).unwrap_or(i32::MAX));
        }
    }
}

/// Logs to stderr: text with colours only on a terminal, or JSON lines. A
/// panic becomes one log line (where and what; a backtrace only when
/// `RUST_BACKTRACE` asks for one), never a page of frames per request.
///
/// For `serve` and `worker`, traces go to an OTLP collector when the
/// standard `OTEL_*` variables say so ([`lens::telemetry`]); their layer
/// sees Lens's own spans at debug level and above, whatever `RUST_LOG`
/// shows, and without it those spans are never created.
fn init_logging(json: bool, role: &str) -> anyhow::Result<Option<lens::telemetry::Tracing>> {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{Layer as _, filter};
    let env_filter = filter::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let text = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    let logs = if json { text.json().boxed() } else { text.boxed() };
    let export = match role {
        "serve" | "worker" => lens::telemetry::Export::from_env(|k| std::env::var(k).ok())?,
        _ => lens::telemetry::Export::Off,
    };
    let registry = tracing_subscriber::registry().with(logs.with_filter(env_filter));
    let tracing = match lens::telemetry::Tracing::start(&export, role)? {
        Some((tracing, spans)) => {
            let ours = filter::Targets::new().with_target("lens", tracing::Level::DEBUG);
            registry.with(spans.with_filter(ours)).init();
            Some(tracing)
        }
        None => {
            registry.init();
            None
        }
    };
    std::panic::set_hook(Box::new(|info| {
        let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        let what = lens::http::panic_message(info.payload());
        let backtrace = std::backtrace::Backtrace::capture();
        match backtrace.status() {
            std::backtrace::BacktraceStatus::Captured => tracing::error!(at, what, %backtrace, "panic"),
            _ => tracing::error!(at, what, "panic"),
        }
    }));
    Ok(tracing)
}
