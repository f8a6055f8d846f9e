//! db::partitions: how `events` is laid out in time, and the upkeep that keeps the layout ahead
//! of the clock and expired events out of it (the layout itself: migrations/V5).
//!
//! `events` is listed by `keep_days`, the retention of the organization's tier when the event
//! arrived: one *class* per retention, `events_k{days}`, each a range of partitions on the id
//! (UUIDv7: creation time) a quarter of its retention long. An event past its retention leaves
//! with its whole partition, dropped once the partition's newest possible event has expired:
//! at most a quarter of the retention late, and never by DELETE, so vacuum has nothing to chase
//! and ingest takes no lock but its own.
//!
//! One pass of `Upkeep::run`, under an advisory lock so that one node at a time does it:
//! - each configured class exists, and its partitions cover the clock from a period back to
//!   `PERIODS_AHEAD` periods on;
//! - every class's partitions (configured or not: an operator may drop a tier) whose range has
//!   expired are detached `CONCURRENTLY` (no lock that waits for ingest or queues it) and
//!   dropped, then `event_dedup` rows of their events deleted in bounded batches;
//! - the legacy table of an upgrade goes once the longest retention has passed over it;
//! - delivery attempts (and deliveries parked for a disabled endpoint) of events past the
//!   longest retention are deleted in bounded batches.
//!
//! Each node runs a pass before it serves (waiting for the lock: the partitions it will write
//! must exist) and then every `Upkeep::every` on its own thread (skipping a pass another node
//! holds the lock for).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use postgres::Client;

use super::conn::{connect, Link};
use crate::ids::EventId;
use crate::shutdown::Stop;
use crate::stats::{LogEvery, UpkeepStats};
use crate::tiers;

/// Key of the advisory lock one node holds while it runs a pass.
pub const UPKEEP_LOCK_KEY: i64 = 0x7472_6967_7570_6b70; // "trigupkp"
/// Partitions kept ready past the current one: ingest never waits for a partition, and a
/// node whose upkeep stalls has this long before its inserts would fail.
const PERIODS_AHEAD: u32 = 2;
/// A class of events kept forever still has partitions, this many days long.
const FOREVER_PERIOD_DAYS: u32 = 30;
/// Passes run at most this far apart, and at least this close: a quarter of the shortest
/// period between.
const EVERY_MAX: Duration = Duration::from_secs(60);
const EVERY_MIN: Duration = Duration::from_secs(1);
/// Rows one trimming statement deletes, and how long a pass trims before it leaves the rest to
/// the next: short transactions, each a few milliseconds, never one long one.
const TRIM_BATCH: i64 = 5_000;
const TRIM_PER_PASS: Duration = Duration::from_secs(2);
/// Longest a DDL statement of a pass waits for a lock; past it the pass fails and the next
/// tries again, rather than leave a lock request queued in front of ingest.
const LOCK_TIMEOUT: &str = "2s";
/// A pass longer than this is logged: trimming alone may take `TRIM_PER_PASS`.
const PASS_SLOW: Duration = Duration::from_secs(5);
/// The class of the table an upgrade found (V5): no tier has it.
const LEGACY_DAYS: i16 = -1;
const LEGACY_TABLE: &str = "events_legacy";

/// One class: a retention, and the partitions that hold its events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Class {
    pub days: u16,
    /// `None`: forever.
    pub keep: Option<Duration>,
    pub period: Duration,
}

impl Class {
    /// The class of a retention of `days` (`0`: forever), a day lasting `day`.
    pub fn new(days: u16, day: Duration) -> Class {
        let keep = (days > 0).then(|| day * u32::from(days));
        let period = match keep {
            Some(keep) => (keep / 4).max(Duration::from_millis(100)),
            None => day * FOREVER_PERIOD_DAYS,
        };
        Class { days, keep, period }
    }

    /// The oldest id an organization of this class may still read at `now` (`None`: every id).
    pub fn kept_since(&self, now: SystemTime) -> Option<EventId> {
        self.keep.map(|keep| EventId::first_at(now - keep))
    }

    fn table(&self) -> String {
        format!("events_k{}", self.days)
    }

