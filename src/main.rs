//! The `chartbridge` command: `serve`, `check-config`, and the air-gap commands `warm`,
//! `export` and `import`. The only place that uses anyhow.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use chartbridge::airgap::bundle::{export, import, ExportOptions};
use chartbridge::airgap::list::WarmList;
use chartbridge::airgap::warm::human_bytes;
use chartbridge::app::App;
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
    /// Fetch everything a warm list names into the cache (status 1 when anything failed).
    Warm {
        #[arg(long)]
        config: PathBuf,
        /// The warm list (see config/warm.example.yaml).
        list: PathBuf,
    },
    /// Write the cache out as an OCI image layout: a .tar file, or a directory.
    Export {
        #[arg(long)]
        config: PathBuf,
        /// The bundle to write (`.tar` for a tar, anything else for a directory).
        #[arg(long)]
        out: PathBuf,
        /// An earlier bundle: leave out what it holds (the new one is imported on top of it).
        #[arg(long)]
        since: Option<PathBuf>,
        /// Only this upstream (repeatable).
        #[arg(long = "upstream")]
        upstreams: Vec<String>,
        /// Only this chart, `chart` or `upstream/chart` (repeatable).
        #[arg(long = "chart")]
        charts: Vec<String>,
        /// Only this image repository, `repo` or `upstream/repo` (repeatable).
        #[arg(long = "image")]
        images: Vec<String>,
    },
    /// Push an upstream's charts (or images) into a registry: blobs, manifests by digest, then
    /// tags; what the registry has is skipped (status 1 when anything failed).
    Sync {
        #[arg(long)]
        config: PathBuf,
        /// The upstream to read (a name from the configuration).
        #[arg(long)]
        from: String,
        /// The registry and repository prefix: oci://host[:port]/prefix.
        #[arg(long)]
        to: String,
        /// Only this chart (helm upstream) or repository (OCI upstream; repeatable).
        #[arg(long = "chart")]
        charts: Vec<String>,
        /// Only versions matching this: an exact version, a range such as '>=0.13 <1', latest.
        #[arg(long)]
        versions: Option<String>,
        /// Also push the synthesised `latest` and floating tags that point at pushed versions.
        #[arg(long)]
        floating: bool,
        /// Only list what would be pushed.
        #[arg(long)]
        dry_run: bool,
        /// Speak plain HTTP to the registry (as helm spells it).
        #[arg(long)]
        plain_http: bool,
        /// PEM file of the CA(s) that signed the registry's certificate.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Registry user name, inline (or --username-env / --username-file).
        #[arg(long)]
        username: Option<String>,
        #[arg(long)]
        username_env: Option<String>,
        #[arg(long)]
        username_file: Option<String>,
        /// The registry password or token, from an environment variable or a file.
        #[arg(long)]
        password_env: Option<String>,
        #[arg(long)]
        password_file: Option<String>,
        /// Versions pushed at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
    },
    /// Verify a bundle whole, then load it into the cache (run it while `serve` is stopped).
    Import {
        #[arg(long)]
        config: PathBuf,
        bundle: PathBuf,
    },
}

/// A runtime for the commands that are not the server.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
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
    // Colour only on a terminal: a log file or collector gets plain lines, and the access log
    // does not pay for escape codes on every request.
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(terminal);
    match cli.log_format {
        LogFormat::Text => {
            logs.init();
            if !terminal {
                chartbridge::access_log::write_by_hand();
            }
        }
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Warm { config, list } => {
            let c = load(&config)?;
            let text = std::fs::read_to_string(&list)
                .with_context(|| format!("cannot read {}", list.display()))?;
            let list = WarmList::from_yaml(&text, &list.display().to_string())
                .map_err(anyhow::Error::msg)?;
            let summary = runtime()?.block_on(async {
                let app = App::new(c).await?;
                let summary = chartbridge::airgap::warm::warm(&app, &list).await;
                app.cache().flush().await;
                anyhow::Ok(summary)
            })?;
            print!("{summary}");
            if !summary.failed.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Export {
            config,
            out,
            since,
            upstreams,
            charts,
            images,
        } => {
            let c = load(&config)?;
            let opts = ExportOptions {
                out: out.clone(),
                since,
                upstreams,
                charts,
                images,
            };
            let started = std::time::Instant::now();
            let r = runtime()?.block_on(async {
                let app = App::new(c).await?;
                anyhow::Ok(export(&app, &opts).await?)
            })?;
            println!(
                "export: {} manifests, {} blobs ({}) written to {}, {} left out (in the base); bundle {} in {:.1} s",
                r.manifests,
                r.blobs,
                human_bytes(r.bytes),
                out.display(),
                r.skipped,
                r.id,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Import { config, bundle } => {
            let c = load(&config)?;
            let started = std::time::Instant::now();
            let r = runtime()?.block_on(async {
                let app = App::new(c).await?;
                let report = import(&app, &bundle).await;
                app.cache().flush().await;
                anyhow::Ok(report?)
            })?;
            println!(
                "import: bundle {} verified and loaded: {} manifests, {} new blobs ({}), {} already cached, in {:.1} s",
                r.id,
                r.manifests,
                r.blobs,
                human_bytes(r.bytes),
                r.present,
                started.elapsed().as_secs_f64()
            );
            for s in &r.skipped {
                println!("  skipped (no such upstream here): {s}");
            }
            Ok(())
        }
        Command::Sync {
            config,
            from,
            to,
            charts,
            versions,
            floating,
            dry_run,
            plain_http,
            ca_file,
            username,
            username_env,
            username_file,
            password_env,
            password_file,
            concurrency,
        } => {
            let c = load(&config)?;
            let given = username.is_some()
                || username_env.is_some()
                || username_file.is_some()
                || password_env.is_some()
                || password_file.is_some();
            let credentials = given
                .then(|| {
                    chartbridge::config::resolve_credentials(chartbridge::config::RawCredentials {
                        username,
                        username_env,
                        username_file,
                        password_env,
                        password_file,
                        password: None,
                        allow_inline_password: false,
                    })
                })
                .transpose()
                .map_err(|e| anyhow::anyhow!("credentials: {e}"))?;
            let target = chartbridge::publish::target::Target::new(
                &to,
                plain_http,
                ca_file.as_deref(),
                credentials,
            )?;
            let opts = chartbridge::publish::SyncOptions {
                from,
                charts,
                versions,
                floating,
                dry_run,
                concurrency,
            };
            let started = std::time::Instant::now();
            let summary = runtime()?.block_on(async {
                let app = App::new(c).await?;
                let s = chartbridge::publish::sync(&app, &target, &opts).await;
                app.cache().flush().await;
                anyhow::Ok(s?)
            })?;
            print!("{summary}");
            println!("sync: done in {:.1} s", started.elapsed().as_secs_f64());
            if !summary.failed.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
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
                c.listen = Some(l);
            }
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
                        c.listen = Some(l);
                    }
                    Ok(c)
                }) as chartbridge::server::Reloader
            });
            // A `warm:` list in the configuration is fetched in the background at start and
            // after every accepted reload.
            let after: chartbridge::server::AfterLoad = Box::new(|app| {
                if let Some(list) = app.warm_list() {
                    chartbridge::airgap::warm::in_background(app.clone(), list);
                }
            });
            chartbridge::server::run(app, reload, Some(after))
        }
    }
}
