//! webhook: webhook delivery, end to end. Starts a receiver in this process, points every
//! organization's webhook at it, runs the ingest (or batch) scenario open loop, and then
//! reports what the receiver got: each event delivered once, duplicated (same `webhook-id`
//! again) or missing, signatures that did not verify (checked with the independent
//! `standardwebhooks` crate), and the latency from each event's intended send time to its
//! first arrival at the receiver. The receiver can be told to answer slowly, to fail or
//! throttle a share of requests, or to never answer for the first organizations.
//!
//! The server must accept loopback webhooks (`--webhook-allow-private true`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::client::{Conn, Target};
use crate::orgs::create_orgs;
use crate::run::{new_histogram, org_count, run_keys, RunArgs, START_DELAY};
use crate::scenario::Scenario;

#[derive(clap::Args)]
pub struct WebhookArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Where the receiver listens (the server must reach it)
    #[arg(long, default_value = "127.0.0.1:0")]
    pub receiver_listen: SocketAddr,
    /// The first N organizations' endpoint never answers
    #[arg(long, default_value_t = 0)]
    pub hanging_orgs: usize,
    /// Every answer waits this long first
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Share of requests answered 500
    #[arg(long, default_value_t = 0.0)]
    pub fail_share: f64,
    /// Share of requests answered 429 with Retry-After: 1
    #[arg(long, default_value_t = 0.0)]
    pub throttle_share: f64,
    /// Seconds to wait after the run for deliveries still to come
    #[arg(long, default_value_t = 30)]
    pub drain: u64,
    /// Niceness of the receiver's thread (it runs on a runtime of its own either way). 19: it
    /// takes only CPU the server, its PostgreSQL and the ingest client leave, as an endpoint on
    /// another machine would
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub receiver_nice: i32,
}

/// What the receiver saw.
struct Seen {
    /// Arrivals per `webhook-id`, and which organization each belongs to.
    per_id: HashMap<String, (usize, u32)>,
    /// Intended send time of the event → its first arrival, in microseconds.
    end_to_end: Histogram<u64>,
}

struct Receiver {
    secrets: Vec<standardwebhooks::Webhook>,
    /// The run's schedule: event `i` was due at `start + i * per_request`.
    start: Instant,
    per_request: Duration,
    batch: bool,
    args: Behaviour,
    seen: Mutex<Seen>,
    requests: AtomicU64,
    bad_signatures: AtomicU64,
    answered: Mutex<HashMap<u16, u64>>,
}

#[derive(Clone, Copy)]
struct Behaviour {
    hanging_orgs: usize,
    delay: Duration,
    fail_share: f64,
    throttle_share: f64,
}

/// One request read off a connection: path, headers, body.
pub struct Incoming {
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

/// Reads the next request off `stream` (what `buf` holds of it first); fails when the sender
/// closes. `hostile`'s endpoints read with it too.
pub async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<Incoming> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(head) = req.parse(buf)? {
            let path = req.path.unwrap_or("/").to_string();
            let mut map = http::HeaderMap::new();
            let mut len = 0;
            for h in req.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    len = std::str::from_utf8(h.value)?.trim().parse()?;
                }
                map.append(
                    http::HeaderName::from_bytes(h.name.as_bytes())?,
                    http::HeaderValue::from_bytes(h.value)?,
                );
            }
            while buf.len() < head + len {
                buf.reserve(head + len - buf.len());
                let n = stream.read_buf(buf).await?;
                ensure!(n > 0, "closed mid-body");
            }
            let body = buf[head..head + len].to_vec();
            buf.drain(..head + len);
            return Ok(Incoming {
                path,
                headers: map,
                body,
            });
        }
        buf.reserve(16 * 1024);
        let n = stream.read_buf(buf).await?;
        ensure!(n > 0, "closed");
    }
}

