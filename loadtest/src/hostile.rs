//! hostile: attacks, one shape at a time, against a server that serves a well-behaved victim
//! tenant meanwhile. For each shape: what the attackers were answered, the server's peak
//! resident memory (read from `/proc/<pid>/status`), and the victim's latency and errors,
//! against the victim alone in the same sitting. `--rss-max-mb` and `--p99-max-ratio` turn the
//! report into a check (exit 1), which the end-to-end tests use.
//!
//! Each shape is a loop per attacker connection: connect, misbehave, record the answer (its
//! status, or `closed` / `no answer` / `refused`), again until the victim's run is over.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::{Conn, Target};
use crate::run::{run_once, Outcome, RunArgs};
use crate::scenario::Scenario;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Attack {
    /// A request head sent one byte every 500 ms, never finished
    Slowloris,
    /// Connections opened and left idle (`--idle-connections` of them)
    Idle,
    /// 100 pipelined requests per write, answers read
    Pipeline,
    /// Request-smuggling framings: CL with TE, two CLs, unknown codings, obs-fold, ...
    Smuggle,
    /// A chunk extension that never ends, sent as fast as the server reads
    ChunkExtension,
    /// A chunked body of valid chunks that keeps arriving
    EndlessBody,
    /// A 4 MB batch announced without a key
    NoKeyBigBody,
    /// 5 MiB batches announced with a key and sent at 1 KB/s
    SlowBatches,
    /// Inbox pages of large events, requested and never read
    BigPages,
    /// Batches of values PostgreSQL's jsonb refuses (1e999999)
    RefusedValues,
    /// Well-formed keys the server never issued
    UnknownKeys,
    /// Self-serve signups as fast as possible (last: it spends this address's signups, which
    /// the victim's runs need)
    Signup,
}

#[derive(clap::Args)]
pub struct HostileArgs {
    /// Base URL of the server
    #[arg(long)]
    pub url: String,
    /// The server's process id, whose resident memory is watched
    #[arg(long)]
    pub server_pid: u32,
    /// Attacks to run, in order (default: all)
    #[arg(long, value_enum, value_delimiter = ',')]
    pub attacks: Vec<Attack>,
    /// Attacker connections per shape
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    /// Connections the `idle` shape opens
    #[arg(long, default_value_t = 5000)]
    pub idle_connections: usize,
    /// Seconds the victim runs under each attack (and alone, first)
    #[arg(long, default_value_t = 15)]
    pub duration: u64,
    /// The victim tenant's rate (requests per second, one event each)
    #[arg(long, default_value_t = 1000)]
    pub victim_rate: u64,
    /// Fail when the server's resident memory passes this many MB
    #[arg(long)]
    pub rss_max_mb: Option<u64>,
    /// Fail when the victim's p99 under an attack passes this multiple of its baseline
    #[arg(long)]
    pub p99_max_ratio: Option<f64>,
    /// Write the table (hostile.md) and the figures (hostile.json) here
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// What attackers were answered: status (or `closed`, `no answer`, ...) → count.
type Answers = Arc<Mutex<BTreeMap<String, u64>>>;

fn record(answers: &Answers, what: impl Into<String>) {
    *answers.lock().unwrap().entry(what.into()).or_default() += 1;
}

/// Resident memory of `pid` now, in bytes.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The highest resident memory seen until `until`, sampled every 20 ms.
fn watch_rss(pid: u32, until: Instant) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut peak = 0;
        while Instant::now() < until {
            peak = peak.max(rss_bytes(pid).unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak
    })
}

/// The status of the first response in `buf`, once its status line is there.
fn status_of(buf: &[u8]) -> Option<String> {
    let line = buf.split(|&b| b == b'\n').next()?;
    if !buf.contains(&b'\n') {
        return None;
    }
    let code = line.split(|&b| b == b' ').nth(1)?;
    Some(String::from_utf8_lossy(code).into_owned())
}

