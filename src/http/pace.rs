//! http::pace: while a node serves its tenants, answers that serve no one wait their turn.
//!
//! An answer serves someone when the handler says so (`Response::served`): a tenant's key or
//! the admin token was verified and the request was not refused. Every other answer (a health
//! probe, a signup, an unknown key, a malformed or refused request, a batch that stored
//! nothing) costs a core about what a tenant's request costs, ~30-40 µs from accept to close
//! for a small one, and a client flooding them from a few connections, each waiting for its
//! answer and trying again, would take as much of the node's CPU as it can reach: every
//! tenant's requests would queue behind its own on the cores, the persisters and PostgreSQL.
//! So, while a served answer was given anywhere on the node within `BUSY_WINDOW`, each core
//! gives the others at most its share of the node's rate (`pace_answers_per_s`), after a
//! burst of `BURST`; an answer over the pace is held back, its connection waiting (no CPU, no
//! read), at most `WAIT_MAX`. An answer counts one turn per `TURN_BYTES` its request made the
//! core read (at least one), and a lingering close after it one more turn per `TURN_BYTES` it
//! discards (at least one): a large refused batch, or a client that keeps sending after its
//! refusal, costs the core more than a probe does. Such a client is then slowed to the pace, whatever
//! it sends; its open connections stay bounded by `connections_max`, and so, through
//! `WAIT_MAX`, is its rate. A node that serves no one answers as fast as it can: a
//! health-probe benchmark measures the server, not the pace.
//!
//! The pace is GCRA (a virtual-scheduling token bucket): each core keeps the theoretical time
//! of its next answer, so a held-back answer needs one timer and no queue.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A node is busy for this long after it gave an answer that served someone: long enough that
/// its clients' pauses, and a stall of its storage, do not lift the pace.
pub const BUSY_WINDOW: Duration = Duration::from_secs(5);
/// Answers that serve no one a core gives at once before the pace applies.
pub const BURST: u32 = 32;
/// The longest an answer is held back: what a health probe may wait under a flood.
pub const WAIT_MAX: Duration = Duration::from_millis(500);
/// Bytes read that count as one turn: parsing 4 KiB of JSON costs a core about what a whole
/// small request does (~40 µs; a refused 1,000-event batch of ~40 KB took ~425 µs).
pub const TURN_BYTES: usize = 4096;
/// The busy mark is written at most this often, so served answers do not all write one shared
/// cache line.
const MARK_EVERY_MS: u64 = 10;

/// The node's side: its rate, when it last served someone, what it held back.
#[derive(Debug)]
pub struct Pace {
    /// Node-wide answers per second that serve no one; 0 turns the pace off.
    per_s: u32,
    /// Time between two answers at one core's share of the rate.
    interval: Duration,
    epoch: Instant,
    /// 1 + the milliseconds after `epoch` of the latest served answer (to `MARK_EVERY_MS`);
    /// 0: none yet.
    served_at: AtomicU64,
    held_back: AtomicU64,
}

impl Pace {
    /// The pace of a node of `cores` cores.
    pub fn new(per_s: u32, cores: usize) -> Arc<Pace> {
        let interval = match per_s {
            0 => Duration::ZERO,
            per_s => Duration::from_secs(cores.max(1) as u64) / per_s,
        };
        Arc::new(Pace {
            per_s,
            interval,
            epoch: Instant::now(),
            served_at: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        })
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Notes that an answer served someone at `now`.
    pub fn served(&self, now: Instant) {
        let (at, last) = (self.ms(now) + 1, self.served_at.load(Ordering::Relaxed));
        if last == 0 || at >= last + MARK_EVERY_MS {
            self.served_at.store(at, Ordering::Relaxed);
        }
    }

    /// Whether answers that serve no one are paced at `now`.
    pub fn busy(&self, now: Instant) -> bool {
        let last = self.served_at.load(Ordering::Relaxed);
        self.per_s > 0 && last != 0 && self.ms(now) + 1 < last + BUSY_WINDOW.as_millis() as u64
    }

    pub fn per_s(&self) -> u32 {
        self.per_s
    }

    /// Answers held back so far.
    pub fn held_back(&self) -> u64 {
        self.held_back.load(Ordering::Relaxed)
    }
}

/// One core's side: its share of the rate, and when its next answer that serves no one is due.
#[derive(Debug)]
pub struct CorePace {
    node: Arc<Pace>,
    /// How far `due` may run ahead of now before answers are held back.
    burst: Duration,
    /// The theoretical time of this core's next answer.
    due: Cell<Instant>,
}

impl CorePace {
    pub fn new(node: Arc<Pace>) -> CorePace {
        CorePace {
            burst: node.interval * BURST,
            node,
            due: Cell::new(Instant::now()),
        }
    }

