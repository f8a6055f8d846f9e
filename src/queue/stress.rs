//! The seam under contention, without PostgreSQL: cores on real monoio runtimes push events and
//! await their outcomes while persister threads drain the rings, sleep on the doorbell and
//! deliver completions to the mailboxes, as the server's do.
//!
//! Claims: no lost wake-up (persisters park far longer than any event may wait, so a missed
//! ring shows as a slow event), no lost or doubled outcome (every accepted event is answered
//! once, every waiter slot is freed), and bounded bytes (no ring ever holds more than its
//! byte bound; refused pushes are retried, not lost).

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

const CORES: usize = 2;
const PERSISTERS: usize = 2;
/// Helpers join at 3 queued events (each entry here is one), under the 8 the rings can hold:
/// both the lead alone and the lead with a helper are exercised.
const HELP_AT: usize = 3;
const TASKS_PER_CORE: usize = 8;
const EVENTS_PER_TASK: usize = 2_500;
/// Fewer slots and bytes than the tasks of a core keep in flight, so both bounds refuse pushes.
const RING_SLOTS: usize = 4;
const RING_BYTES_MAX: usize = 12 * 1024;
/// A persister with nothing to do parks this long: far past `SLOWEST_ALLOWED`, so an event a
/// persister slept through fails the test at once. (Events here take milliseconds.)
const PARK: Duration = Duration::from_secs(5);
const SLOWEST_ALLOWED: Duration = Duration::from_secs(2);

fn event(core: usize, slot: Waiter, n: usize) -> Event {
    Event {
        waiter: Some(slot),
        ..Event::sample(1 + (n * 7919 + core) % 4096, None)
    }
}

#[derive(Default)]
struct Tally {
    answered: AtomicUsize,
    refused_pushes: AtomicUsize,
    slowest_us: AtomicU64,
    most_bytes: AtomicUsize,
}

fn persister(i: usize, hub: Arc<Hub>, done: Arc<AtomicBool>, tally: Arc<Tally>) {
    hub.doorbell.register(i);
    // A helper takes work only for a backlog, as the server's persisters do.
    let wanted = || done.load(Ordering::Acquire) || hub.doorbell.wanted(i, || hub.queued_events());
    loop {
        let mut per_core: Vec<Vec<Completion>> = (0..CORES).map(|_| Vec::new()).collect();
        for ring in hub.rings.iter().filter(|_| wanted()) {
            tally
                .most_bytes
                .fetch_max(ring.queued_bytes(), Ordering::Relaxed);
            while let Some(entry) = ring.pop() {
                for e in entry.into_events() {
                    let w = e.waiter.expect("every stress event waits");
                    per_core[w.core as usize].push(Completion {
                        slot: w.slot,
                        outcome: Outcome::Committed,
                    });
                }
            }
        }
        let mut any = false;
        for (core, completions) in per_core.into_iter().enumerate() {
            if !completions.is_empty() {
                any = true;
                hub.mailboxes[core].deliver(completions);
            }
        }
        if any {
            continue;
        }
        if done.load(Ordering::Acquire) && hub.is_empty() {
            return;
        }
        hub.doorbell.will_sleep(i);
        if !wanted() || hub.is_empty() {
            std::thread::park_timeout(PARK);
        }
        hub.doorbell.awake(i);
    }
}

fn core(id: usize, hub: Arc<Hub>, tally: Arc<Tally>) {
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .unwrap();
    rt.block_on(async move {
        let waiters = Rc::new(Waiters::new(id, Duration::from_secs(60)));
        let mail = {
            let (hub, waiters) = (hub.clone(), waiters.clone());
            monoio::spawn(async move { deliver_mail(&hub.mailboxes[id], &waiters).await })
        };
        let tasks: Vec<_> = (0..TASKS_PER_CORE)
            .map(|t| {
                let (hub, waiters, tally) = (hub.clone(), waiters.clone(), tally.clone());
                monoio::spawn(async move {
                    for n in 0..EVENTS_PER_TASK {
                        let (waiter, _) = waiters.register(Instant::now());
                        let mut entry = Entry::One(event(id, waiter, n * TASKS_PER_CORE + t));
                        let pushed = Instant::now();
                        // A full ring refuses at once and gives the entry back intact.
                        while let Err(RingFull(refused)) = hub.push(id, entry) {
                            entry = refused;
                            tally.refused_pushes.fetch_add(1, Ordering::Relaxed);
                            monoio::time::sleep(Duration::from_micros(200)).await;
                        }
                        assert!(hub.rings[id].queued_bytes() <= RING_BYTES_MAX);
                        let outcome = waiters.outcomes(&[waiter.slot]).await;
                        assert_eq!(outcome, [Outcome::Committed]);
                        tally.answered.fetch_add(1, Ordering::Relaxed);
                        let took = pushed.elapsed();
                        assert!(
                            took < SLOWEST_ALLOWED,
                            "an event waited {took:?}: a persister slept through a push"
                        );
                        tally
                            .slowest_us
                            .fetch_max(took.as_micros() as u64, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        assert!(waiters.is_empty(), "every waiter slot is freed");
        drop(mail);
    });
}

#[test]
fn cores_and_persisters_under_contention_lose_no_wake_up_outcome_or_byte_bound() {
    let hub = Arc::new(Hub::new(
        CORES,
        RING_SLOTS,
        RING_BYTES_MAX,
        PERSISTERS,
        HELP_AT,
    ));
    let tally = Arc::new(Tally::default());
    let done = Arc::new(AtomicBool::new(false));
    let persisters: Vec<_> = (0..PERSISTERS)
        .map(|i| {
            let (hub, done, tally) = (hub.clone(), done.clone(), tally.clone());
            std::thread::spawn(move || persister(i, hub, done, tally))
        })
        .collect();
    let started = Instant::now();
    let cores: Vec<_> = (0..CORES)
        .map(|id| {
            let (hub, tally) = (hub.clone(), tally.clone());
            std::thread::spawn(move || core(id, hub, tally))
        })
        .collect();
    for c in cores {
        c.join().expect("a core's assertions held");
    }
    done.store(true, Ordering::Release);
    hub.doorbell.ring_all();
    for p in persisters {
        p.join().unwrap();
    }
    let expected = CORES * TASKS_PER_CORE * EVENTS_PER_TASK;
    assert_eq!(tally.answered.load(Ordering::Relaxed), expected);
    assert!(hub.is_empty());
    assert!(hub.rings.iter().all(|r| r.queued_bytes() == 0));
    assert_eq!(
        hub.queued_events(),
        0,
        "every refused or taken entry gave its count back"
    );
    assert!(tally.most_bytes.load(Ordering::Relaxed) <= RING_BYTES_MAX);
    let slowest = Duration::from_micros(tally.slowest_us.load(Ordering::Relaxed));
    // The byte bound was exercised, not just respected.
    assert!(tally.refused_pushes.load(Ordering::Relaxed) > 0);
    eprintln!(
        "{expected} events in {:?}, {} pushes refused, slowest {slowest:?}",
        started.elapsed(),
        tally.refused_pushes.load(Ordering::Relaxed)
    );
}