    fn period_ms(&self) -> u64 {
        self.period.as_millis() as u64
    }
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    pub created: Vec<String>,
    pub dropped: Vec<String>,
    /// `event_dedup`, `delivery_attempts` and parked `deliveries` rows deleted.
    pub trimmed: u64,
}

/// The upkeep of every class some tier has.
#[derive(Clone, Debug)]
pub struct Upkeep {
    classes: Vec<Class>,
    day: Duration,
}

impl Upkeep {
    /// `retentions`: every tier's retention in days, `0` forever; a day lasts `day`.
    pub fn new(retentions: &[u16], day: Duration) -> Upkeep {
        let classes = retentions.iter().map(|&d| Class::new(d, day)).collect();
        Upkeep { classes, day }
    }

    /// The longest retention of any tier (`None`: some tier keeps events forever).
    fn longest(&self) -> Option<Duration> {
        let days = tiers::longest(self.classes.iter().map(|c| c.days));
        Class::new(days, self.day).keep
    }

    /// How often a pass runs.
    pub fn every(&self) -> Duration {
        let shortest = self.classes.iter().map(|c| c.period).min();
        (shortest.unwrap_or(EVERY_MAX) / 4).clamp(EVERY_MIN, EVERY_MAX)
    }

    /// One pass at `now`. `wait`: wait for a node running one to finish, then run (at start);
    /// else `None` when another node holds the lock.
    pub fn run(
        &self,
        client: &mut Client,
        now: SystemTime,
        wait: bool,
    ) -> Result<Option<Pass>, postgres::Error> {
        let locked: bool = if wait {
            client.execute("SELECT pg_advisory_lock($1)", &[&UPKEEP_LOCK_KEY])?;
            true
        } else {
            client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&UPKEEP_LOCK_KEY])?
                .get(0)
        };
        if !locked {
            return Ok(None);
        }
        let pass = self.locked_pass(client, now);
        let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&UPKEEP_LOCK_KEY]);
        let pass = pass?;
        unlocked?;
        Ok(Some(pass))
    }

    fn locked_pass(&self, client: &mut Client, now: SystemTime) -> Result<Pass, postgres::Error> {
        client.batch_execute(&format!("SET lock_timeout = '{LOCK_TIMEOUT}'"))?;
        let mut pass = Pass::default();
        finish_detaching(client)?;
        let now_ms = unix_ms(now);
        for class in &self.classes {
            ensure_class(client, class)?;
            create_ahead(client, class, now_ms, &mut pass)?;
        }
        let trim_until = Instant::now() + TRIM_PER_PASS;
        for class in existing_classes(client, self.day)? {
            let oldest = drop_expired(client, &class, now_ms, &mut pass)?;
            // With no partition left, none of its events are either.
            let below = oldest.map_or(EventId::first_at(now), ms_id);
            for statement in [DEDUP_OF_CLASS, ATTEMPTS_OF_CLASS] {
                let days = Some(class.days as i16);
                pass.trimmed += trim(client, statement, below, days, trim_until)?;
            }
        }
        self.drop_legacy(client, now, &mut pass, trim_until)?;
        if let Some(longest) = self.longest() {
            let below = EventId::first_at(now - longest);
            for statement in [OLD_ATTEMPTS, PARKED_DELIVERIES] {
                pass.trimmed += trim(client, statement, below, None, trim_until)?;
            }
        }
        Ok(pass)
    }

    /// The table an upgrade attached goes when the longest retention has passed over its
    /// newest event (never while a tier keeps events forever), then its dedup_ids.
    fn drop_legacy(
        &self,
        client: &mut Client,
        now: SystemTime,
        pass: &mut Pass,
        trim_until: Instant,
    ) -> Result<(), postgres::Error> {
        let bound = client.query_opt(
            "SELECT substring(pg_get_constraintdef(oid) FROM '''([0-9a-f-]{36})''')::uuid
             FROM pg_constraint WHERE conname = 'events_legacy_bound'",
            &[],
        )?;
        // The bound is a constraint of the table: none, no table (or it was never made).
        let expired = |row: &postgres::Row| {
            let newest: EventId = row.get(0);
            let longest = self.longest();
            longest.is_some_and(|l| newest.millis() <= unix_ms(now - l))
        };
        let gone = match bound {
            None => true,
            Some(row) if expired(&row) => {
                detach_and_drop(client, "events", LEGACY_TABLE)?;
                pass.dropped.push(LEGACY_TABLE.to_string());
                true
            }
            Some(_) => false,
        };
        if gone {
            let all = EventId(uuid::Uuid::max());
            pass.trimmed += trim(client, DEDUP_OF_CLASS, all, Some(LEGACY_DAYS), trim_until)?;
        }
        Ok(())
    }
}

