//! loadtest::hostile::attack: the attack shapes, each a loop per attacker connection:
//! connect, misbehave, record the answer (its status, or `closed` / `no answer` / `refused` /
//! `reset`), again until the row's end. The shapes on the server's shared work (`QueryHog`,
//! `PoisonReceiver`, `ReplayStorm`) send well-formed requests on keep-alive connections, each
//! from an organization of its own readied here: seeded, or with a webhook pointed at an
//! endpoint of the attackers' (`receiver`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::receiver::{self, Answering, Endpoint};
use crate::client::{Conn, Target};

/// Events the query-hog tenant is seeded with, and each one's payload (random hex).
const HOG_EVENTS: usize = 100;
const HOG_EVENT_BYTES: usize = 200_000;
/// Every this-many'th query-hog connection asks for whole pages instead of the deepest row.
const HOG_WHOLE_PAGES_EVERY: usize = 5;
/// Events the replay-storm tenant posts before its row: what each replay queues again.
const STORM_EVENTS: usize = 50;
/// How far back each replay reaches.
const STORM_REPLAY_SINCE: Duration = Duration::from_secs(3600);
/// Shortest time between two posts of one poison-receiver connection (50 per second).
const POISON_EVERY: Duration = Duration::from_millis(20);
/// How long a keep-alive attacker that could not connect waits before trying again.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

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
    /// One deep inbox row over and over (`status=all&offset=99&limit=1`; every 5th connection
    /// whole pages, `limit=1000`), of a tenant seeded with 100 incompressible ~200 KB events:
    /// each request costs the query threads a scan the answer does not show
    QueryHog,
    /// Events posted (at most 50/s per connection) for a webhook whose endpoint answers 200 and
    /// 500 in turn, each with a NUL byte in its body: the answers the delivery threads must
    /// record
    PoisonReceiver,
    /// Replays of the last hour and redeliveries of single events, in turn, by a free-tier
    /// tenant whose webhook endpoint answers 500 to its ~50 events: every call queues
    /// deliveries that fail and are retried, until its tier's metering answers 429
    ReplayStorm,
    /// Self-serve signups as fast as possible (last: it spends this address's signups, which
    /// the victim's runs need)
    Signup,
}

/// What attackers were answered: status (or `closed`, `no answer`, ...) → count.
pub type Answers = Arc<Mutex<BTreeMap<String, u64>>>;

fn record(answers: &Answers, what: impl Into<String>) {
    *answers.lock().unwrap().entry(what.into()).or_default() += 1;
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
pub struct Setup {
    pub target: Target,
    /// The attackers' own tenant, and its big events for `big-pages`; the shape's own for the
    /// shapes that have one (`Attack::own_org`).
    pub key: String,
    /// Events of that tenant (`replay-storm` redelivers them).
    pub ids: Vec<String>,
    pub until: Instant,
    pub answers: Answers,
}

impl Attack {
    /// Whether the shape's attackers use an organization of their own, readied for them
    /// (`seed` before the rows, `arm` before the shape's row).
    pub fn own_org(self) -> bool {
        matches!(
            self,
            Attack::QueryHog | Attack::PoisonReceiver | Attack::ReplayStorm
        )
    }

    /// The tier of the shape's own organization: the free tier where the server meters what
    /// the shape does (a replay storm is refused past its tier's rate), unlimited elsewhere, so
    /// that the server's isolation, not a rate limit, is what the row measures.
    pub fn tier(self) -> &'static str {
        match self {
            Attack::ReplayStorm => "free",
            _ => "unlimited",
        }
    }

    /// Whether the shape attacks webhook delivery: the victim's is measured under it.
    pub fn delivers(self) -> bool {
        matches!(self, Attack::PoisonReceiver | Attack::ReplayStorm)
    }
}

/// `len` hex digits from xorshift64 seeded with `seed`: nothing repeats for PostgreSQL's
/// compression to take out, as it would from a run of one character, so a row holds (and a
/// read of it costs) what its size says.
fn random_hex(len: usize, seed: u64) -> String {
    // splitmix64 of the seed first: xorshift from a small seed starts with runs of zeros.
    let mut x = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x = (x ^ (x >> 31)) | 1;
    let mut hex = String::with_capacity(len + 16);
    while hex.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let _ = write!(hex, "{x:016x}");
    }
    hex.truncate(len);
    hex
}

