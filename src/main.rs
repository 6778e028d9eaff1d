//! The `chartbridge` command: `serve` and `check-config`. The only place that uses anyhow.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use chartbridge::config::Config;

#[derive(Parser)]
#[command(
    version,
    about = "Serves Helm chart repositories as OCI registries and mirrors them"
)]
struct Cli {
    /// Log line format. The level comes from RUST_LOG (default `info`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (on the embedded default configuration when --config is not given).
    Serve {
        /// YAML configuration file (see config/chartbridge.example.yaml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen address, overriding the configuration's `listen`.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Validate a configuration file and exit (status 1 with the reason when it is invalid).
    CheckConfig { file: PathBuf },
}

fn load(path: &PathBuf) -> anyhow::Result<Config> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Config::from_yaml(&text, &path.display().to_string())?)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    match cli.command {
        Command::CheckConfig { file } => {
            let c = load(&file)?;
            println!("{}: ok ({} upstreams)", file.display(), c.upstreams.len());
            Ok(())
        }
        Command::Serve { config, listen } => {
            let mut c = match &config {
                Some(p) => load(p)?,
                None => Config::embedded_default(),
            };
            if let Some(l) = listen {
                c.listen = l;
            }
            let _ = rustls::crypto::ring::default_provider().install_default();
            // The app is built on a short-lived runtime; pingora then runs its own.
            let app = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(chartbridge::app::App::new(c))?;
            // SIGHUP reads the same file again, with the same overrides.
            let reload: Option<chartbridge::server::Reloader> = config.map(|p| {
                Box::new(move || {
                    let mut c = load(&p).map_err(|e| format!("{e:#}"))?;
                    if let Some(l) = listen {
                        c.listen = l;
                    }
                    Ok(c)
                }) as chartbridge::server::Reloader
            });
            chartbridge::server::run(app, reload)
        }
    }
}