/// Deletes at most `$2` `event_dedup` rows of class `$3` whose events are older than `$1`.
const DEDUP_OF_CLASS: &str = "DELETE FROM event_dedup WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM event_dedup WHERE keep_days = $3 AND event_id < $1 LIMIT $2))";
/// Deletes at most `$2` attempts of class `$3` whose events are older than `$1`.
const ATTEMPTS_OF_CLASS: &str = "DELETE FROM delivery_attempts WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM delivery_attempts WHERE keep_days = $3 AND event_id < $1 LIMIT $2))";
/// Deletes at most `$2` attempts recorded without a class (before migration 6) whose events
/// are older than `$1`.
const OLD_ATTEMPTS: &str = "DELETE FROM delivery_attempts WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM delivery_attempts WHERE keep_days IS NULL AND event_id < $1 LIMIT $2))";
/// Deletes at most `$2` deliveries parked for a disabled endpoint whose events are older than
/// `$1`; other rows are claimed in time, and dropped then if their event is gone.
const PARKED_DELIVERIES: &str = "DELETE FROM deliveries WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM deliveries WHERE due_at = 'infinity' AND event_id < $1 LIMIT $2))";

/// Runs a trimming `statement` (rows older than `below`, in batches of `TRIM_BATCH`, of class
/// `days` when it names one) until a batch deletes fewer or `until` passes; rows deleted.
fn trim(
    client: &mut Client,
    statement: &str,
    below: EventId,
    days: Option<i16>,
    until: Instant,
) -> Result<u64, postgres::Error> {
    let mut deleted = 0;
    loop {
        let n = match &days {
            Some(days) => client.execute(statement, &[&below, &TRIM_BATCH, days])?,
            None => client.execute(statement, &[&below, &TRIM_BATCH])?,
        };
        deleted += n;
        if n < TRIM_BATCH as u64 || Instant::now() >= until {
            return Ok(deleted);
        }
    }
}

/// A partition of a class: its table and the range of creation times (ms) it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Partition {
    name: String,
    lo: u64,
    hi: u64,
}

/// `class`'s partitions, oldest first.
fn partitions(client: &mut Client, class: &str) -> Result<Vec<Partition>, postgres::Error> {
    let rows = client.query(
        "SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid)
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = to_regclass($1) AND NOT i.inhdetachpending",
        &[&class],
    )?;
    let mut found: Vec<Partition> = rows
        .iter()
        .filter_map(|r| {
            let (lo, hi) = range_bounds(&r.get::<_, String>(1))?;
            Some(Partition {
                name: r.get(0),
                lo,
                hi,
            })
        })
        .collect();
    found.sort_by_key(|p| p.lo);
    Ok(found)
}

/// `FOR VALUES FROM ('<uuid>') TO ('<uuid>')` → the milliseconds of both ids.
fn range_bounds(bound: &str) -> Option<(u64, u64)> {
    let quoted: Vec<&str> = bound.split('\'').skip(1).step_by(2).collect();
    let [lo, hi] = quoted[..] else { return None };
    let ms = |text: &str| {
        uuid::Uuid::parse_str(text)
            .ok()
            .map(|u| EventId(u).millis())
    };
    Some((ms(lo)?, ms(hi)?))
}

/// Every class `events` has, configured or not: an operator may have dropped a tier whose
/// events are still kept. Its days are in its list bound: `FOR VALUES IN ('7')`.
fn existing_classes(client: &mut Client, day: Duration) -> Result<Vec<Class>, postgres::Error> {
    let rows = client.query(
        "SELECT pg_get_expr(c.relpartbound, c.oid)
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'events'::regclass AND c.relkind = 'p'",
        &[],
    )?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let bound: String = r.get(0);
            let days = bound.split('\'').nth(1)?.parse::<u16>().ok()?;
            Some(Class::new(days, day))
        })
        .collect())
}

