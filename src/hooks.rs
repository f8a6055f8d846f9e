//! hooks: the seam between ingest and webhook delivery. Which organizations this node pushes
//! events to (their endpoints, as last read), how many delivery jobs it may hold in memory, and
//! the hand-off of freshly committed events from persisters to delivery. Imports `db` and `ids`.
//!
//! A persister asks `Hooks::pushing` which organizations of a batch have a webhook; if any, it
//! commits the batch together with one `deliveries` row per new event, leased to this node
//! when `Hooks::reserve` found room (the hand-off), or due for any node's claim when not.
//! After the commit it hands the leased jobs over with `Hooks::hand_off`. Nothing here blocks.
//!
//! The view of endpoints is kept by `spawn_listener`, on every node whether it delivers or not
//! (a node that does not deliver still queues deliveries for the nodes that do): it reads every
//! endpoint when it connects, then re-reads one endpoint each time its change is announced.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use crate::db::deliveries::{self, EndpointRow, WEBHOOKS_CHANNEL};
use crate::db::listen::{self, Listener};
use crate::ids::{EventId, OrgId};
use crate::shutdown::Stop;

/// Every endpoint is read again this often besides, whatever was announced: a backstop, not
/// the way changes arrive.
const RELOAD_ALL_EVERY: Duration = Duration::from_secs(60);

/// Where one organization's events are pushed.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub url: String,
    /// The Standard Webhooks signing secret, `whsec_` + base64.
    pub secret: String,
    /// Secrets rotated out, each also signing until the time given, newest first.
    pub retired: Vec<(String, SystemTime)>,
    /// Resting after failing too often (on any node): no attempt before then.
    pub rest_until: Option<SystemTime>,
    /// The webhook's generation (a deletion starts the next): a job queued in another is not
    /// made.
    pub generation: i64,
}

impl From<EndpointRow> for Endpoint {
    fn from(r: EndpointRow) -> Endpoint {
        Endpoint {
            url: r.url,
            secret: r.secret,
            retired: r.retired,
            rest_until: r.rest_until,
            generation: r.generation,
        }
    }
}

/// One event to deliver, with what its body is made of.
#[derive(Debug, Clone)]
pub struct Job {
    pub org: OrgId,
    pub id: EventId,
    pub kind: Box<str>,
    /// The payload's JSON text: as the request sent it, or (`printed`) as PostgreSQL prints it.
    pub payload: Box<[u8]>,
    /// The payload was read back from the table (a claim), so it is PostgreSQL's text already.
    pub printed: bool,
    pub dedup_id: Option<Box<str>>,
    pub created_at: SystemTime,
    /// The event's retention class (`events.keep_days`): its attempts are kept as long.
    pub keep_days: i16,
    /// The generation of the webhook it was queued for: made only while that is current.
    pub generation: i64,
    /// Attempts already made.
    pub attempts: u16,
    /// The lease this node holds on the job's `deliveries` row; also the fence that keeps a
    /// late outcome from touching a row another node has taken since.
    pub lease_until: SystemTime,
}

impl Job {
    /// Memory the job holds, as the in-memory bound counts it.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Job>()
            + self.kind.len()
            + self.payload.len()
            + self.dedup_id.as_ref().map_or(0, |d| d.len())
    }
}

/// Receives handed-off jobs (the delivery engine's intake).
pub trait Intake: Send + Sync {
    fn take(&self, jobs: Vec<Job>);
}

/// How many jobs, and how many bytes of them, this node may hold in memory, and how long it
/// leases what it holds.
#[derive(Debug, Clone, Copy)]
pub struct MemoryLimits {
    pub jobs: usize,
    pub bytes: usize,
    pub lease: Duration,
    /// While delivery gives way to ingest, it holds no more jobs than start within this long
    /// (an attempt's timeout: well inside the part of the lease a job may wait in memory).
    pub start_within: Duration,
}

#[derive(Default)]
struct Held {
    jobs: AtomicUsize,
    bytes: AtomicUsize,
}