/// Posts `body(i)` for `i` in `0..n` as the organization of `key`; the ids accepted.
async fn post_events(
    target: &Target,
    key: &str,
    n: usize,
    body: impl Fn(usize) -> String,
) -> anyhow::Result<Vec<String>> {
    let mut conn = Conn::connect(target).await?;
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let r = conn
            .request("POST", "/api/events", Some(key), body(i).as_bytes())
            .await?;
        ensure!(
            r.status == 202,
            "posting the attackers' events: HTTP {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        let v: serde_json::Value = serde_json::from_slice(&r.body)?;
        ids.push(v["id"].as_str().context("a 202 without an id")?.to_string());
    }
    Ok(ids)
}

/// Readies the tenant of `key` for `shape` before any row (its events are stored only, and
/// load nothing until read): `query-hog`'s incompressible events.
pub async fn seed(shape: Attack, target: &Target, key: &str) -> anyhow::Result<()> {
    if shape == Attack::QueryHog {
        let run = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        post_events(target, key, HOG_EVENTS, |i| {
            let blob = random_hex(HOG_EVENT_BYTES, run ^ i as u64);
            format!(r#"{{"type":"hog","payload":{{"blob":"{blob}"}}}}"#)
        })
        .await?;
    }
    Ok(())
}

/// What a shape's row runs with: its tenant's event ids, and the endpoint its webhook points
/// at while the row runs (dropped after it: later deliveries are refused).
pub struct Armed {
    pub ids: Vec<String>,
    endpoint: Option<Endpoint>,
}

/// Readies a delivery shape just before its row (earlier, its failing deliveries would load
/// the rows before it): the webhook of `key`'s tenant pointed at an endpoint of the
/// attackers' (on their runtime's niceness and CPU), and `replay-storm`'s events posted.
pub async fn arm(
    shape: Attack,
    target: &Target,
    key: &str,
    nice: i32,
    cpu: Option<usize>,
) -> anyhow::Result<Armed> {
    let answering = match shape {
        Attack::PoisonReceiver => Answering::Poison,
        Attack::ReplayStorm => Answering::Failing,
        _ => {
            return Ok(Armed {
                ids: Vec::new(),
                endpoint: None,
            })
        }
    };
    let endpoint = receiver::start(answering, "attacker-hook", nice, cpu)?;
    crate::webhook::configure(target, key, &endpoint.url)
        .await
        .with_context(|| {
            format!(
                "{shape:?} needs the server to deliver to 127.0.0.1 (--webhook-delivery true \
                 --webhook-allow-private true): configuring the attackers' webhook"
            )
        })?;
    let ids = if shape == Attack::ReplayStorm {
        post_events(target, key, STORM_EVENTS, |_| {
            r#"{"type":"storm","payload":{"n":1}}"#.to_string()
        })
        .await?
    } else {
        Vec::new()
    };
    Ok(Armed {
        ids,
        endpoint: Some(endpoint),
    })
}

/// Undoes `arm` after the row: the webhook disabled, so that its retries and replays stop
/// rather than run on into the rows after it, and the endpoint closed.
pub async fn disarm(armed: Armed, target: &Target, key: &str) {
    let Some(endpoint) = armed.endpoint else {
        return;
    };
    let disabled = async {
        let mut conn = Conn::connect(target).await?;
        let r = conn
            .request("POST", "/api/webhook/disable", Some(key), b"")
            .await?;
        ensure!(r.status == 200, "HTTP {}", r.status);
        anyhow::Ok(())
    };
    if let Err(e) = disabled.await {
        eprintln!("WARNING: disabling the attackers' webhook: {e:#}; its deliveries go on");
    }
    eprintln!(
        "  the attackers' endpoint received {} requests",
        endpoint.seen.requests()
    );
}

/// How a slow shape sends: `head`, then `piece` every `every` (as fast as the server reads
/// when zero); with `hold`, the connection stays open past the answer.
struct Drip {
    head: String,
    piece: Vec<u8>,
    every: Duration,
    hold: bool,
}

/// The slow shapes' sending; `None` for the shapes that send whole requests.
fn drip(shape: Attack, host: &str, key: &str) -> Option<Drip> {
    let drip = |head: String, piece: Vec<u8>, every: Duration, hold: bool| {
        Some(Drip {
            head,
            piece,
            every,
            hold,
        })
    };
    let ms = Duration::from_millis;
    match shape {
        Attack::Slowloris => drip(
            format!("POST /api/events HTTP/1.1\r\nHost: {host}\r\nX-Pad: "),
            b"a".to_vec(),
            ms(500),
            false,
        ),
        Attack::ChunkExtension => drip(
            format!("POST /api/events HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\nTransfer-Encoding: chunked\r\n\r\n1b;x="),
            vec![b'a'; 64 * 1024],
            Duration::ZERO,
            false,
        ),
        Attack::EndlessBody => drip(
            format!("POST /api/events/batch HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\nTransfer-Encoding: chunked\r\n\r\n"),
            format!("4000\r\n{}\r\n", "x".repeat(0x4000)).into_bytes(),
            ms(50),
            false,
        ),
        Attack::NoKeyBigBody => drip(
            format!("POST /api/events/batch HTTP/1.1\r\nHost: {host}\r\nContent-Length: 4000000\r\n\r\n"),
            vec![b'x'; 1024],
            ms(10),
            false,
        ),
        Attack::SlowBatches => drip(
            format!("POST /api/events/batch HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\nContent-Length: 5242880\r\n\r\n{{"),
            vec![b' '; 1024],
            ms(1000),
            true,
        ),
        // The answer's head is read; its body never is.
        Attack::BigPages => drip(
            format!("GET /api/inbox?limit=1000&status=all HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\n\r\n"),
            Vec::new(),
            Duration::ZERO,
            true,
        ),
        _ => None,
    }
}

/// A whole request of the shapes that send one per connection; `None` for the others.
fn whole_request(shape: Attack, host: &str, key: &str) -> Option<String> {
    let post = |path: &str, key: Option<&str>, body: &str| {
        let key = key.map_or(String::new(), |k| format!("X-API-Key: {k}\r\n"));
        format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\n{key}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    match shape {
        Attack::RefusedValues => {
            let events = vec![r#"{"type":"x","payload":{"n":1e999999}}"#; 1000].join(",");
            Some(post(
                "/api/events/batch",
                Some(key),
                &format!(r#"{{"events":[{events}]}}"#),
            ))
        }
        Attack::Signup => Some(post(
            "/api/keys/generate",
            None,
            r#"{"organization_name":"flood"}"#,
        )),
        Attack::UnknownKeys => {
            let stranger = triggers::auth::NewKey::generate().plaintext;
            Some(format!(
                "GET /api/inbox HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {stranger}\r\n\r\n"
            ))
        }
        _ => None,
    }
}

/// 100 pipelined requests in one write on a fresh connection; whether all were answered.
async fn pipeline(target: &Target, until: Instant) -> String {
    let Ok(mut c) = TcpStream::connect(target.addr).await else {
        return "refused".into();
    };
    let one = format!("GET /health/live HTTP/1.1\r\nHost: {}\r\n\r\n", target.host);
    if c.write_all(one.repeat(100).as_bytes()).await.is_err() {
        return "reset".into();
    }
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let seen = buf.windows(9).filter(|w| w == b"HTTP/1.1 ").count();
        if seen >= 100 && buf.ends_with(b"}") {
            return "100 answered".into();
        }
        match tokio::time::timeout_at(until.into(), c.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return "cut short".into(),
        }
    }
}

/// What round `round` of keep-alive attacker `n` sends (method, path, body), and the shortest
/// time between its requests; `None` for the shapes that do not keep connections alive.
fn keep_alive_request(
    shape: Attack,
    s: &Setup,
    n: usize,
    round: usize,
    since: &str,
) -> Option<(&'static str, String, String, Duration)> {
    let r = |method, path: String, body: String, every| Some((method, path, body, every));
    match shape {
        Attack::QueryHog if n % HOG_WHOLE_PAGES_EVERY == HOG_WHOLE_PAGES_EVERY - 1 => r(
            "GET",
            "/api/inbox?status=all&limit=1000".into(),
            String::new(),
            Duration::ZERO,
        ),
        Attack::QueryHog => r(
            "GET",
            format!("/api/inbox?status=all&offset={}&limit=1", HOG_EVENTS - 1),
            String::new(),
            Duration::ZERO,
        ),
        Attack::PoisonReceiver => r(
            "POST",
            "/api/events".into(),
            r#"{"type":"poison","payload":{"n":1}}"#.into(),
            POISON_EVERY,
        ),
        Attack::ReplayStorm if round.is_multiple_of(2) || s.ids.is_empty() => r(
            "POST",
            "/api/webhook/replay".into(),
            format!(r#"{{"since":"{since}"}}"#),
            Duration::ZERO,
        ),
        Attack::ReplayStorm => r(
            "POST",
            format!(
                "/api/events/{}/redeliver",
                s.ids[(n + round / 2) % s.ids.len()]
            ),
            String::new(),
            Duration::ZERO,
        ),
        _ => None,
    }
}

/// One keep-alive attacker: requests one after the other on one connection (another after a
/// failure) until the row's end, each answer's status recorded; whatever the server answers
/// (202 today, 429 once it meters) is counted, and the attacker goes on.
async fn keep_alive(shape: Attack, s: &Setup, n: usize) {
    let since = triggers::ids::rfc3339(SystemTime::now() - STORM_REPLAY_SINCE).to_string();
    let mut conn: Option<Conn> = None;
    let mut round = 0;
    while Instant::now() < s.until {
        let Some((method, path, body, every)) = keep_alive_request(shape, s, n, round, &since)
        else {
            return;
        };
        round += 1;
        let started = Instant::now();
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match tokio::time::timeout_at(s.until.into(), Conn::connect(&s.target)).await {
                Ok(Ok(c)) => conn.insert(c),
                Ok(Err(_)) => {
                    record(&s.answers, "refused");
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    continue;
                }
                Err(_) => return,
            },
        };
        let answer = tokio::time::timeout_at(
            s.until.into(),
            c.request(method, &path, Some(&s.key), body.as_bytes()),
        )
        .await;
        let answer = match answer {
            Ok(Ok(r)) => r.status.to_string(),
            Ok(Err(e)) => {
                conn = None;
                if format!("{e:#}").contains("closed") {
                    "closed".into()
                } else {
                    "reset".into()
                }
            }
            Err(_) => "no answer".into(),
        };
        record(&s.answers, answer);
        tokio::time::sleep_until((started + every).into()).await;
    }
}

/// One attacker connection's loop.
pub async fn attack(shape: Attack, s: Arc<Setup>, n: usize) {
    if shape.own_org() {
        return keep_alive(shape, &s, n).await;
    }
    let (host, key, until) = (&s.target.host, &s.key, s.until);
    let mut round = 0usize;
    while Instant::now() < until {
        round += 1;
        let answer = if let Some(d) = drip(shape, host, key) {
            send_and_drip(
                &s.target,
                d.head.into_bytes(),
                d.piece,
                d.every,
                until,
                d.hold,
            )
            .await
        } else if let Some(request) = whole_request(shape, host, key) {
            send_once(&s.target, request.as_bytes(), until).await
        } else {
            match shape {
                Attack::Idle => match TcpStream::connect(s.target.addr).await {
                    Ok(stream) => {
                        let (mut read, _write) = stream.into_split();
                        first_status(&mut read, until).await
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        "refused".into()
                    }
                },
                Attack::Pipeline => pipeline(&s.target, until).await,
                Attack::Smuggle => {
                    let requests = smuggling_requests(host, key);
                    let request = &requests[(n + round) % requests.len()];
                    send_once(&s.target, request, until).await
                }
                _ => unreachable!("{shape:?} drips or sends whole requests"),
            }
        };
        record(&s.answers, answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_hex_is_hex_of_the_length_asked_and_differs_by_seed() {
        let a = random_hex(1001, 7);
        assert_eq!(a.len(), 1001);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, random_hex(1001, 8));
        // No run of one character for a compressor to take out.
        assert!(!a.contains("0000000"));
    }

    #[test]
    fn keep_alive_shapes_send_what_they_document() {
        let s = Setup {
            target: Target::parse("http://127.0.0.1:1").unwrap(),
            key: "k".into(),
            ids: vec!["e1".into(), "e2".into()],
            until: Instant::now(),
            answers: Answers::default(),
        };
        let path = |shape, n, round| keep_alive_request(shape, &s, n, round, "T").unwrap().1;
        assert_eq!(
            path(Attack::QueryHog, 0, 0),
            "/api/inbox?status=all&offset=99&limit=1"
        );
        assert_eq!(
            path(Attack::QueryHog, 4, 0),
            "/api/inbox?status=all&limit=1000"
        );
        assert_eq!(path(Attack::ReplayStorm, 0, 0), "/api/webhook/replay");
        assert_eq!(path(Attack::ReplayStorm, 0, 1), "/api/events/e1/redeliver");
        assert_eq!(path(Attack::ReplayStorm, 0, 3), "/api/events/e2/redeliver");
        let poison = keep_alive_request(Attack::PoisonReceiver, &s, 0, 0, "T").unwrap();
        assert_eq!(poison.3, POISON_EVERY);
        assert!(keep_alive_request(Attack::Slowloris, &s, 0, 0, "T").is_none());
    }
}