/// The class table, made and attached in one transaction if it is missing. Attaching takes a
/// lock that lets ingest and reads go on (`CREATE TABLE … PARTITION OF` would take one that
/// stops them).
fn ensure_class(client: &mut Client, class: &Class) -> Result<(), postgres::Error> {
    let table = class.table();
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])?
        .get(0);
    if exists {
        return Ok(());
    }
    let mut tx = client.transaction()?;
    tx.batch_execute(&format!(
        "CREATE TABLE {table} (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
             PARTITION BY RANGE (id);
         ALTER TABLE {table} ADD PRIMARY KEY (org_id, id);
         ALTER TABLE events ATTACH PARTITION {table} FOR VALUES IN ({});",
        class.days
    ))?;
    tx.commit()?;
    tracing::info!(class = %table, "retention class created");
    Ok(())
}

/// Partitions from a period before `now_ms` (a node whose clock runs behind) to
/// `PERIODS_AHEAD` after, each on the class's grid of periods from the epoch; a gap left by a
/// long stop stays a gap.
fn create_ahead(
    client: &mut Client,
    class: &Class,
    now_ms: u64,
    pass: &mut Pass,
) -> Result<(), postgres::Error> {
    let table = class.table();
    let period = class.period_ms();
    let existing = partitions(client, &table)?;
    let floor = |ms: u64| ms - ms % period;
    let mut lo = floor(now_ms.saturating_sub(period));
    if let Some(last) = existing.last() {
        lo = lo.max(last.hi);
    }
    let until = now_ms + period * u64::from(PERIODS_AHEAD);
    while lo < until {
        let hi = floor(lo) + period;
        let name = format!("{table}_{lo}");
        let mut tx = client.transaction()?;
        tx.batch_execute(&format!(
            "CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
             ALTER TABLE {table} ATTACH PARTITION {name}
                 FOR VALUES FROM ('{}') TO ('{}');",
            ms_id(lo),
            ms_id(hi)
        ))?;
        tx.commit()?;
        pass.created.push(name);
        lo = hi;
    }
    Ok(())
}

/// Detaches and drops `class`'s partitions whose every event is past its retention; the start
/// (ms) of the oldest one kept, if any is.
fn drop_expired(
    client: &mut Client,
    class: &Class,
    now_ms: u64,
    pass: &mut Pass,
) -> Result<Option<u64>, postgres::Error> {
    let table = class.table();
    let expired_below = class
        .keep
        .map_or(0, |keep| now_ms.saturating_sub(keep.as_millis() as u64));
    let mut oldest_kept = None;
    for p in partitions(client, &table)? {
        if p.hi <= expired_below {
            detach_and_drop(client, &table, &p.name)?;
            pass.dropped.push(p.name);
        } else {
            oldest_kept = oldest_kept.or(Some(p.lo));
        }
    }
    Ok(oldest_kept)
}

/// `DETACH … CONCURRENTLY` waits for readers of the partition without blocking anyone, then the
/// table, no longer part of `events`, is dropped with no lock on it.
fn detach_and_drop(client: &mut Client, parent: &str, table: &str) -> Result<(), postgres::Error> {
    client.batch_execute(&format!(
        "ALTER TABLE {parent} DETACH PARTITION {table} CONCURRENTLY"
    ))?;
    client.batch_execute(&format!("DROP TABLE {table}"))?;
    Ok(())
}

