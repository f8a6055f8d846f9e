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
        /// Where the copy goes: a new or empty directory
        out: PathBuf,
        #[command(flatten)]
        db: Db,
    },
    /// Organizations: create one on any tier, list them, change a tier (talks to the database
    /// directly; no admin token)
    Org {
        #[command(subcommand)]
        command: OrgCommand,
    },
    /// API keys of an organization: list them (prefixes only), revoke them
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Report which host settings of tuning/ this machine lacks (exit 1 if any); changes
    /// nothing
    Check {
        /// A running server's PID: its open-file limit and allowed CPUs too
        #[arg(long)]
        pid: Option<u32>,
    },
    /// A running node's latency percentiles and counters, as a table
    Stats {
        /// The node's base URL
        #[arg(long, default_value = "http://127.0.0.1:8090")]
        url: String,
        /// The node's admin token, when it has one
        #[arg(long, env = "TRIGGERS_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
    },
}

#[derive(Subcommand)]
enum OrgCommand {
    /// Create an organization and its first key (printed once, as JSON)
    Create {
        /// Its name
        name: String,
        /// Its tier [default free]
        #[arg(long)]
        tier: Option<String>,
        #[command(flatten)]
        db: Db,
    },
    /// List every organization
    List {
        #[command(flatten)]
        db: Db,
    },
    /// Put an organization on another tier: its rate limit, and the retention of events that
    /// arrive from now on; running nodes apply it within a second
    SetTier {
        /// The organization's id
        org: String,
        tier: String,
        #[command(flatten)]
        db: Db,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// List an organization's keys: shown prefix, created, revoked
    List {
        /// The organization's id
        org: String,
        #[command(flatten)]
        db: Db,
    },
    /// Issue an organization one more key (its others stay as they are), shown once: the way
    /// back in for an organization that lost its keys
    Create {
        /// The organization's id
        org: String,
        #[command(flatten)]
        db: Db,
    },
    /// Revoke an organization's keys (every one, or those whose shown prefix starts with
    /// --prefix); running nodes refuse them within a second
    Revoke {
        /// The organization's id
        org: String,
        /// Only keys whose shown prefix (`trg_` and 8 digits) starts with this
        #[arg(long, default_value = "")]
        prefix: String,
        #[command(flatten)]
        db: Db,
    },
}

/// Which database an operator's command works on: found as `serve` finds it.
#[derive(clap::Args)]
struct Db {
    /// The server's config file
    #[arg(long, env = "TRIGGERS_CONFIG")]
    config: Option<PathBuf>,
    /// The server's data directory, for its embedded cluster (the running server's, or started
    /// for the command) [default ./data]
    #[arg(long, env = "TRIGGERS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The server's database URL instead; DATABASE_URL is read too
    #[arg(long, env = "TRIGGERS_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

impl Db {
    fn config(self) -> anyhow::Result<Config> {
        let settings = Settings {
            data_dir: self.data_dir,
            database_url: self.database_url,
            ..Settings::default()
        };
        Config::load(settings, self.config.as_deref())
    }
}

/// Prints what an operator's command answered, ending in a newline; its error goes to the log,
/// as the server's do.
fn print(result: anyhow::Result<String>) -> std::process::ExitCode {
    exit_code(result.map(|text| {
        print!("{text}");
        if !text.ends_with('\n') {
            println!();
        }
    }))
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
        Command::Backup { out, db } => {
            logging();
            let done = db.config().and_then(|c| match c.database {
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
        Command::Org { command } => {
            logging();
            print(match command {
                OrgCommand::Create { name, tier, db } => db
                    .config()
                    .and_then(|c| triggers::ops::org_create(&c, &name, tier.as_deref()))
                    .map(|answer| format!("{answer:#}")),
                OrgCommand::List { db } => db.config().and_then(|c| triggers::ops::org_list(&c)),
                OrgCommand::SetTier { org, tier, db } => db
                    .config()
                    .and_then(|c| triggers::ops::org_set_tier(&c, &org, &tier)),
            })
        }
        Command::Keys { command } => {
            logging();
            print(match command {
                KeysCommand::List { org, db } => {
                    db.config().and_then(|c| triggers::ops::keys_list(&c, &org))
                }
                KeysCommand::Create { org, db } => db
                    .config()
                    .and_then(|c| triggers::ops::keys_create(&c, &org))
                    .map(|answer| format!("{answer:#}")),
                KeysCommand::Revoke { org, prefix, db } => db
                    .config()
                    .and_then(|c| triggers::ops::keys_revoke(&c, &org, &prefix)),
            })
        }
        Command::Check { pid } => {
            logging();
            exit_code(triggers::ops::Host::this(pid).and_then(|host| {
                let (text, missing) = triggers::ops::check(&host);
                print!("{text}");
                match missing {
                    0 => Ok(()),
                    n => Err(anyhow::anyhow!(
                        "{n} host setting(s) missing: see tuning/README.md"
                    )),
                }
            }))
        }
        Command::Stats { url, admin_token } => {
            logging();
            print(triggers::ops::stats(&url, admin_token.as_deref()))
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
