//! cluster: the embedded PostgreSQL cluster, run by the server when no database URL is given.
//!
//! Finds the server binaries, runs `initdb` into `<data-dir>/postgres` on first start, starts the
//! postmaster on a unix socket inside the data directory (no TCP port, so nothing collides),
//! stops with the thread that started it (a server killed with `kill -9` takes its cluster
//! with it: the kernel sends the postmaster SIGINT, a fast shutdown that keeps every commit),
//! adopts a postmaster still running when a server starts, waits for the backends of a killed
//! postmaster before starting a new one, reaps and restarts a postmaster that died (`exited`,
//! `restart`: the server's supervisor decides when), and stops it on shutdown. Never turns
//! `fsync` or `synchronous_commit` off, and never runs two postmasters on one directory (the
//! server's data-directory lock plus PostgreSQL's own `postmaster.pid` see to that). `backup`
//! copies a cluster, running or not, into a data directory a server can start from.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, User};

pub mod writeback;

/// The superuser `initdb` creates and the database the server uses.
pub const DB_USER: &str = "triggers";
pub const DB_NAME: &str = "triggers";
/// Only names the socket file (`.s.PGSQL.5432`); no TCP port is opened.
const PORT: u16 = 5432;
/// Beside `postgres/` in a server data directory once `initdb` finished there.
const INITIALIZED_MARKER: &str = "postgres.initialized";
/// Crash recovery replays WAL before the cluster accepts connections; give it time.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the backends of a killed postmaster may finish their work before they are told to
/// quit (see `orphans`); then how long they get to quit.
const ORPHAN_WAIT: Duration = Duration::from_secs(10);
const ORPHAN_QUIT_WAIT: Duration = Duration::from_secs(5);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Unix socket paths are limited by `sockaddr_un.sun_path`.
const SOCKET_PATH_BYTES_MAX: usize = 107;
const INSTALL_HINT: &str = "install them (Debian/Ubuntu: `apt-get install postgresql`; \
    Fedora: `dnf install postgresql-server`) or point the server at a database with \
    --database-url / DATABASE_URL";

/// Settings the cluster always runs with. Durability stays on: a 2xx means committed.
const SETTINGS: &[(&str, &str)] = &[
    ("listen_addresses", ""),
    ("unix_socket_permissions", "0700"),
    ("fsync", "on"),
    ("synchronous_commit", "on"),
    ("full_page_writes", "on"),
    ("max_connections", "100"),
    // Ingest writes WAL steadily; rarer checkpoints mean fewer full-page images.
    ("max_wal_size", "2GB"),
    ("checkpoint_timeout", "15min"),
    // Zero-filling each new 16 MB WAL segment stalled COMMITs for ~15 ms every 16 MB of WAL
    // (commit p99.9 18.6 ms -> 6.4 ms without it). Durability is unchanged: every COMMIT still
    // fdatasyncs its WAL, which also makes the blocks it allocated durable.
    ("wal_init_zero", "off"),
    ("timezone", "UTC"),
    ("log_timezone", "UTC"),
];

/// The cluster's `shared_buffers`: a quarter of the host's memory, at least PostgreSQL's own
/// 128 MB and at most 1 GB. At 20,000 req/s for 60 s, 1 GB against 128 MB: p99 7.5-9.8 ms
/// against 14.4-17.9 on fresh tables, 10.0-12.4 against 27.1 on a table of 20 M events
/// (results/2026-11-30-lead-persister). The memory is touched only as buffers are first used,
/// which in a new cluster's first seconds showed as single stalls of up to ~100 ms.
fn shared_buffers(mem_total: Option<u64>) -> String {
    const MB: u64 = 1 << 20;
    let bytes = mem_total.map_or(128 * MB, |m| (m / 4).clamp(128 * MB, 1024 * MB));
    format!("{}MB", bytes / MB)
}

/// Where the PostgreSQL server binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub dir: PathBuf,
}