/// The node's view of webhook endpoints, and its delivery memory.
pub struct Hooks {
    endpoints: RwLock<HashMap<OrgId, Arc<Endpoint>>>,
    /// `endpoints` is not empty: lets persisters skip the lock while nobody has a webhook.
    any: AtomicBool,
    limits: MemoryLimits,
    held: Held,
    /// While delivery gives way to ingest, the attempts per second it may start (0: it does
    /// not). Meanwhile it holds in memory only what starts within `limits.start_within`, so
    /// that none waits out its lease; beyond that, new deliveries wait in the table for a
    /// claim.
    giving_way: AtomicU64,
    intake: Mutex<Option<Arc<dyn Intake>>>,
}

impl Hooks {
    pub fn new(limits: MemoryLimits) -> Hooks {
        Hooks {
            endpoints: RwLock::default(),
            any: AtomicBool::new(false),
            limits,
            held: Held::default(),
            giving_way: AtomicU64::new(0),
            intake: Mutex::new(None),
        }
    }

    /// Connects the delivery engine; until then nothing is handed off (rows wait for a claim).
    pub fn connect(&self, intake: Arc<dyn Intake>) {
        *self.intake.lock().expect("hooks intake lock") = Some(intake);
    }

    pub fn disconnect(&self) {
        *self.intake.lock().expect("hooks intake lock") = None;
    }