/// A detach interrupted (its node died between the two transactions of `CONCURRENTLY`) leaves
/// the partition pending; finishing it comes first.
fn finish_detaching(client: &mut Client) -> Result<(), postgres::Error> {
    let pending = client.query(
        "SELECT p.relname::text, c.relname::text
         FROM pg_inherits i
         JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
         WHERE i.inhdetachpending",
        &[],
    )?;
    for row in pending {
        let (parent, table): (String, String) = (row.get(0), row.get(1));
        client.batch_execute(&format!(
            "ALTER TABLE {parent} DETACH PARTITION {table} FINALIZE"
        ))?;
        client.batch_execute(&format!("DROP TABLE {table}"))?;
        tracing::info!(partition = %table, "interrupted detach finished");
    }
    Ok(())
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

fn ms_id(ms: u64) -> EventId {
    EventId::first_at(UNIX_EPOCH + Duration::from_millis(ms))
}

/// Runs passes every `upkeep.every()` on a thread of its own until `stop` finishes, on one
/// connection kept open (reopened when lost). A failed pass is logged and counted; the next
/// tries again.
pub fn spawn_upkeep(
    db: postgres::Config,
    upkeep: Upkeep,
    stop: Arc<Stop>,
    stats: Arc<UpkeepStats>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("upkeep".into())
        .spawn(move || {
            let mut link = Link::new("partition upkeep");
            let mut failures = LogEvery::new(Duration::from_secs(60));
            let mut next = Instant::now() + upkeep.every();
            while !stop.is_finishing() {
                let now = Instant::now();
                if now < next {
                    std::thread::sleep((next - now).min(Duration::from_millis(100)));
                    continue;
                }
                next = now + upkeep.every();
                let Some(client) = link.get(&db, now) else {
                    continue;
                };
                let started = Instant::now();
                match upkeep.run(client, SystemTime::now(), false) {
                    Ok(Some(pass)) => record(&stats, &pass, started.elapsed()),
                    Ok(None) => stats.skipped.add(1),
                    Err(e) => {
                        stats.failures.add(1);
                        if let Some(n) = failures.hit(now) {
                            tracing::warn!(error = %e, failures = n, "partition upkeep failed");
                        }
                    }
                }
            }
        })
        .expect("spawning the upkeep thread")
}

fn record(stats: &UpkeepStats, pass: &Pass, took: Duration) {
    stats.passes.add(1);
    stats.created.add(pass.created.len() as u64);
    stats.dropped.add(pass.dropped.len() as u64);
    stats.trimmed.add(pass.trimmed);
    if took > PASS_SLOW {
        tracing::warn!(
            took_ms = took.as_millis() as u64,
            "a partition upkeep pass was slow"
        );
    }
    tracing::debug!(created = ?pass.created, dropped = ?pass.dropped, "partition upkeep");
}

/// The pass a node runs before it serves: the partitions it writes to exist when it starts.
pub fn upkeep_at_start(db: &postgres::Config, upkeep: &Upkeep) -> anyhow::Result<Pass> {
    use anyhow::Context;
    let mut client = connect(db).context("connecting to PostgreSQL for partition upkeep")?;
    let pass = upkeep
        .run(&mut client, SystemTime::now(), true)
        .context("partition upkeep at start")?;
    Ok(pass.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn a_class_keeps_its_days_in_partitions_a_quarter_as_long() {
        let free = Class::new(1, DAY);
        assert_eq!(free.keep, Some(DAY));
        assert_eq!(free.period, Duration::from_secs(6 * 3600));
        let forever = Class::new(0, DAY);
        assert_eq!((forever.keep, forever.period), (None, DAY * 30));
        let now = UNIX_EPOCH + Duration::from_secs(1_764_460_800);
        assert_eq!(free.kept_since(now), Some(EventId::first_at(now - DAY)));
        assert_eq!(forever.kept_since(now), None);
    }

    #[test]
    fn passes_run_a_quarter_period_apart_within_bounds() {
        assert_eq!(Upkeep::new(&[1, 90], DAY).every(), EVERY_MAX);
        let soak = Upkeep::new(&[1, 7], Duration::from_secs(60));
        assert_eq!(soak.every(), Duration::from_millis(3750));
        assert_eq!(Upkeep::new(&[1], Duration::from_secs(1)).every(), EVERY_MIN);
        assert_eq!(Upkeep::new(&[1, 30], DAY).longest(), Some(DAY * 30));
        assert_eq!(Upkeep::new(&[1, 0], DAY).longest(), None);
    }

    #[test]
    fn range_bounds_read_as_postgresql_prints_them() {
        let (lo, hi) = (ms_id(1_764_460_800_000), ms_id(1_764_482_400_000));
        let text = format!("FOR VALUES FROM ('{lo}') TO ('{hi}')");
        assert_eq!(
            range_bounds(&text),
            Some((1_764_460_800_000, 1_764_482_400_000))
        );
        assert_eq!(range_bounds("FOR VALUES IN ('7')"), None);
        assert_eq!(
            EventId::first_at(UNIX_EPOCH + Duration::from_millis(1234)).millis(),
            1234
        );
    }
}
