//! The `precall` binary: CLI, logging and signals around the library.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use precall::clone::CloneService;
use precall::config::{LogFormat, Settings};
use precall::elevenlabs::rest::{Client, ClientConfig};
use precall::elevenlabs::ws::AgentConfig;
use precall::server::{self, Prompts};
use precall::store::Store;
use precall::store::writer::{self, WriterConfig};
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
    /// Apply database migrations (idempotent) and exit.
    Migrate,
    /// Run the ElevenLabs simulator on its own (for tests and offline demos).
    Sim {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8089")]
        listen: std::net::SocketAddr,
        /// The `xi-api-key` the simulator accepts.
        #[arg(long, default_value = "sim-key")]
        api_key: String,
        /// Delay before answering each voice clone, in milliseconds.
        #[arg(long, default_value_t = 0)]
        clone_latency_ms: u64,
    },
    /// Manage which voice samples belong to which caller.
    Callers {
        #[command(subcommand)]
        action: CallersCommand,
    },
}

#[derive(Subcommand)]
enum CallersCommand {
    /// Map a caller id to one or more voice samples (WAV or MP3), copied into the data directory.
    Add {
        caller_id: String,
        #[arg(required = true)]
        samples: Vec<PathBuf>,
        /// Display name for the cloned voice.
        #[arg(long)]
        name: Option<String>,
        /// ElevenLabs labels as a JSON object, e.g. '{"accent":"british"}'.
        #[arg(long)]
        labels: Option<String>,
    },
    /// List the mappings.
    List,
    /// Remove a caller's mapping.
    Remove { caller_id: String },
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
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => check_config(&settings),
        Command::Serve => serve(settings),
        Command::Migrate => runtime().and_then(|rt| rt.block_on(migrate(&settings))),
        Command::Sim {
            listen,
            api_key,
            clone_latency_ms,
        } => runtime().and_then(|rt| rt.block_on(simulate(listen, &api_key, Duration::from_millis(clone_latency_ms)))),
        Command::Callers { action } => runtime().and_then(|rt| rt.block_on(callers(&settings, action))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("precall: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn check_config(settings: &Settings) -> anyhow::Result<()> {
    let prompts = Prompts::load(settings).context("invalid value for greeting")?;
    print!("{}", settings.to_masked_toml());
    println!(
        "# greeting: {} frames ({:.1} s)",
        prompts.greeting.frames(),
        prompts.greeting.frames() as f64 * 0.02
    );
    println!("# database: {}", precall::store::redact(&settings.database_url));
    Ok(())
}

fn prepare_data_dir(settings: &Settings) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.data_dir).with_context(|| format!("creating the data directory {}", settings.data_dir.display()))
}

async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    prepare_data_dir(settings)?;
    let url = &settings.database_url;
    let store = Store::connect(url, settings.raw.database.max_connections)
        .await
        .with_context(|| format!("connecting to {}", precall::store::redact(url)))?;
    Ok(store)
}

async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let store = open_store(settings).await?;
    store.migrate().await.context("applying migrations")?;
    println!("migrations applied to {}", precall::store::redact(&settings.database_url));
    Ok(())
}

async fn callers(settings: &Settings, action: CallersCommand) -> anyhow::Result<()> {
    let store = open_store(settings).await?;
    if settings.raw.database.auto_migrate {
        store.migrate().await.context("applying migrations")?;
    }
    match action {
        CallersCommand::Add {
            caller_id,
            samples,
            name,
            labels,
        } => {
            let m = precall::callers::add(&store, &settings.data_dir, &caller_id, &samples, name, labels.as_deref()).await?;
            println!(
                "{}: {} sample(s), sample hash {}",
                m.caller_id,
                m.samples.len(),
                &m.sample_hash[..16]
            );
        }
        CallersCommand::List => {
            for m in store.mappings().await? {
                let files: Vec<&str> = m.samples.iter().map(|s| s.path.as_str()).collect();
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    m.caller_id,
                    m.display_name.as_deref().unwrap_or("-"),
                    if m.enabled { "enabled" } else { "disabled" },
                    m.labels,
                    files.join(",")
                );
            }
        }
        CallersCommand::Remove { caller_id } => {
            if !precall::callers::remove(&store, &caller_id).await? {
                anyhow::bail!("no mapping for caller {caller_id}");
            }
            println!("removed {caller_id}");
        }
    }
    store.close().await;
    Ok(())
}