    pub fn node(&self) -> &Pace {
        &self.node
    }

    /// How long an answer that serves no one, given at `now` to a request that made the core
    /// read `bytes`, must wait (zero: at once); books its turns.
    pub fn turn(&self, now: Instant, bytes: usize) -> Duration {
        if !self.node.busy(now) {
            return Duration::ZERO;
        }
        let due = self.due.get().max(now);
        let wait = due
            .saturating_duration_since(now + self.burst)
            .min(WAIT_MAX);
        self.book(now, due, bytes);
        if !wait.is_zero() {
            self.node.held_back.fetch_add(1, Ordering::Relaxed);
        }
        wait
    }

    /// Books the turns (at least one) that `bytes` read after an answer cost (a lingering
    /// close): the next answers wait for them.
    pub fn charge(&self, bytes: usize) {
        let now = Instant::now();
        if self.node.busy(now) {
            self.book(now, self.due.get().max(now), bytes);
        }
    }

    /// Moves the next answer's time past the turns `bytes` count, from `due`; no further ahead
    /// than the longest wait, so a flood that ends leaves no debt.
    fn book(&self, now: Instant, due: Instant, bytes: usize) {
        let turns = (bytes / TURN_BYTES).max(1) as u32;
        let next = due + self.node.interval.saturating_mul(turns);
        self.due.set(next.min(now + self.burst + WAIT_MAX));
    }

    /// Waits for the turn of an answer to a request that made the core read `bytes` (see
    /// `turn`).
    pub async fn wait_turn(&self, bytes: usize) {
        let wait = self.turn(Instant::now(), bytes);
        if !wait.is_zero() {
            monoio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy_core(per_s: u32, cores: usize, now: Instant) -> CorePace {
        let node = Pace::new(per_s, cores);
        node.served(now);
        let core = CorePace::new(node);
        core.due.set(now);
        core
    }

    #[test]
    fn an_idle_node_answers_at_once() {
        let core = CorePace::new(Pace::new(100, 1));
        let now = Instant::now();
        assert!((0..1000).all(|_| core.turn(now, 0).is_zero()));
        assert_eq!(core.node().held_back(), 0);
    }

    #[test]
    fn a_busy_core_gives_its_burst_then_its_share_of_the_rate() {
        let now = Instant::now();
        // 200/s over 2 cores: 100/s here, one every 10 ms.
        let core = busy_core(200, 2, now);
        for _ in 0..=BURST {
            assert_eq!(core.turn(now, 0), Duration::ZERO);
        }
        assert_eq!(core.turn(now, 0), Duration::from_millis(10));
        assert_eq!(core.turn(now, 0), Duration::from_millis(20));
        assert_eq!(core.node().held_back(), 2);
        // Time passing gives turns back at the rate.
        let later = now + Duration::from_millis(100);
        assert_eq!(core.turn(later, 0), Duration::ZERO);
    }

    #[test]
    fn a_request_counts_a_turn_per_four_kib_it_made_the_core_read() {
        let now = Instant::now();
        let core = busy_core(100, 1, now);
        // The burst (32 turns of 10 ms) spent by one 128 KiB request.
        assert_eq!(core.turn(now, 32 * TURN_BYTES), Duration::ZERO);
        assert_eq!(core.turn(now, 100), Duration::ZERO);
        assert_eq!(core.turn(now, 0), Duration::from_millis(10));
        // What a lingering close discarded is paid by the next answer.
        core.charge(10 * TURN_BYTES);
        assert_eq!(core.turn(now, 0), Duration::from_millis(20 + 100));
    }

    #[test]
    fn no_answer_waits_longer_than_the_most_and_a_flood_leaves_no_debt() {
        let now = Instant::now();
        let core = busy_core(10, 1, now);
        let waits: Vec<_> = (0..10_000).map(|_| core.turn(now, 0)).collect();
        assert_eq!(waits.iter().max(), Some(&WAIT_MAX));
        // Once the longest wait has passed, the next answer waits no more than one interval.
        let after = now + WAIT_MAX;
        assert!(core.turn(after, 0) <= Duration::from_millis(100));
    }

    #[test]
    fn the_pace_ends_a_while_after_the_last_served_answer_and_zero_turns_it_off() {
        let now = Instant::now();
        let core = busy_core(1, 1, now);
        assert!(core.node().busy(now));
        assert!(core
            .node()
            .busy(now + BUSY_WINDOW - Duration::from_millis(20)));
        assert!(!core
            .node()
            .busy(now + BUSY_WINDOW + Duration::from_millis(20)));
        let off = busy_core(0, 1, now);
        assert!(!off.node().busy(now));
        assert!((0..100).all(|_| off.turn(now, 0).is_zero()));
    }
}