impl Binaries {
    /// Looks in `PATH`, then `pg_config --bindir`, then `/usr/lib/postgresql/*/bin` (newest);
    /// the directory is the one the found `initdb` really lives in.
    pub fn locate() -> anyhow::Result<Binaries> {
        let has_server = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
        let from_path = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default();
        let from_pg_config = Command::new("pg_config")
            .arg("--bindir")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
        let mut versioned: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                Some((v, e.path().join("bin")))
            })
            .collect();
        versioned.sort_by_key(|(v, _)| std::cmp::Reverse(*v));
        from_path
            .into_iter()
            .chain(from_pg_config)
            .chain(versioned.into_iter().map(|(_, d)| d))
            .find(|d| has_server(d))
            // A PATH entry may hold links to a few of the binaries (`initdb`, `postgres`); the
            // rest (`pg_basebackup`, ...) sit beside the real ones.
            .map(|d| {
                let real = fs::canonicalize(d.join("initdb")).ok();
                let dir = real.and_then(|r| r.parent().map(Path::to_path_buf));
                Binaries { dir: dir.unwrap_or(d) }
            })
            .with_context(|| {
                format!(
                    "PostgreSQL server binaries (initdb, postgres) were not found in PATH, \
                     `pg_config --bindir` or /usr/lib/postgresql/*/bin: {INSTALL_HINT}"
                )
            })
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// A running (not zombie) process named `postgres`. A killed postmaster whose parent is gone
/// can linger as a zombie, which `kill(pid, 0)` still reports as present.
fn is_live_postgres(pid: Pid) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) state ...`: comm may hold spaces or parentheses, so split at the last ')'.
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    let state = stat[close + 1..].trim_start().chars().next();
    &stat[open + 1..close] == "postgres" && !matches!(state, Some('Z' | 'X') | None)
}

/// The postmaster recorded in `cluster_dir/postmaster.pid`, if it is still alive.
fn live_postmaster(cluster_dir: &Path) -> Option<Pid> {
    let text = fs::read_to_string(cluster_dir.join("postmaster.pid")).ok()?;
    let pid = Pid::from_raw(text.lines().next()?.trim().parse().ok()?);
    is_live_postgres(pid).then_some(pid)
}

/// Processes of a postmaster that was killed, still at work in `cluster_dir`. A backend busy
/// with a query notices its postmaster's death only at its next wait, and until it exits it
/// holds the cluster's shared memory: a new postmaster refuses to start ("pre-existing shared
/// memory block is still in use"). PostgreSQL's processes run in PGDATA, which finds them.
fn orphans(cluster_dir: &Path) -> Vec<Pid> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok().map(Pid::from_raw))
        .filter(|&pid| {
            is_live_postgres(pid)
                && fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == cluster_dir)
        })
        .collect()
}

/// Whether a postmaster still runs the embedded cluster of server data directory `data_dir`.
pub fn is_running(data_dir: &Path) -> bool {
    live_postmaster(&data_dir.join("postgres")).is_some()
}

enum Running {
    /// Started by this process.
    Child(Child),
    /// Left running by a server that was killed; adopted, and stopped like our own.
    Adopted(Pid),
}

/// The first directory above `dir` (outermost first) that `user` may not enter: PostgreSQL,
/// run as `user`, could not reach its data directory through it. Supplementary groups are not
/// consulted: a directory open to the user's group only counts as open when it is the user's
/// primary group.
fn first_closed_to(dir: &Path, user: &User) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let mut above: Vec<&Path> = dir.ancestors().skip(1).collect();
    above.reverse();
    above.into_iter().find_map(|d| {
        let m = fs::metadata(d).ok()?;
        let bit = if m.uid() == user.uid.as_raw() {
            0o100
        } else if m.gid() == user.gid.as_raw() {
            0o010
        } else {
            0o001
        };
        (m.mode() & bit == 0).then(|| d.to_path_buf())
    })
}

pub struct Cluster {
    bins: Binaries,
    /// `<data-dir>/postgres`: PGDATA.
    dir: PathBuf,
    socket_dir: PathBuf,
    log_path: PathBuf,
    initialized_marker: PathBuf,
    /// PostgreSQL refuses to run as root: then the cluster runs as this account.
    owner: Option<User>,
    running: Option<Running>,
    /// The postmaster gets SIGINT from the kernel when the thread that started it ends.
    die_with_parent: bool,
    /// The OID of the server's database, once started (its files are under `base/<oid>`).
    database: Option<u32>,
}

impl Cluster {
    pub fn new(data_dir: &Path) -> anyhow::Result<Cluster> {
        let bins = Binaries::locate()?;
        fs::create_dir_all(data_dir)
            .with_context(|| format!("creating data directory {}", data_dir.display()))?;
        let data_dir = data_dir.canonicalize()?;
        let owner = if nix::unistd::geteuid().is_root() {
            let user = User::from_name("postgres")?.context(
                "running as root, but PostgreSQL refuses to run as root and there is no \
                 `postgres` account to run it as: create one (`useradd --system postgres`) \
                 or run the server as an ordinary user",
            )?;
            if let Some(closed) = first_closed_to(&data_dir, &user) {
                bail!(
                    "running as root, the embedded PostgreSQL runs as `{name}`, which cannot \
                     enter {closed} (mode {mode:o}) to reach the data directory {dir}. Either \
                     choose a data directory it can reach, for example `--data-dir \
                     /var/lib/triggers`, or let it pass through: `chmod o+x {closed}` (lets \
                     every account enter that directory, not list it)",
                    name = user.name,
                    closed = closed.display(),
                    mode = fs::metadata(&closed).map_or(0, |m| m.permissions().mode() & 0o7777),
                    dir = data_dir.display(),
                );
            }
            Some(user)
        } else {
            None
        };
        let socket_dir = data_dir.join("run");
        let socket_len = socket_dir.as_os_str().len() + format!("/.s.PGSQL.{PORT}").len();
        if socket_len > SOCKET_PATH_BYTES_MAX {
            bail!(
                "data directory {} is too deep for PostgreSQL's unix socket ({socket_len} > \
                 {SOCKET_PATH_BYTES_MAX} bytes): choose a shorter --data-dir",
                data_dir.display()
            );
        }
        Ok(Cluster {
            bins,
            dir: data_dir.join("postgres"),
            socket_dir,
            log_path: data_dir.join("postgres.log"),
            initialized_marker: data_dir.join(INITIALIZED_MARKER),
            owner,
            running: None,
            die_with_parent: false,
            database: None,
        })
    }

    /// What writes this cluster's data files back every `every`.
    pub fn writeback(&self, every: Duration) -> writeback::Writeback {
        writeback::Writeback::new(&self.dir, self.database, every)
    }

    /// Connection settings for the server's database on this cluster.
    pub fn client_config(&self) -> postgres::Config {
        let mut c = postgres::Config::new();
        c.host_path(&self.socket_dir)
            .port(PORT)
            .user(DB_USER)
            .dbname(DB_NAME);
        c
    }

    fn give_to_owner(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(u) = &self.owner {
            chown(path, Some(u.uid.as_raw()), Some(u.gid.as_raw()))
                .with_context(|| format!("handing {} to user {}", path.display(), u.name))?;
        }
        Ok(())
    }

    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        if let Some(u) = &self.owner {
            cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs PostgreSQL's `program` (as the cluster's owner when there is one); what it printed
    /// is in the error if it fails.
    fn run_tool(&self, program: &str, args: &[&dyn AsRef<OsStr>]) -> anyhow::Result<()> {
        self.run_tool_with(program, args, Stdio::piped())
    }

    /// `run_tool`, its standard error going to `stderr` (inherited: its progress shows as it
    /// runs, and its messages are not repeated in the error).
    fn run_tool_with(
        &self,
        program: &str,
        args: &[&dyn AsRef<OsStr>],
        stderr: Stdio,
    ) -> anyhow::Result<()> {
        let path = self.bins.bin(program);
        let out = self
            .command(&path)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .output()
            .with_context(|| format!("running {}", path.display()))?;
        if !out.status.success() {
            bail!(
                "{program} failed ({}){}:\n{}{}",
                out.status,
                self.owner.as_ref().map_or(String::new(), |u| format!(
                    " (as user {}: every directory above the data directory must be \
                     searchable by it)",
                    u.name
                )),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn initdb(&self) -> anyhow::Result<()> {
        if self.initialized_marker.exists() {
            return Ok(());
        }
        // A directory without the marker is an initdb that did not finish: start it over.
        if self.dir.exists() {
            fs::remove_dir_all(&self.dir)
                .with_context(|| format!("removing unfinished cluster {}", self.dir.display()))?;
        }
        fs::create_dir_all(&self.dir)?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))?;
        self.give_to_owner(&self.dir)?;
        tracing::info!(dir = %self.dir.display(), "initializing embedded PostgreSQL cluster");
        #[rustfmt::skip]
        self.run_tool("initdb", &[
            &"-D", &self.dir, &"-U", &DB_USER, &"-A", &"trust", &"-E", &"UTF8", &"--locale=C",
        ])?;
        fs::write(&self.initialized_marker, b"")?;
        Ok(())
    }

    /// Initializes the cluster if needed, then starts it or adopts the one left running. With
    /// `die_with_parent` the postmaster (and the one `restart` starts) is stopped by the kernel
    /// when the starting thread ends: give it a thread that lives as long as the process that
    /// uses the cluster, and the cluster never outlives that process, however it ends. An
    /// adopted postmaster keeps what its own starter gave it.
    pub fn start(&mut self, die_with_parent: bool) -> anyhow::Result<()> {
        self.die_with_parent = die_with_parent;
        self.initdb()?;
        fs::create_dir_all(&self.socket_dir)?;
        fs::set_permissions(&self.socket_dir, fs::Permissions::from_mode(0o700))?;
        self.give_to_owner(&self.socket_dir)?;
        if let Some(pid) = live_postmaster(&self.dir) {
            tracing::warn!(
                pid = pid.as_raw(),
                "adopting the PostgreSQL cluster left running by an earlier server"
            );
            self.running = Some(Running::Adopted(pid));
            match self.wait_ready() {
                Ok(()) => return self.ensure_database(),
                // It died while we waited (say, it was being killed too): start our own.
                Err(e) if self.running.is_none() => {
                    tracing::warn!(error = %e, "the adopted cluster went away; starting it anew");
                }
                Err(e) => return Err(e),
            }
        }
        self.spawn_postmaster(die_with_parent)?;
        self.wait_ready()?;
        self.ensure_database()
    }

    /// How the postmaster ended, if it has: reaps it when it was this process's child (a
    /// killed postmaster left unreaped is a zombie, which blocks a new start on some systems).
    pub fn exited(&mut self) -> Option<String> {
        match &mut self.running {
            None => Some("not running".into()),
            Some(Running::Child(child)) => match child.try_wait() {
                Ok(Some(status)) => Some(status.to_string()),
                Ok(None) => None,
                Err(e) => Some(format!("cannot be waited for: {e}")),
            },
            Some(Running::Adopted(pid)) => {
                (!is_live_postgres(*pid)).then(|| format!("adopted postmaster {pid} is gone"))
            }
        }
    }

    /// Starts a new postmaster after the last one died, once its orphaned backends are gone,
    /// and waits until it accepts connections (crash recovery runs first, bounded by the
    /// start-up timeout).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.exited().is_none() {
            bail!("the postmaster is still running");
        }
        self.running = None;
        self.spawn_postmaster(self.die_with_parent)?;
        self.wait_ready()
    }

    /// Waits for what a killed postmaster left at work (see `orphans`); past `ORPHAN_WAIT` tells
    /// it to quit, as the postmaster would have.
    fn wait_for_orphans(&self) {
        let left = orphans(&self.dir);
        if left.is_empty() {
            return;
        }
        tracing::warn!(
            processes = left.len(),
            "waiting for the backends of a killed PostgreSQL to finish before starting it anew"
        );
        let started = Instant::now();
        let mut told = false;
        while !orphans(&self.dir).is_empty() {
            let waited = started.elapsed();
            if !told && waited >= ORPHAN_WAIT {
                for pid in orphans(&self.dir) {
                    let _ = kill(pid, Signal::SIGQUIT);
                }
                told = true;
            }
            if waited >= ORPHAN_WAIT + ORPHAN_QUIT_WAIT {
                // Starting will fail and say why.
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn spawn_postmaster(&mut self, die_with_parent: bool) -> anyhow::Result<()> {
        self.wait_for_orphans();
        // Lock files naming a dead postmaster would stop the new one: PostgreSQL trusts
        // `kill(pid, 0)`, which a zombie or a recycled pid passes.
        let _ = fs::remove_file(self.dir.join("postmaster.pid"));
        let _ = fs::remove_file(self.socket_dir.join(format!(".s.PGSQL.{PORT}.lock")));
        let _ = fs::remove_file(self.socket_dir.join(format!(".s.PGSQL.{PORT}")));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        self.give_to_owner(&self.log_path)?;
        let mut cmd = if die_with_parent && Path::new("/usr/bin/setpriv").exists() {
            let mut c = self.command("/usr/bin/setpriv");
            c.args(["--pdeathsig", "INT", "--"])
                .arg(self.bins.bin("postgres"));
            c
        } else {
            self.command(self.bins.bin("postgres"))
        };
        cmd.arg("-D").arg(&self.dir).arg("-k").arg(&self.socket_dir);
        cmd.args(["-p", &PORT.to_string()]);
        for (k, v) in SETTINGS {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        cmd.arg("-c").arg(format!(
            "shared_buffers={}",
            shared_buffers(writeback::mem_total())
        ));
        // Its own process group: a terminal's Ctrl-C reaches the server, which stops the
        // cluster after the last commit, not the cluster first.
        cmd.process_group(0).stdout(log.try_clone()?).stderr(log);
        let child = cmd.spawn().context("starting postgres")?;
        tracing::info!(pid = child.id(), dir = %self.dir.display(), "embedded PostgreSQL starting");
        self.running = Some(Running::Child(child));
        Ok(())
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut admin = self.client_config();
        admin
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(1));
        loop {
            match &mut self.running {
                Some(Running::Child(child)) => {
                    if let Some(status) = child.try_wait()? {
                        self.running = None;
                        bail!(
                            "PostgreSQL exited during start-up ({status}); its log {}:\n{}",
                            self.log_path.display(),
                            self.log_tail()
                        );
                    }
                }
                Some(Running::Adopted(pid)) => {
                    let pid = *pid;
                    if !is_live_postgres(pid) {
                        self.running = None;
                        bail!("the adopted postmaster {pid} exited");
                    }
                }
                None => bail!("no postmaster to wait for"),
            }
            match admin.connect(postgres::NoTls) {
                Ok(_) => return Ok(()),
                Err(e) if started.elapsed() > START_TIMEOUT => {
                    bail!("PostgreSQL did not accept connections within {START_TIMEOUT:?}: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Creates the server's database if it is missing, and learns its OID.
    fn ensure_database(&mut self) -> anyhow::Result<()> {
        let mut admin = self.client_config();
        admin.dbname("postgres");
        let mut client = admin.connect(postgres::NoTls)?;
        let oid = "SELECT oid FROM pg_database WHERE datname = $1";
        let row = match client.query_opt(oid, &[&DB_NAME])? {
            Some(row) => row,
            None => {
                client.batch_execute(&format!("CREATE DATABASE {DB_NAME}"))?;
                client.query_one(oid, &[&DB_NAME])?
            }
        };
        self.database = Some(row.get(0));
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Fast shutdown: open sessions end, everything committed stays. Waits for the postmaster
    /// to be gone.
    pub fn stop(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        let pid = match &running {
            Running::Child(c) => Pid::from_raw(c.id() as i32),
            Running::Adopted(pid) => *pid,
        };
        let _ = kill(pid, Signal::SIGINT);
        let deadline = Instant::now() + STOP_TIMEOUT;
        let gone = |running: &mut Running| match running {
            Running::Child(c) => c.try_wait().map(|s| s.is_some()).unwrap_or(true),
            Running::Adopted(pid) => !is_live_postgres(*pid),
        };
        let mut running = running;
        while !gone(&mut running) {
            if Instant::now() > deadline {
                tracing::error!(
                    pid = pid.as_raw(),
                    "PostgreSQL did not stop in time; sending SIGQUIT"
                );
                let _ = kill(pid, Signal::SIGQUIT);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::info!(pid = pid.as_raw(), "embedded PostgreSQL stopped");
    }
}

/// Keeps a second server off the same data directory (and so off the same cluster): the lock
/// is held while the returned file is open.
pub fn lock_data_dir(dir: &Path) -> anyhow::Result<fs::File> {
    fs::create_dir_all(dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    let path = dir.join("triggers.lock");
    let file = fs::File::create(&path)?;
    file.try_lock().map_err(|_| {
        anyhow::anyhow!(
            "another triggers server is using data directory {} (lock {})",
            dir.display(),
            path.display()
        )
    })?;
    Ok(file)
}

/// Copies the embedded cluster of server data directory `data_dir` into `out`, which becomes a
/// server data directory of its own: `triggers serve --data-dir <out>` starts from the copy
/// (PostgreSQL replays the WAL copied with it up to the moment the backup ended), and so does
/// moving `out` where the lost data directory was.
///
/// A running cluster is copied online with `pg_basebackup` over its socket, the WAL written
/// meanwhile streamed alongside, so ingest goes on; a stopped one is started for the copy and
/// stopped again. The copy is checked with `pg_verifybackup` against the manifest PostgreSQL
/// wrote, and synced to disk, before this returns. `out` must not exist, or be empty.
pub fn backup(data_dir: &Path, out: &Path) -> anyhow::Result<()> {
    if !data_dir.join(INITIALIZED_MARKER).exists() {
        bail!(
            "{} holds no embedded PostgreSQL cluster to back up (a server run with \
             --database-url keeps its events in that database: back that up instead)",
            data_dir.display()
        );
    }
    if fs::read_dir(out).is_ok_and(|mut d| d.next().is_some()) {
        bail!(
            "{} is not empty: back up into a new directory",
            out.display()
        );
    }
    with_cluster(data_dir, |cluster| copy_into(cluster, out))
}

/// Runs `f` on the embedded cluster of server data directory `data_dir`: the running server's
/// (reached over its socket, `Cluster::client_config`), or, with no server running, the
/// cluster started for `f` and stopped after it (no server can start on the directory
/// meanwhile).
pub fn with_cluster<T>(
    data_dir: &Path,
    f: impl FnOnce(&Cluster) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    if !data_dir.join(INITIALIZED_MARKER).exists() {
        bail!(
            "{} holds no embedded PostgreSQL cluster: start the server on it once \
             (`triggers serve --data-dir {}`), or name the database the server uses \
             (--database-url)",
            data_dir.display(),
            data_dir.display()
        );
    }
    // Held, no server can start on the directory while this one runs the cluster; declared
    // first, it is let go after `cluster` (and a cluster started here) is dropped.
    let no_server = lock_data_dir(data_dir).ok();
    let mut cluster = Cluster::new(data_dir)?;
    if live_postmaster(&cluster.dir).is_none() {
        if no_server.is_none() {
            bail!(
                "the server using {} has no running cluster (it may be restarting it): try \
                 again in a moment",
                data_dir.display()
            );
        }
        tracing::info!("the cluster is not running: starting it for this command");
        // Stopped again when `cluster` is dropped (or this command is killed); a running one
        // was not adopted and stays.
        cluster.start(true)?;
    }
    f(&cluster)
}

/// `backup`'s copy, from a running `cluster`.
fn copy_into(cluster: &Cluster, out: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let out = out.canonicalize()?;
    fs::set_permissions(&out, fs::Permissions::from_mode(0o700))?;
    cluster.give_to_owner(&out)?;
    let copy = out.join("postgres");
    let port = PORT.to_string();
    // Its progress (kB copied of the total, every second) goes to the terminal.
    cluster.run_tool_with(
        "pg_basebackup",
        &[
            &"--progress",
            &"--pgdata",
            &copy,
            &"--host",
            &cluster.socket_dir,
            &"--port",
            &port,
            &"--username",
            &DB_USER,
            &"--no-password",
            &"--wal-method=stream",
            // A spread checkpoint could take most of `checkpoint_timeout` (15 min) to start.
            &"--checkpoint=fast",
            &"--label=triggers backup",
        ],
        Stdio::inherit(),
    )?;
    cluster.run_tool("pg_verifybackup", &[&copy])?;
    let marker = out.join(INITIALIZED_MARKER);
    fs::write(&marker, b"")?;
    cluster.give_to_owner(&marker)?;
    Ok(())
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outermost_directory_closed_to_the_cluster_owner_is_named() {
        let Ok(Some(nobody)) = User::from_name("nobody") else {
            return;
        };
        let top = tempfile::tempdir().unwrap();
        let (outer, inner) = (top.path().join("a"), top.path().join("a/b"));
        let data = inner.join("data");
        fs::create_dir_all(&data).unwrap();
        for d in [top.path(), &outer, &inner] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        }
        assert_eq!(first_closed_to(&data, &nobody), None);
        fs::set_permissions(&inner, fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(&outer, fs::Permissions::from_mode(0o750)).unwrap();
        assert_eq!(first_closed_to(&data, &nobody), Some(outer));
    }

    #[test]
    fn shared_buffers_are_a_quarter_of_memory_between_postgres_default_and_1_gb() {
        const GB: u64 = 1 << 30;
        assert_eq!(shared_buffers(None), "128MB");
        assert_eq!(shared_buffers(Some(GB / 4)), "128MB");
        assert_eq!(shared_buffers(Some(2 * GB)), "512MB");
        assert_eq!(shared_buffers(Some(24 * GB)), "1024MB");
        assert!(
            writeback::mem_total().is_some_and(|m| m > 0),
            "read from /proc/meminfo"
        );
    }
}