async fn simulate(listen: std::net::SocketAddr, api_key: &str, clone_latency: Duration) -> anyhow::Result<()> {
    init_logging_default();
    let sim = precall::sim::Simulator::start(listen, api_key)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    sim.set_knobs(precall::sim::Knobs {
        clone_latency,
        ..Default::default()
    });
    println!("ElevenLabs simulator on {} (xi-api-key: {api_key})", sim.base_url());
    wait_for_signal().await;
    Ok(())
}

/// The ElevenLabs client: the real API with `elevenlabs.api_key`, or the built-in
/// simulator on loopback when no key is set (the offline default).
async fn elevenlabs_client(settings: &Settings) -> anyhow::Result<(Client, Option<AgentConfig>)> {
    let e = &settings.raw.elevenlabs;
    let mut agent_id = e.agent_id.clone();
    let (base_url, api_key) = if e.api_key.is_empty() {
        let key = precall::store::records::new_id();
        let sim = precall::sim::Simulator::start("127.0.0.1:0".parse()?, &key)
            .await
            .context("starting the built-in ElevenLabs simulator")?;
        tracing::warn!(url = %sim.base_url(), "no ELEVENLABS_API_KEY: voice cloning, TTS and the agent are the built-in simulator's");
        if agent_id.is_empty() {
            agent_id = precall::sim::AGENT_ID.to_owned();
        }
        (sim.base_url(), key)
    } else {
        (e.base_url.clone(), e.api_key.clone())
    };
    let client = Client::new(ClientConfig {
        base_url: base_url.clone(),
        api_key,
        max_concurrent_requests: e.max_concurrent_requests,
        request_timeout: Duration::from_secs(e.request_timeout_seconds),
    })
    .context("building the ElevenLabs client")?;
    let agent = AgentConfig::from_section(e, &base_url, &agent_id, Some(client.clone()));
    match &agent {
        Some(a) => tracing::info!(agent = %a.agent_id, ws = %a.ws_base, private = a.private, "calls are bridged to the agent"),
        None => tracing::warn!("no elevenlabs.agent_id (ELEVENLABS_AGENT_ID): calls stay on the greeting and hold audio"),
    }
    Ok((client, agent))
}

fn serve(settings: Settings) -> anyhow::Result<()> {
    let log_reload = init_logging(&settings);
    let prompts = Prompts::load(&settings).context("loading the greeting")?;
    prepare_data_dir(&settings)?;
    let config_file = settings_file();
    runtime()?.block_on(async move {
        // A lazy pool: calls are answered even while the database is down; the
        // writer migrates, replays and retries in the background.
        let store = Store::connect_lazy(&settings.database_url, settings.raw.database.max_connections)
            .with_context(|| format!("database {}", precall::store::redact(&settings.database_url)))?;
        tracing::info!(database = %precall::store::redact(&settings.database_url), node = %settings.node_id, "call records");
        let records = writer::spawn(
            store.clone(),
            WriterConfig {
                queue: settings.raw.database.writer_queue,
                memory_limit: settings.raw.database.writer_memory_limit,
                batch: 500,
                spill_file: settings.data_dir.join("spool").join("records.jsonl"),
                node_id: settings.node_id.clone(),
                auto_migrate: settings.raw.database.auto_migrate,
                max_backoff: Duration::from_secs(5),
            },
        );
        let (client, agent) = elevenlabs_client(&settings).await?;
        let mut prompts = prompts;
        let greeting = &settings.raw.greeting;
        if !greeting.message.is_empty() {
            let voice = if greeting.voice_id.is_empty() {
                &settings.raw.elevenlabs.default_voice_id
            } else {
                &greeting.voice_id
            };
            match precall::elevenlabs::render_greeting(&client, &greeting.message, voice, &settings.data_dir, Duration::from_secs(10)).await
            {
                Ok(p) => {
                    tracing::info!(seconds = p.frames() as f64 * 0.02, voice = %voice, "greeting rendered with TTS");
                    prompts.greeting = p;
                }
                Err(e) => tracing::warn!(error = %e, "greeting TTS failed; playing the greeting file instead"),
            }
        }
        let clone = CloneService::new(store.clone(), client, records.clone(), settings.clone_config());
        let sweeper = (clone.clone(), Duration::from_secs(settings.raw.clone.sweep_interval_seconds));
        let greeting_wav = precall::http::ulaw_wav(&prompts.greeting);
        let apology = prompts.apology.clone();
        let http_listen = settings.http_listen;
        let agent_backend = if settings.raw.elevenlabs.api_key.is_empty() {
            "simulator"
        } else {
            "elevenlabs"
        };
        let http_settings = settings.clone();
        let handle = server::start(settings, prompts, records.clone(), Some(clone.clone()), agent.clone()).await?;
        let (http_stop, http_stop_rx) = tokio::sync::watch::channel(false);
        if let Some(listen) = http_listen {
            let ctx = precall::http::HttpContext {
                settings: http_settings,
                store: store.clone(),
                records: records.clone(),
                clone: Some(clone),
                agent,
                stats: handle.stats.clone(),
                agent_backend,
                greeting_wav,
                apology,
            };
            precall::http::start(ctx, listen, http_stop_rx)
                .await
                .with_context(|| format!("binding the HTTP listener on {listen} (http.listen)"))?;
        }
        // READY only once SIP listens and the database is migrated (the writer is
        // ready when its first flush completes).
        while !records.flush(Duration::from_secs(5)).await {
            tracing::warn!("waiting for the database before telling systemd we are ready");
        }
        // Background work that reads the tables starts only once the migrations
        // have run (a fresh PostgreSQL once saw the sweeper before its table).
        sweeper.0.spawn_sweeper(sweeper.1);
        precall::systemd::ready(&format!("listening on {}", handle.sip_addr));
        precall::systemd::spawn_status_and_watchdog(handle.stats.clone());
        loop {
            tokio::select! {
                signal = next_signal() => match signal {
                    Signal::Reload => reload(&config_file, &handle, &log_reload),
                    Signal::Stop => break,
                },
                why = handle.failed() => {
                    // No SIP means no calls: exit non-zero so systemd restarts us,
                    // after saving what the records queue holds.
                    precall::systemd::status(&format!("SIP task died: {why}"));
                    records.shutdown(Duration::from_secs(5)).await;
                    anyhow::bail!("the SIP task died ({why}); exiting so that the service manager restarts precall");
                }
            }
        }
        tracing::info!("shutdown requested");
        precall::systemd::stopping("draining calls");
        handle.shutdown();
        handle.wait().await;
        let _ = http_stop.send(true);
        records.shutdown(Duration::from_secs(10)).await;
        store.close().await;
        anyhow::Ok(())
    })
}