/// Reads until the first response's status line arrives (its status), the server closes
/// (`closed`) or `until` passes (`no answer`).
async fn first_status(stream: &mut tokio::net::tcp::OwnedReadHalf, until: Instant) -> String {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if let Some(status) = status_of(&buf) {
            return status;
        }
        let mut chunk = [0u8; 1024];
        let read = tokio::time::timeout_at(until.into(), stream.read(&mut chunk)).await;
        match read {
            Err(_) => return "no answer".into(),
            Ok(Ok(0)) => return "closed".into(),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(_)) => return "reset".into(),
        }
    }
}

/// Sends `head`, then `piece` every `every` (as fast as the server reads when zero) until the
/// server answers or `until`; returns the answer. With `hold`, the connection stays open
/// (and unread past the answer's status line) until `until`.
async fn send_and_drip(
    target: &Target,
    head: Vec<u8>,
    piece: Vec<u8>,
    every: Duration,
    until: Instant,
    hold: bool,
) -> String {
    let Ok(stream) = TcpStream::connect(target.addr).await else {
        return "refused".into();
    };
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        if write.write_all(&head).await.is_err() {
            return;
        }
        while !piece.is_empty() && Instant::now() < until && write.write_all(&piece).await.is_ok() {
            if !every.is_zero() {
                tokio::time::sleep(every).await;
            }
        }
        // Held open until the end: a slow client does not go away.
        tokio::time::sleep_until(until.into()).await;
        drop(write);
    });
    let answer = first_status(&mut read, until).await;
    if hold {
        tokio::time::sleep_until(until.into()).await;
    }
    writer.abort();
    answer
}

/// One whole request on a fresh connection; its answer.
async fn send_once(target: &Target, request: &[u8], until: Instant) -> String {
    send_and_drip(
        target,
        request.to_vec(),
        Vec::new(),
        Duration::ZERO,
        until,
        false,
    )
    .await
}

/// The smuggling framings: each must be refused and its connection closed.
fn smuggling_requests(host: &str, key: &str) -> Vec<Vec<u8>> {
    let head = |fields: &str, body: &str| {
        format!("POST /api/events HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\n{fields}\r\n{body}GET /health/live HTTP/1.1\r\nHost: {host}\r\n\r\n")
            .into_bytes()
    };
    vec![
        head(
            "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
            "0\r\n\r\n",
        ),
        head(
            "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
            "0\r\n\r\n",
        ),
        head("Content-Length: 4\r\nContent-Length: 5\r\n", "abcd"),
        head("Transfer-Encoding: chunked, identity\r\n", "0\r\n\r\n"),
        head("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"),
        head("Transfer-Encoding : chunked\r\n", "0\r\n\r\n"),
        head("Transfer-Encoding:\r\n chunked\r\n", "0\r\n\r\n"),
        head("Content-Length: +4\r\n", "abcd"),
        head("Transfer-Encoding: chunked\r\n", "fffffffffffffffffff\r\n"),
        head("Host: other\r\nContent-Length: 2\r\n", "{}"),
    ]
}

/// What every attacker of a shape shares.
struct Setup {
    target: Target,
    /// The attackers' own tenant, and its big events for `big-pages`.
    key: String,
    until: Instant,
    answers: Answers,
}

