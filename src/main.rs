//! The `triggers` binary: parse the command line, set up logging, run the server. Stands above
//! every module of the library.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use triggers::config::{Config, Database, Settings, DEFAULTS_TOML};

/// Log filter unless `TRIGGERS_LOG` says otherwise: the server at info, libraries' chatter off.
const LOG_DEFAULT: &str = "info,refinery_core=warn,postgres=warn,tokio_postgres=warn";

#[derive(Parser)]
#[command(
    name = "triggers",
    version,
    about = "Thread-per-core event-ingestion API: a 2xx means the event is committed in PostgreSQL",
    long_about = "Thread-per-core event-ingestion API on io_uring.\n\n\
        Without a database URL the server runs its own PostgreSQL cluster in --data-dir, using \
        the PostgreSQL server binaries installed on the machine. Every flag can also be set as a \
        TRIGGERS_* environment variable or as a key of the --config file; `triggers \
        default-config` prints every key with its default."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server
    Serve {
        /// TOML file with settings (keys as in `triggers default-config`)
        #[arg(long, env = "TRIGGERS_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: Box<Settings>,
    },
    /// Print the commented default configuration file
    DefaultConfig,
    /// Copy the embedded PostgreSQL cluster, running or not, into a new data directory;
    /// `triggers serve --data-dir OUT` starts from the copy
    Backup {
        /// The server's config file, to find its data directory as `serve` does
        #[arg(long, env = "TRIGGERS_CONFIG")]
        config: Option<PathBuf>,
        /// The server's data directory (the cluster is `<data-dir>/postgres`) [default ./data]
        #[arg(long, env = "TRIGGERS_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Where the copy goes: a new or empty directory
        out: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::DefaultConfig => {
            print!("{DEFAULTS_TOML}");
            std::process::ExitCode::SUCCESS
        }
        Command::Serve { config, settings } => {
            logging();
            exit_code(Config::load(*settings, config.as_deref()).and_then(triggers::server::serve))
        }
        Command::Backup {
            config,
            data_dir,
            out,
        } => {
            logging();
            // The data directory as `serve` would find it: flag, variable, file, default.
            let settings = Settings {
                data_dir,
                ..Settings::default()
            };
            let done = Config::load(settings, config.as_deref()).and_then(|c| match c.database {
                Database::Embedded { data_dir, .. } => triggers::cluster::backup(&data_dir, &out),
                Database::Url(_) => anyhow::bail!(
                    "this server stores into a database URL, not an embedded cluster: back that \
                     database up instead"
                ),
            });
            if done.is_ok() {
                tracing::info!(
                    "backed up into {}: `triggers serve --data-dir {}` starts from it",
                    out.display(),
                    out.display()
                );
            }
            exit_code(done)
        }
    }
}

/// Logs to stderr, filtered by `TRIGGERS_LOG`.
fn logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TRIGGERS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(LOG_DEFAULT)),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