impl Receiver {
    /// Records one delivery; the status to answer, or `None` to never answer.
    fn take(&self, req: &Incoming) -> Option<u16> {
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        let org: usize = req
            .path
            .strip_prefix("/hook/")
            .and_then(|o| o.parse().ok())
            .unwrap_or(usize::MAX);
        if org < self.args.hanging_orgs {
            return None;
        }
        let Some(secret) = self.secrets.get(org) else {
            return Some(404);
        };
        if secret.verify(&req.body, &req.headers).is_err() {
            self.bad_signatures.fetch_add(1, Ordering::Relaxed);
            return Some(400);
        }
        // Spread the failing and throttled shares evenly over the requests (the golden-ratio
        // sequence), so that a run is repeatable.
        let roll = (n as f64 * 0.618_033_988_749_895).fract();
        if roll < self.args.fail_share {
            return Some(500);
        }
        if roll < self.args.fail_share + self.args.throttle_share {
            return Some(429);
        }
        let id = req
            .headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let order = body["payload"]["order_id"].as_u64().unwrap_or(0);
        let i = if self.batch { order / 1000 } else { order };
        let due = self.start + self.per_request.mul_f64(i as f64);
        let mut seen = self.seen.lock().unwrap();
        let entry = seen.per_id.entry(id).or_insert((org, 0));
        entry.1 += 1;
        if entry.1 == 1 {
            let us = Instant::now().saturating_duration_since(due).as_micros() as u64;
            seen.end_to_end.saturating_record(us.max(1));
        }
        Some(200)
    }

    async fn serve(self: Arc<Self>, mut stream: TcpStream) {
        let mut buf = Vec::new();
        while let Ok(req) = read_request(&mut stream, &mut buf).await {
            let Some(status) = self.take(&req) else {
                // Never answer: hold the connection until the sender gives up.
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                return;
            };
            if !self.args.delay.is_zero() {
                tokio::time::sleep(self.args.delay).await;
            }
            *self.answered.lock().unwrap().entry(status).or_default() += 1;
            let extra = if status == 429 {
                "retry-after: 1\r\n"
            } else {
                ""
            };
            let head = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n{extra}\r\n");
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

/// Serves each connection `listener` accepts with `serve`, on `rt`.
pub fn accept_each<F>(
    rt: &tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    serve: impl Fn(TcpStream) -> F + Send + 'static,
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let _in_rt = rt.enter();
    let listener = TcpListener::from_std(listener)?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve(stream));
        }
    });
    Ok(())
}

