//! The `switchyard` command: serve, check, register, completions, version. Only wiring lives here:
//! parse the command line, set up logging, load the config, build the
//! runtime, and turn any start-up failure into one line and a non-zero exit.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use switchyard::app::App;
use switchyard::config::{Config, LogFormat};
use switchyard::registry::client::RegisterOptions;

/// mimalloc: per-thread free lists keep the request path's many small,
/// short-lived allocations off glibc's arena locks and out of brk/trim churn.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Where `serve` and `check` look for a config when neither `--config` nor
/// `$SWITCHYARD_CONFIG` names one.
const DEFAULT_CONFIG: &str = "config/switchyard.toml";
/// The environment variable that stands in for `--config`.
const CONFIG_ENV: &str = "SWITCHYARD_CONFIG";

#[derive(Debug, Parser)]
#[command(
    name = "switchyard",
    version,
    about = "HTTP reverse-proxy load balancer with a built-in service registry"
)]
struct Cli {
    /// Log format on stderr (also `[log] format` in the config).
    #[arg(long, global = true, value_enum)]
    log_format: Option<CliLogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CliLogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// Config file; defaults to ./config/switchyard.toml if it exists, else the embedded default.
        #[arg(long, env = CONFIG_ENV, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Validate a config file: exit 0 when valid (warnings on stderr), 1 with every error on stderr.
    Check {
        /// Config file; defaults to ./config/switchyard.toml.
        #[arg(long, env = CONFIG_ENV, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The config file, as a positional argument (`switchyard check FILE`); wins over --config.
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Register an instance with a running Switchyard; with --heartbeat keep
    /// its lease alive until SIGINT/SIGTERM, then deregister.
    Register(RegisterArgs),
    /// Print a shell completion script, e.g.
    /// `switchyard completions bash > /etc/bash_completion.d/switchyard`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, clap::Args)]
struct RegisterArgs {
    /// The admin API, like http://127.0.0.1:9091.
    #[arg(long)]
    admin: String,
    /// The service to join (1–128 characters of A-Z a-z 0-9 . _ -).
    #[arg(long)]
    service: String,
    /// The instance id, unique within the service (same characters).
    #[arg(long)]
    id: String,
    /// Where the instance listens: HOST:PORT.
    #[arg(long)]
    address: String,
    /// Lease length, like 30s ("0s" = no expiry); default: the registry's default_ttl.
    #[arg(long)]
    ttl: Option<String>,
    /// Balancing weight, 0 to 1000 (default 1; 0 = no new requests).
    #[arg(long)]
    weight: Option<u32>,
    /// Bearer token for the admin API; default: $SWITCHYARD_ADMIN_TOKEN.
    #[arg(long)]
    token: Option<String>,
    /// Keep renewing the lease until interrupted, then deregister.
    #[arg(long)]
    heartbeat: bool,
}

fn main() -> ExitCode {
    // Before anything allocates much: see src/huge_pages.rs.
    switchyard::huge_pages::decline();
    // An empty SWITCHYARD_CONFIG (`SWITCHYARD_CONFIG= switchyard serve`)
    // means "not set", as for the shells' own variables; clap would call it
    // a missing value. Nothing else runs yet, so changing the environment is safe.
    if std::env::var_os(CONFIG_ENV).is_some_and(|v| v.is_empty()) {
        std::env::remove_var(CONFIG_ENV);
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config, file } => check(file.or(config)),
        Command::Serve { config } => serve(config, cli.log_format),
        Command::Register(args) => register(args, cli.log_format),
        Command::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "switchyard", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
    }
}

fn check(path: Option<PathBuf>) -> ExitCode {
    let path = path.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    check_file(&path)
}

fn check_file(path: &Path) -> ExitCode {
    if !path.exists() {
        eprintln!(
            "switchyard check: no config file at {}; pass --config FILE or set {CONFIG_ENV}",
            path.display()
        );
        return ExitCode::FAILURE;
    }
    // Like `nginx -t`, also loads every certificate and key.
    match Config::check_file(path) {
        Ok(config) => {
            for warning in &config.warnings {
                eprintln!("warning: {warning}");
            }
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}

fn serve(path: Option<PathBuf>, log_format: Option<CliLogFormat>) -> ExitCode {
    let path = path.or_else(|| {
        let default = PathBuf::from(DEFAULT_CONFIG);
        default.exists().then_some(default)
    });
    let config = match &path {
        Some(p) => Config::load(p),
        None => Ok(Config::embedded_default()),
    };
    let config = match config {
        Ok(c) => c,
        Err(errors) => {
            init_logging(log_format.map_or(LogFormat::Text, to_format));
            eprintln!("switchyard: invalid config:\n{errors}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(log_format.map_or(config.log.format, to_format));
    match &path {
        Some(p) => tracing::info!(config = %p.display(), "config loaded"),
        None => tracing::info!("no config file; running on the embedded default"),
    }
    for warning in &config.warnings {
        tracing::warn!("config warning: {warning}");
    }
    // The main thread is the proxy's first worker (`switchyard::workers`).
    let runtime = match worker_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    let shutdown = switchyard::shutdown::terminate();
    let mut app = match App::bind(config).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("switchyard: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = app.start_workers(worker_runtime) {
        eprintln!("switchyard: {e}");
        return ExitCode::FAILURE;
    }
    app.reload_on_hangup();
    app.reopen_log_on_user1();
    match app.run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: {e}");
            ExitCode::FAILURE
        }
    }
}

fn register(args: RegisterArgs, log_format: Option<CliLogFormat>) -> ExitCode {
    init_logging(log_format.map_or(LogFormat::Text, to_format));
    let options = RegisterOptions {
        admin: args.admin,
        service: args.service,
        id: args.id,
        address: args.address,
        ttl: args.ttl,
        weight: args.weight,
        token: args
            .token
            .or_else(|| std::env::var("SWITCHYARD_ADMIN_TOKEN").ok()),
        heartbeat: args.heartbeat,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard register: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let registered = runtime.block_on(async {
        let shutdown = switchyard::shutdown::terminate();
        switchyard::registry::client::run(options, shutdown).await
    });
    match registered {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard register: {e}");
            ExitCode::FAILURE
        }
    }
}

fn to_format(f: CliLogFormat) -> LogFormat {
    match f {
        CliLogFormat::Text => LogFormat::Text,
        CliLogFormat::Json => LogFormat::Json,
    }
}

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}

/// A proxy worker's runtime (`switchyard::workers`): single-threaded, and
/// it hands freed memory back to the OS when the worker goes idle.
fn worker_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .on_thread_park(return_freed_memory)
        .enable_all()
        .build()?;
    runtime.spawn(return_freed_memory_when_idle());
    Ok(runtime)
}

/// How often a worker may hand freed memory back to the OS.
const RETURN_MEMORY_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// mimalloc returns freed pages to the OS only from its own calls on the
/// thread that owns them: once a burst of connections has closed, or idle
/// connections have been parked and their buffers freed, an idle worker
/// makes no call and RSS would stay at its peak for good. So a worker about
/// to wait for work lets its heap purge, at most once a second (one clock
/// read per park otherwise).
fn return_freed_memory() {
    use std::cell::Cell;
    use std::time::Instant;
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    let due = LAST
        .get()
        .is_none_or(|last| now.duration_since(last) >= RETURN_MEMORY_EVERY);
    if due {
        LAST.set(Some(now));
        // SAFETY: mi_collect only walks and trims this thread's own heap; it
        // has no preconditions and is safe to call at any time.
        unsafe { libmimalloc_sys::mi_collect(true) };
    }
}

/// The rate limit above would leave memory freed in the last second before
/// a worker goes quiet unreturned (nothing wakes it again): a tick every
/// second wakes a worker, which purges when it parks after it.
async fn return_freed_memory_when_idle() {
    let mut tick =
        tokio::time::interval(RETURN_MEMORY_EVERY + std::time::Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}