/// One attacker connection's loop.
async fn attack(shape: Attack, s: Arc<Setup>, n: usize) {
    let host = &s.target.host;
    let key = &s.key;
    let until = s.until;
    let mut round = 0usize;
    while Instant::now() < until {
        round += 1;
        let answer = match shape {
            Attack::Slowloris => {
                let head = format!("POST /api/events HTTP/1.1\r\nHost: {host}\r\nX-Pad: ");
                send_and_drip(
                    &s.target,
                    head.into_bytes(),
                    b"a".to_vec(),
                    Duration::from_millis(500),
                    until,
                    false,
                )
                .await
            }
            Attack::Idle => {
                let Ok(stream) = TcpStream::connect(s.target.addr).await else {
                    record(&s.answers, "refused");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let (mut read, _write) = stream.into_split();
                first_status(&mut read, until).await
            }
            Attack::Pipeline => {
                let Ok(mut c) = TcpStream::connect(s.target.addr).await else {
                    record(&s.answers, "refused");
                    continue;
                };
                let one = format!("GET /health/live HTTP/1.1\r\nHost: {host}\r\n\r\n");
                if c.write_all(one.repeat(100).as_bytes()).await.is_err() {
                    record(&s.answers, "reset");
                    continue;
                }
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 64 * 1024];
                let answered = loop {
                    let seen = buf.windows(9).filter(|w| w == b"HTTP/1.1 ").count();
                    if seen >= 100 && buf.ends_with(b"}") {
                        break "100 answered";
                    }
                    match tokio::time::timeout_at(until.into(), c.read(&mut chunk)).await {
                        Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                        _ => break "cut short",
                    }
                };
                answered.to_string()
            }
            Attack::Smuggle => {
                let requests = smuggling_requests(host, key);
                let request = &requests[(n + round) % requests.len()];
                send_once(&s.target, request, until).await
            }
            Attack::ChunkExtension => {
                let head = format!("POST /api/events HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\nTransfer-Encoding: chunked\r\n\r\n1b;x=");
                send_and_drip(
                    &s.target,
                    head.into_bytes(),
                    vec![b'a'; 64 * 1024],
                    Duration::ZERO,
                    until,
                    false,
                )
                .await
            }
            Attack::EndlessBody => {
                let head = format!("POST /api/events/batch HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\nTransfer-Encoding: chunked\r\n\r\n");
                let chunk = format!("4000\r\n{}\r\n", "x".repeat(0x4000)).into_bytes();
                send_and_drip(
                    &s.target,
                    head.into_bytes(),
                    chunk,
                    Duration::from_millis(50),
                    until,
                    false,
                )
                .await
            }
            Attack::NoKeyBigBody => {
                let head = format!("POST /api/events/batch HTTP/1.1\r\nHost: {host}\r\nContent-Length: 4000000\r\n\r\n");
                send_and_drip(
                    &s.target,
                    head.into_bytes(),
                    vec![b'x'; 1024],
                    Duration::from_millis(10),
                    until,
                    false,
                )
                .await
            }
            Attack::SlowBatches => {
                let head = format!("POST /api/events/batch HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\nContent-Length: 5242880\r\n\r\n{{");
                send_and_drip(
                    &s.target,
                    head.into_bytes(),
                    vec![b' '; 1024],
                    Duration::from_secs(1),
                    until,
                    true,
                )
                .await
            }
            Attack::BigPages => {
                // The answer's head is read; its body never is.
                let request = format!("GET /api/inbox?limit=1000&status=all HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\n\r\n");
                send_and_drip(
                    &s.target,
                    request.into_bytes(),
                    Vec::new(),
                    Duration::from_secs(3600),
                    until,
                    true,
                )
                .await
            }
            Attack::RefusedValues => {
                let events = vec![r#"{"type":"x","payload":{"n":1e999999}}"#; 1000].join(",");
                let body = format!(r#"{{"events":[{events}]}}"#);
                let request = format!("POST /api/events/batch HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                send_once(&s.target, request.as_bytes(), until).await
            }
            Attack::Signup => {
                let body = r#"{"organization_name":"flood"}"#;
                let request = format!("POST /api/keys/generate HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                send_once(&s.target, request.as_bytes(), until).await
            }
            Attack::UnknownKeys => {
                let stranger = triggers::auth::NewKey::generate().plaintext;
                let request = format!(
                    "GET /api/inbox HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {stranger}\r\n\r\n"
                );
                send_once(&s.target, request.as_bytes(), until).await
            }
        };
        record(&s.answers, answer);
    }
}

/// Posts `n` events of ~250 KB for the attackers' tenant, so its inbox pages are large.
async fn seed_big_events(target: &Target, key: &str, n: usize) -> anyhow::Result<()> {
    let mut conn = Conn::connect(target).await?;
    let body = format!(
        r#"{{"type":"big","payload":{{"blob":"{}"}}}}"#,
        "b".repeat(250_000)
    );
    for _ in 0..n {
        let r = conn
            .request("POST", "/api/events", Some(key), body.as_bytes())
            .await?;
        ensure!(r.status == 202, "seeding big events: HTTP {}", r.status);
    }
    Ok(())
}

/// A key of a new organization on the unlimited tier.
async fn new_key(target: &Target, name: &str) -> anyhow::Result<String> {
    let mut conn = Conn::connect(target).await?;
    let body = format!(r#"{{"organization_name":"{name}","tier":"unlimited"}}"#);
    let r = conn
        .request("POST", "/api/keys/generate", None, body.as_bytes())
        .await?;
    ensure!(
        r.status == 201,
        "creating an organization: HTTP {} {} (start the server with --keygen-tier-max unlimited)",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    let v: serde_json::Value = serde_json::from_slice(&r.body)?;
    Ok(v["api_key"].as_str().context("no api_key")?.to_string())
}

/// One row of the table.
struct Row {
    attack: String,
    answers: BTreeMap<String, u64>,
    peak_rss: u64,
    victim: Outcome,
}

fn victim_args(args: &HostileArgs) -> RunArgs {
    RunArgs {
        url: vec![args.url.clone()],
        label: Vec::new(),
        scenario: Scenario::Ingest,
        rate: args.victim_rate,
        duration: args.duration,
        connections: 16,
        orgs: 1,
        tier: "unlimited".into(),
        payload_bytes: 300,
        batch_size: 1,
        out: None,
        verify: false,
    }
}

/// Runs the victim alone, then under each attack; prints (and writes) the table; fails when a
/// bound given is passed or the victim saw an error.
pub async fn hostile(args: &HostileArgs) -> anyhow::Result<()> {
    let target = Target::parse(&args.url)?;
    let attacks = if args.attacks.is_empty() {
        <Attack as clap::ValueEnum>::value_variants().to_vec()
    } else {
        args.attacks.clone()
    };
    let key = new_key(&target, "attacker").await?;
    if attacks.contains(&Attack::BigPages) {
        seed_big_events(&target, &key, 40).await?;
    }
    let victim = victim_args(args);
    let mut rows = Vec::new();
    // Between shapes: the last one's connections close.
    let settle = Duration::from_secs(args.duration.min(2));

    eprintln!(
        "victim alone: {} req/s for {} s",
        args.victim_rate, args.duration
    );
    let rss = watch_rss(
        args.server_pid,
        Instant::now() + Duration::from_secs(args.duration + 1),
    );
    let baseline = run_once(&target, &victim, true).await?;
    rows.push(Row {
        attack: "none (baseline)".into(),
        answers: BTreeMap::new(),
        peak_rss: rss.await?,
        victim: baseline,
    });
    for shape in attacks {
        tokio::time::sleep(settle).await;
        let ramp = Duration::from_secs(1);
        let until = Instant::now() + ramp + Duration::from_secs(args.duration + 1);
        let setup = Arc::new(Setup {
            target: target.clone(),
            key: key.clone(),
            until,
            answers: Answers::default(),
        });
        let connections = if shape == Attack::Idle {
            args.idle_connections
        } else {
            args.connections
        };
        eprintln!("{shape:?}: {connections} attacker connections");
        let rss = watch_rss(args.server_pid, until);
        // The attackers run on a runtime of their own, so their tasks never delay the victim's
        // in one scheduler (they still share the machine's CPUs with it and the server).
        let attackers_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        for n in 0..connections {
            attackers_rt.spawn(attack(shape, setup.clone(), n));
        }
        tokio::time::sleep(ramp).await;
        let outcome = run_once(&target, &victim, true).await?;
        let peak_rss = rss.await?;
        // Attackers still waiting record `no answer` at `until`.
        tokio::time::sleep(Duration::from_millis(300)).await;
        attackers_rt.shutdown_background();
        let answers = setup.answers.lock().unwrap().clone();
        rows.push(Row {
            attack: format!("{shape:?}"),
            answers,
            peak_rss,
            victim: outcome,
        });
    }
    let table = render(&rows, args);
    println!("{table}");
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("hostile.md"), &table)?;
        std::fs::write(
            dir.join("hostile.json"),
            serde_json::to_vec_pretty(&figures(&rows))?,
        )?;
    }
    check(&rows, args)
}

fn p(o: &Outcome, q: f64) -> f64 {
    o.latency.value_at_quantile(q) as f64 / 1000.0
}

/// Victim requests that were not answered 2xx.
fn victim_errors(o: &Outcome) -> u64 {
    o.errors
        + o.statuses
            .iter()
            .filter(|(s, _)| !(200..300).contains(*s))
            .map(|(_, n)| n)
            .sum::<u64>()
}

fn render(rows: &[Row], args: &HostileArgs) -> String {
    let mut t = format!(
        "Victim: one tenant at {} req/s for {} s per row; attackers: {} connections per shape ({} for idle).\n\n\
         | attack | attackers were answered | server peak RSS MB | victim p50 ms | victim p99 ms | victim errors |\n|---|---|---|---|---|---|\n",
        args.victim_rate, args.duration, args.connections, args.idle_connections
    );
    for r in rows {
        let answers: Vec<String> = r
            .answers
            .iter()
            .map(|(k, n)| format!("{k} × {n}"))
            .collect();
        let _ = writeln!(
            t,
            "| {} | {} | {:.1} | {:.2} | {:.2} | {} |",
            r.attack,
            if answers.is_empty() {
                "-".into()
            } else {
                answers.join(", ")
            },
            r.peak_rss as f64 / 1e6,
            p(&r.victim, 0.5),
            p(&r.victim, 0.99),
            victim_errors(&r.victim),
        );
    }
    t
}

fn figures(rows: &[Row]) -> serde_json::Value {
    serde_json::Value::Array(
        rows.iter()
            .map(|r| {
                serde_json::json!({
                    "attack": r.attack,
                    "answers": r.answers,
                    "peak_rss_bytes": r.peak_rss,
                    "victim_p50_ms": p(&r.victim, 0.5),
                    "victim_p99_ms": p(&r.victim, 0.99),
                    "victim_requests": r.victim.requests(),
                    "victim_errors": victim_errors(&r.victim),
                })
            })
            .collect(),
    )
}

fn check(rows: &[Row], args: &HostileArgs) -> anyhow::Result<()> {
    let baseline_p99 = p(&rows[0].victim, 0.99);
    let mut failures = Vec::new();
    for r in rows {
        if victim_errors(&r.victim) > 0 {
            failures.push(format!(
                "{}: the victim saw {} errors",
                r.attack,
                victim_errors(&r.victim)
            ));
        }
        if let Some(max) = args.rss_max_mb {
            if r.peak_rss > max * 1_000_000 {
                failures.push(format!(
                    "{}: peak RSS {} MB > {max} MB",
                    r.attack,
                    r.peak_rss / 1_000_000
                ));
            }
        }
        if let Some(ratio) = args.p99_max_ratio {
            let p99 = p(&r.victim, 0.99);
            if p99 > baseline_p99 * ratio {
                failures.push(format!(
                    "{}: victim p99 {p99:.2} ms > {ratio} × baseline {baseline_p99:.2} ms",
                    r.attack
                ));
            }
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}