/// Points the organization of `key` at `url`; returns its signing secret.
pub async fn configure(target: &Target, key: &str, url: &str) -> anyhow::Result<String> {
    let mut conn = Conn::connect(target).await?;
    let body = json!({ "webhook_url": url }).to_string();
    let r = conn
        .request("POST", "/api/webhook/config", Some(key), body.as_bytes())
        .await?;
    ensure!(
        r.status == 200,
        "configuring a webhook: HTTP {} {} (start the server with --webhook-allow-private true)",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    let v: Value = serde_json::from_slice(&r.body)?;
    Ok(v["secret"].as_str().context("no secret")?.to_string())
}

pub async fn webhook(args: &WebhookArgs) -> anyhow::Result<()> {
    let run = {
        let mut r = args.run.clone();
        // The accepted ids are what the receiver must get.
        r.verify = true;
        r
    };
    ensure!(
        matches!(
            run.scenario,
            Scenario::Ingest | Scenario::HotTenant | Scenario::Batch
        ),
        "the webhook run takes the ingest, hot-tenant or batch scenario"
    );
    let url = run.url.first().context("--url")?;
    let target = Target::parse(url)?;
    // The receiver runs on a runtime of its own: its work (a signature to verify per request)
    // must not delay the ingest client's sends and reads, whose latency is measured.
    let receiver_rt = crate::side::runtime("receiver", args.receiver_nice, None)?;
    let listener = std::net::TcpListener::bind(args.receiver_listen)?;
    listener.set_nonblocking(true)?;
    let at = listener.local_addr()?;
    let (keys, _) = create_orgs(&target, &run, org_count(&run)).await?;
    let mut secrets = Vec::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        let secret = configure(&target, key, &format!("http://{at}/hook/{i}")).await?;
        secrets
            .push(standardwebhooks::Webhook::new(&secret).map_err(|e| anyhow::anyhow!("{e:?}"))?);
    }
    let start = Instant::now() + START_DELAY;
    let receiver = Arc::new(Receiver {
        secrets,
        start,
        per_request: Duration::from_secs_f64(1.0 / run.rate as f64),
        batch: run.scenario == Scenario::Batch,
        args: Behaviour {
            hanging_orgs: args.hanging_orgs,
            delay: Duration::from_millis(args.delay_ms),
            fail_share: args.fail_share,
            throttle_share: args.throttle_share,
        },
        seen: Mutex::new(Seen {
            per_id: HashMap::new(),
            end_to_end: new_histogram(),
        }),
        requests: AtomicU64::new(0),
        bad_signatures: AtomicU64::new(0),
        answered: Mutex::default(),
    });
    {
        let receiver = receiver.clone();
        accept_each(&receiver_rt, listener, move |stream| {
            receiver.clone().serve(stream)
        })?;
    }
    eprintln!(
        "{url}: {:?} at {} req/s for {} s, {} organizations pushing to {at} ({} hanging)",
        run.scenario,
        run.rate,
        run.duration,
        keys.len(),
        args.hanging_orgs
    );
    let keys = Arc::new(keys);
    let mut outcome = run_keys(&target, &run, keys.clone(), start, false).await?;
    crate::run::verify_if_asked(&mut outcome, &target, &run, &keys).await;
    println!("ingest: {}", crate::report::summary(&outcome));
    let expected: Vec<&(usize, String)> = outcome
        .acked
        .iter()
        .filter(|(org, _)| *org >= args.hanging_orgs)
        .collect();
    let drain_until = Instant::now() + Duration::from_secs(args.drain);
    loop {
        let got = {
            let seen = receiver.seen.lock().unwrap();
            expected
                .iter()
                .filter(|(_, id)| seen.per_id.contains_key(id))
                .count()
        };
        if got == expected.len() || Instant::now() >= drain_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(receiver_rt);
    let seen = receiver.seen.lock().unwrap();
    let missing = expected
        .iter()
        .filter(|(_, id)| !seen.per_id.contains_key(id))
        .count();
    let duplicated = seen.per_id.values().filter(|(_, n)| *n > 1).count();
    let h = &seen.end_to_end;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let report = json!({
        "events_acknowledged": outcome.acked.len(),
        "events_expected": expected.len(),
        "delivered": seen.per_id.len(),
        "missing": missing,
        "duplicated": duplicated,
        "bad_signatures": receiver.bad_signatures.load(Ordering::Relaxed),
        "receiver_requests": receiver.requests.load(Ordering::Relaxed),
        "answered": receiver.answered.lock().unwrap().iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "end_to_end_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p99_9": ms(0.999), "max": h.max() as f64 / 1000.0},
        "ingest_ms": {"p50": outcome.latency.value_at_quantile(0.5) as f64 / 1000.0, "p99": outcome.latency.value_at_quantile(0.99) as f64 / 1000.0},
    });
    println!("webhook: {}", serde_json::to_string_pretty(&report)?);
    if let Some(dir) = &args.run.out {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("webhook.json"),
            serde_json::to_vec_pretty(&report)?,
        )?;
    }
    ensure!(
        missing == 0 && receiver.bad_signatures.load(Ordering::Relaxed) == 0,
        "{missing} events not delivered, {} bad signatures",
        receiver.bad_signatures.load(Ordering::Relaxed)
    );
    Ok(())
}