/// The config file `serve` was started with, so SIGHUP re-reads the same one.
fn settings_file() -> Option<PathBuf> {
    Cli::parse().config
}

/// SIGHUP: re-read the settings; swap the greeting/hold audio for new calls and
/// the log level. Live calls are untouched. A bad new setting keeps the old ones.
fn reload(file: &Option<PathBuf>, handle: &server::ServerHandle, log: &LogReload) {
    precall::systemd::reloading("reloading");
    match Settings::load(file.as_deref()) {
        Ok(settings) => {
            match Prompts::load(&settings) {
                Ok(p) => {
                    handle.reload_prompts(p);
                    tracing::info!("greeting and hold audio reloaded");
                }
                Err(e) => tracing::error!(error = %e, "reload: keeping the current greeting"),
            }
            match handle.reload_tls() {
                Ok(true) => tracing::info!("TLS certificate reloaded"),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "reload: keeping the current TLS certificate"),
            }
            match EnvFilter::try_new(log_directives(&settings.raw.log.level)) {
                Ok(f) => {
                    if log.reload(f).is_ok() {
                        tracing::info!(level = %settings.raw.log.level, "log level reloaded");
                    }
                }
                Err(e) => tracing::error!(error = %e, "reload: keeping the current log level"),
            }
        }
        Err(e) => tracing::error!(error = %e, "reload: invalid settings, nothing changed"),
    }
    precall::systemd::ready("reloaded");
}

/// `log.level`, with the DTLS library's per-packet warnings (unknown
/// ClientHello extensions, which every modern client sends) kept out of the
/// journal unless the operator names the crate.
fn log_directives(level: &str) -> String {
    if level.contains("webrtc_dtls") {
        level.to_owned()
    } else {
        format!("{level},webrtc_dtls=error")
    }
}

type LogReload = tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>;

fn init_logging_default() {
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn init_logging(settings: &Settings) -> LogReload {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(log_directives(&settings.raw.log.level)));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    // Colours only on a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (text, json) = match settings.log_format {
        LogFormat::Text => (
            Some(tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr)),
            None,
        ),
        LogFormat::Json => (None, Some(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr))),
    };
    tracing_subscriber::registry().with(filter).with(text).with(json).init();
    handle
}

enum Signal {
    Reload,
    Stop,
}

async fn next_signal() -> Signal {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return Signal::Stop;
        };
        tokio::select! {
            _ = term.recv() => Signal::Stop,
            _ = int.recv() => Signal::Stop,
            _ = hup.recv() => Signal::Reload,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        Signal::Stop
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
