//! The `precall` binary: CLI, logging and signals around the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use precall::config::{LogFormat, Settings};
use precall::server::{self, Prompts};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "precall",
    version,
    about = "SIP/RTP voice daemon: answers at once, clones the caller's voice, bridges to an ElevenLabs agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file (also `PRECALL_CONFIG`).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Serve,
    /// Print the effective settings (secrets masked) and exit non-zero if invalid.
    CheckConfig,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("precall: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => match Prompts::load(&settings) {
            Ok(p) => {
                print!("{}", settings.to_masked_toml());
                println!(
                    "# greeting: {} frames ({:.1} s)",
                    p.greeting.frames(),
                    p.greeting.frames() as f64 * 0.02
                );
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("precall: invalid value for greeting: {e}");
                std::process::ExitCode::from(2)
            }
        },
        Command::Serve => match serve(settings) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("precall: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}

fn serve(settings: Settings) -> anyhow::Result<()> {
    init_logging(&settings);
    let prompts = Prompts::load(&settings).context("loading the greeting")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let handle = server::start(settings, prompts).await?;
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        handle.shutdown();
        handle.wait().await;
        anyhow::Ok(())
    })
}

fn init_logging(settings: &Settings) {
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(&settings.raw.log.level));
    // Colours only on a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match settings.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