    /// Whether any organization has an enabled webhook.
    pub fn any(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    /// Those of `orgs` whose events are pushed (they have an enabled webhook), each once. While
    /// nobody has a webhook this is one atomic load, whatever the batch.
    pub fn pushing(&self, orgs: impl Iterator<Item = OrgId>) -> Vec<OrgId> {
        if !self.any() {
            return Vec::new();
        }
        let map = self.endpoints.read().expect("hooks lock");
        let mut pushed: Vec<OrgId> = orgs.filter(|o| map.contains_key(o)).collect();
        pushed.sort_unstable();
        pushed.dedup();
        pushed
    }

    /// Where `org`'s events go now, if anywhere.
    pub fn endpoint(&self, org: OrgId) -> Option<Arc<Endpoint>> {
        self.endpoints
            .read()
            .expect("hooks lock")
            .get(&org)
            .cloned()
    }

    /// Sets (or, with `None`, removes) `org`'s endpoint.
    pub fn set(&self, org: OrgId, endpoint: Option<Endpoint>) {
        let mut map = self.endpoints.write().expect("hooks lock");
        match endpoint {
            Some(e) => map.insert(org, Arc::new(e)),
            None => map.remove(&org),
        };
        self.any.store(!map.is_empty(), Ordering::Relaxed);
    }

    /// Reads every enabled endpoint from the database (at start, when the listener connects,
    /// and every `RELOAD_ALL_EVERY`).
    pub fn reload(&self, client: &mut postgres::Client) -> Result<(), postgres::Error> {
        let rows = deliveries::endpoints(client)?;
        self.replace_all(rows.into_iter().map(|r| (r.org, r.into())).collect());
        Ok(())
    }

    /// Reads `org`'s endpoint from the database (after a change made here).
    pub fn reload_one(
        &self,
        client: &mut postgres::Client,
        org: OrgId,
    ) -> Result<(), postgres::Error> {
        let row = deliveries::endpoint(client, org)?;
        self.set(org, row.map(Endpoint::from));
        Ok(())
    }

    /// Replaces every endpoint with `endpoints`.
    pub fn replace_all(&self, endpoints: HashMap<OrgId, Endpoint>) {
        let map: HashMap<OrgId, Arc<Endpoint>> = endpoints
            .into_iter()
            .map(|(org, e)| (org, Arc::new(e)))
            .collect();
        self.any.store(!map.is_empty(), Ordering::Relaxed);
        *self.endpoints.write().expect("hooks lock") = map;
    }

    /// Reserves room for `jobs` jobs of `bytes` bytes in memory; false (nothing reserved) when
    /// they do not fit or no engine takes hand-offs.
    pub fn reserve(&self, jobs: usize, bytes: usize) -> bool {
        if self.intake.lock().expect("hooks intake lock").is_none() {
            return false;
        }
        let held_jobs = self.held.jobs.fetch_add(jobs, Ordering::AcqRel) + jobs;
        let held_bytes = self.held.bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        if held_jobs > self.jobs_max() || held_bytes > self.limits.bytes {
            self.release(jobs, bytes);
            return false;
        }
        true
    }

    /// Delivery gives way to ingest, starting at most `per_s` attempts a second (0: it does
    /// not); see `jobs_max`.
    pub fn give_way(&self, per_s: u64) {
        self.giving_way.store(per_s, Ordering::Relaxed);
    }

    /// The most jobs memory may hold now: `limits.jobs`, and while delivery gives way to
    /// ingest, no more than start within `limits.start_within` (hand-offs and claims alike),
    /// so that nothing held waits out its lease in memory.
    fn jobs_max(&self) -> usize {
        let per_s = self.giving_way();
        if per_s == 0 {
            return self.limits.jobs;
        }
        let starting = (per_s as f64 * self.limits.start_within.as_secs_f64()).ceil() as usize;
        starting.clamp(1, self.limits.jobs)
    }

    /// The attempts per second delivery may start while it gives way to ingest; 0: no limit.
    pub fn giving_way(&self) -> u64 {
        self.giving_way.load(Ordering::Relaxed)
    }

    /// Counts jobs the engine claimed, sized to the room it read.
    pub fn hold(&self, jobs: usize, bytes: usize) {
        self.held.jobs.fetch_add(jobs, Ordering::AcqRel);
        self.held.bytes.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Gives back what `reserve` took, once jobs are done (or were never made).
    pub fn release(&self, jobs: usize, bytes: usize) {
        self.held.jobs.fetch_sub(jobs, Ordering::AcqRel);
        self.held.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Organizations with an enabled webhook, as last read.
    pub fn endpoints(&self) -> usize {
        self.endpoints.read().expect("hooks lock").len()
    }

    /// Jobs held in memory now.
    pub fn held_jobs(&self) -> usize {
        self.held.jobs.load(Ordering::Relaxed)
    }

    /// How many more jobs, and bytes of them, fit in memory (see `jobs_max`).
    pub fn room(&self) -> (usize, usize) {
        (
            self.jobs_max()
                .saturating_sub(self.held.jobs.load(Ordering::Relaxed)),
            self.limits
                .bytes
                .saturating_sub(self.held.bytes.load(Ordering::Relaxed)),
        )
    }

    /// How long a node holds the rows it works on.
    pub fn lease(&self) -> Duration {
        self.limits.lease
    }

    /// Hands committed, leased jobs to the engine: `jobs` are some of those `reserve` made room
    /// for (`reserved`: their count and bytes), the rest were not stored. If the engine is
    /// gone meanwhile, everything is given back and the leases run out.
    pub fn hand_off(&self, jobs: Vec<Job>, reserved: (usize, usize)) {
        let intake = self.intake.lock().expect("hooks intake lock").clone();
        let Some(intake) = intake else {
            self.release(reserved.0, reserved.1);
            return;
        };
        let bytes = jobs.iter().map(Job::bytes).sum::<usize>();
        self.release(
            reserved.0.saturating_sub(jobs.len()),
            reserved.1.saturating_sub(bytes),
        );
        if !jobs.is_empty() {
            intake.take(jobs);
        }
    }
}

/// Keeps `hooks` in step with every node sharing the database: re-reads the endpoint of each
/// organization announced on `WEBHOOKS_CHANNEL`; reads them all when it connects (changes
/// while it was away went unheard) and every `RELOAD_ALL_EVERY`.
pub fn spawn_listener(
    db: postgres::Config,
    hooks: Arc<Hooks>,
    stop: Arc<Stop>,
) -> std::thread::JoinHandle<()> {
    let notices = EndpointNotices {
        hooks,
        reloaded: Instant::now(),
    };
    listen::spawn(
        "webhook-listener",
        "webhook listener",
        db,
        &[WEBHOOKS_CHANNEL],
        stop,
        notices,
    )
}

struct EndpointNotices {
    hooks: Arc<Hooks>,
    /// When every endpoint was last read.
    reloaded: Instant,
}

impl Listener for EndpointNotices {
    fn connected(&mut self, client: &mut postgres::Client, _: bool) -> Result<(), postgres::Error> {
        self.reloaded = Instant::now();
        self.hooks.reload(client)
    }

    fn heard(
        &mut self,
        client: &mut postgres::Client,
        notices: Vec<postgres::Notification>,
    ) -> Result<(), postgres::Error> {
        let orgs: Option<Vec<OrgId>> = notices
            .iter()
            .map(|n| n.payload().parse().ok().map(OrgId))
            .collect();
        match orgs {
            Some(orgs) if self.reloaded.elapsed() < RELOAD_ALL_EVERY => orgs
                .into_iter()
                .try_for_each(|org| self.hooks.reload_one(client, org)),
            // Due, or a notice that names no organization.
            _ => self.connected(client, true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sink(Mutex<Vec<Job>>);
    impl Intake for Sink {
        fn take(&self, jobs: Vec<Job>) {
            self.0.lock().unwrap().extend(jobs);
        }
    }

    fn job() -> Job {
        Job {
            org: OrgId(uuid::Uuid::nil()),
            id: EventId(uuid::Uuid::nil()),
            kind: "t".into(),
            payload: b"{}".to_vec().into(),
            printed: false,
            dedup_id: None,
            created_at: SystemTime::UNIX_EPOCH,
            keep_days: 1,
            generation: 0,
            attempts: 0,
            lease_until: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn memory_is_bounded_in_jobs_and_bytes_and_given_back() {
        let hooks = Hooks::new(MemoryLimits {
            jobs: 2,
            bytes: 1000,
            lease: Duration::from_secs(60),
            start_within: Duration::from_secs(15),
        });
        assert!(!hooks.reserve(1, 10), "no engine connected: no hand-off");
        let sink = Arc::new(Sink(Mutex::new(Vec::new())));
        hooks.connect(sink.clone());
        assert!(hooks.reserve(2, 100));
        assert!(!hooks.reserve(1, 1), "jobs bound");
        hooks.release(1, 50);
        assert!(!hooks.reserve(1, 951), "bytes bound");
        assert_eq!(hooks.held_jobs(), 1);
        let j = job();
        let b = j.bytes();
        hooks.release(1, 50);
        assert!(hooks.reserve(2, 2 * b));
        hooks.hand_off(vec![j], (2, 2 * b));
        assert_eq!(
            hooks.room(),
            (1, 1000 - b),
            "the job not stored is given back"
        );
        assert_eq!(sink.0.lock().unwrap().len(), 1);
    }

    #[test]
    fn while_delivery_gives_way_memory_holds_what_starts_within_a_timeout() {
        let hooks = Hooks::new(MemoryLimits {
            jobs: 1_000,
            bytes: 1 << 20,
            lease: Duration::from_secs(60),
            start_within: Duration::from_secs(2),
        });
        hooks.connect(Arc::new(Sink(Mutex::new(Vec::new()))));
        assert_eq!(hooks.room().0, 1_000);
        // 20 attempts a second, started within 2 s: 40 jobs.
        hooks.give_way(20);
        assert_eq!(hooks.room().0, 40);
        assert!(hooks.reserve(30, 300));
        assert_eq!(hooks.room().0, 10, "claims see the same bound");
        assert!(
            !hooks.reserve(11, 110),
            "beyond what starts within the timeout"
        );
        assert!(hooks.reserve(10, 100));
        assert_eq!(hooks.held_jobs(), 40);
        assert_eq!(hooks.room().0, 0);
        // The limit lifted: the memory bounds alone.
        hooks.give_way(0);
        assert_eq!(hooks.room().0, 960);
        assert!(hooks.reserve(500, 5_000));
    }

    #[test]
    fn endpoints_are_set_replaced_and_removed() {
        let hooks = Hooks::new(MemoryLimits {
            jobs: 1,
            bytes: 1,
            lease: Duration::from_secs(60),
            start_within: Duration::from_secs(15),
        });
        let (a, b) = (OrgId(uuid::Uuid::now_v7()), OrgId(uuid::Uuid::now_v7()));
        let pushes_to = |o: OrgId| hooks.pushing(std::iter::once(o)) == [o];
        assert!(!pushes_to(a));
        let e = Endpoint {
            url: "http://x/".into(),
            secret: "whsec_x".into(),
            retired: Vec::new(),
            generation: 0,
            rest_until: None,
        };
        hooks.set(a, Some(e.clone()));
        assert!(pushes_to(a) && !pushes_to(b));
        assert_eq!(
            hooks.pushing([b, a, a, b].into_iter()),
            [a],
            "each pushed org once"
        );
        hooks.replace_all(HashMap::from([(b, e)]));
        assert!(!pushes_to(a) && pushes_to(b));
        hooks.set(b, None);
        assert!(!pushes_to(b));
    }
}
