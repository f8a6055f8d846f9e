//! db::deliveries: every statement on `deliveries` (the queue of events still to push) and
//! `delivery_attempts` (what each push did), and the endpoints delivery reads from
//! `organizations`. Rows are leased: `lease_until` is both the lease and its fence, so an
//! outcome recorded late by a node whose lease ran out touches nothing another node took. A
//! leased row is due when its lease runs out (`due_at` = `lease_until`): claims, which scan
//! due rows oldest first, never walk past the rows nodes are working on.

use std::time::{Duration, SystemTime};

use postgres::Client;

use crate::ids::{EventId, OrgId};

/// The channel on which every change to an organization's webhook is announced (the payload
/// is its id): every node re-reads that endpoint (`hooks::spawn_listener`).
pub const WEBHOOKS_CHANNEL: &str = "triggers_webhooks";

/// Tells every node, once `tx` commits, that `org`'s webhook changed.
pub fn announce(tx: &mut postgres::Transaction<'_>, org: OrgId) -> Result<(), postgres::Error> {
    super::listen::notify(tx, WEBHOOKS_CHANNEL, &org.to_string())
}

/// Secrets rotated out that still sign, at most: past it the oldest stops signing early.
pub const RETIRED_SECRETS_MAX: i64 = 8;

/// An organization's enabled webhook, as delivery uses it.
pub struct EndpointRow {
    pub org: OrgId,
    pub url: String,
    pub secret: String,
    /// Secrets rotated out, each signing until the time given, newest first.
    pub retired: Vec<(String, SystemTime)>,
    /// Resting after failing too often: no attempt before then.
    pub rest_until: Option<SystemTime>,
    /// The webhook's generation: deliveries of another are not made.
    pub generation: i64,
}

/// The columns an `EndpointRow` is read from, and the condition of an enabled webhook.
const ENDPOINT_SELECT: &str = "SELECT org_id, webhook_url, webhook_secret,
            webhook_retired_secrets, webhook_retired_until, webhook_rest_until,
            webhook_generation
     FROM organizations
     WHERE webhook_url IS NOT NULL AND webhook_secret IS NOT NULL AND webhook_enabled";

fn endpoint_row(r: &postgres::Row) -> EndpointRow {
    let (secrets, until): (Vec<String>, Vec<SystemTime>) = (r.get(3), r.get(4));
    EndpointRow {
        org: r.get(0),
        url: r.get(1),
        secret: r.get(2),
        retired: secrets.into_iter().zip(until).collect(),
        rest_until: r.get(5),
        generation: r.get(6),
    }
}

/// Every organization with an enabled webhook.
pub fn endpoints(client: &mut Client) -> Result<Vec<EndpointRow>, postgres::Error> {
    Ok(client
        .query(ENDPOINT_SELECT, &[])?
        .iter()
        .map(endpoint_row)
        .collect())
}

/// The enabled webhook of one organization, if it has one.
pub fn endpoint(client: &mut Client, org: OrgId) -> Result<Option<EndpointRow>, postgres::Error> {
    let row = client.query_opt(&format!("{ENDPOINT_SELECT} AND org_id = $1"), &[&org])?;
    Ok(row.as_ref().map(endpoint_row))
}

/// Rests `org`'s endpoint until `until` (`None`: it recovered), for every node.
pub fn rest(
    client: &mut Client,
    org: OrgId,
    until: Option<SystemTime>,
) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    tx.execute(
        "UPDATE organizations SET webhook_rest_until = $2 WHERE org_id = $1",
        &[&org, &until],
    )?;
    announce(&mut tx, org)?;
    tx.commit()
}

/// Replaces `org`'s signing secret with `secret`; the current one keeps signing until
/// `previous_until`, beside those rotated out before whose grace is not over (at most
/// `RETIRED_SECRETS_MAX`, the newest). `false` when no webhook is configured.
pub fn rotate_secret(
    client: &mut Client,
    org: OrgId,
    secret: &str,
    previous_until: SystemTime,
) -> Result<bool, postgres::Error> {
    let mut tx = client.transaction()?;
    let n = tx.execute(
        "UPDATE organizations o
         SET webhook_retired_secrets = coalesce(kept.secrets, '{}'),
             webhook_retired_until = coalesce(kept.until, '{}'),
             webhook_previous_secret = o.webhook_secret,
             webhook_previous_secret_until = $3,
             webhook_secret = $2
         FROM (SELECT array_agg(s ORDER BY u DESC) AS secrets, array_agg(u ORDER BY u DESC) AS until
               FROM (SELECT r.s, r.u
                     FROM organizations,
                          unnest(webhook_retired_secrets || webhook_secret,
                                 webhook_retired_until || $3::timestamptz) AS r(s, u)
                     WHERE org_id = $1 AND r.u > now()
                     ORDER BY r.u DESC LIMIT $4) AS live) AS kept
         WHERE o.org_id = $1 AND o.webhook_url IS NOT NULL",
        &[&org, &secret, &previous_until, &RETIRED_SECRETS_MAX],
    )?;
    announce(&mut tx, org)?;
    tx.commit()?;
    Ok(n == 1)
}

/// Queues `org`'s event `id` for delivery again, at once, as a new round of attempts (a
/// `failed` event is `pending` again). An attempt in flight is left to finish. `None` when
/// `org` has no such event; else whether it was queued (not: an attempt is in flight).
pub fn redeliver(
    client: &mut Client,
    org: OrgId,
    id: EventId,
) -> Result<Option<bool>, postgres::Error> {
    let q = queue_again(client, "org_id = $1 AND id = $2", &[&org, &id], 1)?;
    Ok((q.picked == 1).then_some(q.queued == 1))
}

/// Where a replay goes on: after this event (creation time, then id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayCursor {
    pub created_at: SystemTime,
    pub id: EventId,
}

/// What one replay did.
#[derive(Debug, PartialEq, Eq)]
pub struct Replayed {
    /// Events queued again.
    pub queued: u64,
    /// Events that matched but had an attempt in flight: left to finish, not queued.
    pub in_flight: u64,
    /// Where to go on, when `max` stopped the replay early.
    pub next: Option<ReplayCursor>,
}

/// Queues again `org`'s events created in `[since, until)` (with status `status`, when given;
/// after `after`, when given), oldest first, at most `max`.
pub fn replay(
    client: &mut Client,
    org: OrgId,
    since: SystemTime,
    until: SystemTime,
    status: Option<&str>,
    after: Option<ReplayCursor>,
    max: i64,
) -> Result<Replayed, postgres::Error> {
    // Ids are UUIDv7: their first 48 bits are the creation time in milliseconds, so the
    // primary key finds the range; created_at then draws its exact edges.
    let filter = "org_id = $1 AND id >= $2 AND id < $3 AND created_at >= $4 AND created_at < $5
                  AND ($6::text IS NULL OR status = $6)
                  AND ($7::timestamptz IS NULL OR (created_at, id) > ($7, $8))";
    let (lo, hi) = (
        EventId::first_at(since),
        EventId::first_at(until + Duration::from_millis(1)),
    );
    let (after_t, after_id) = (after.map(|a| a.created_at), after.map(|a| a.id));
    let params: [&(dyn postgres::types::ToSql + Sync); 8] =
        [&org, &lo, &hi, &since, &until, &status, &after_t, &after_id];
    let q = queue_again(client, filter, &params, max)?;
    Ok(Replayed {
        queued: q.queued,
        in_flight: q.picked - q.queued,
        next: q.last.filter(|_| q.picked as i64 >= max),
    })
}

/// What `queue_again` did: events picked, those of them queued, and the last one picked.
struct Queued {
    picked: u64,
    queued: u64,
    last: Option<ReplayCursor>,
}

/// In one statement: a delivery for each event matching `filter` (oldest first, at most `max`)
/// inserted, or made due again as a new round; those of them that had `failed` made `pending`.
/// A row leased to an attempt in flight is left as it is.
fn queue_again(
    client: &mut Client,
    filter: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
    max: i64,
) -> Result<Queued, postgres::Error> {
    let row = client.query_one(
        &format!(
            "WITH picked AS (
                 SELECT org_id, id, created_at FROM events WHERE {filter}
                 ORDER BY created_at, id LIMIT {max}),
             queued AS (
                 INSERT INTO deliveries (org_id, event_id, attempts, due_at, generation)
                 SELECT p.org_id, p.id, 0, now(), o.webhook_generation
                 FROM picked p JOIN organizations o ON o.org_id = p.org_id
                 ON CONFLICT (org_id, event_id) DO UPDATE
                 SET attempts = 0, due_at = now(), generation = EXCLUDED.generation
                 WHERE deliveries.lease_until IS NULL OR deliveries.lease_until < now()
                 RETURNING event_id),
             revived AS (
                 UPDATE events e SET status = 'pending'
                 FROM picked p
                 WHERE e.org_id = p.org_id AND e.id = p.id AND e.status = 'failed'),
             last AS (SELECT created_at, id FROM picked ORDER BY created_at DESC, id DESC LIMIT 1)
             SELECT (SELECT count(*) FROM picked), (SELECT count(*) FROM queued),
                    (SELECT created_at FROM last), (SELECT id FROM last)"
        ),
        params,
    )?;
    let last = match (row.get(2), row.get(3)) {
        (Some(created_at), Some(id)) => Some(ReplayCursor { created_at, id }),
        _ => None,
    };
    Ok(Queued {
        picked: row.get::<_, i64>(0) as u64,
        queued: row.get::<_, i64>(1) as u64,
        last,
    })
}

/// A delivery a claim took, with its event.
pub struct Claimed {
    pub org: OrgId,
    pub id: EventId,
    pub attempts: i16,
    pub lease_until: SystemTime,
    pub kind: String,
    pub payload: String,
    pub dedup_id: Option<String>,
    pub created_at: SystemTime,
    pub keep_days: i16,
    pub generation: i64,
}

/// Takes up to `limit` due deliveries of enabled endpoints whose payloads add up to at most
/// `bytes` (the first is taken whatever its size), oldest due first, leasing them for `lease`.
/// Organizations in `skip` (this node holds enough of theirs) are left for later; rows another
/// node is claiming are skipped, not waited for; deliveries whose event no longer exists are
/// dropped.
pub fn claim(
    client: &mut Client,
    limit: i64,
    bytes: i64,
    lease: Duration,
    skip: &[OrgId],
) -> Result<Vec<Claimed>, postgres::Error> {
    let lease_s = lease.as_secs_f64();
    let mut tx = client.transaction()?;
    let rows = tx.query(
        "WITH due AS (
             SELECT d.org_id, d.event_id, d.due_at, d.generation FROM deliveries d
             JOIN organizations o ON o.org_id = d.org_id
             WHERE d.due_at <= now()
               AND (d.lease_until IS NULL OR d.lease_until < now())
               AND o.webhook_enabled AND o.webhook_url IS NOT NULL
               AND d.generation = o.webhook_generation
               AND (o.webhook_rest_until IS NULL OR o.webhook_rest_until <= now())
               AND d.org_id <> ALL($4::uuid[])
             ORDER BY d.due_at
             LIMIT $1
             FOR UPDATE OF d SKIP LOCKED),
         read AS (
             SELECT due.org_id, due.event_id, due.due_at, due.generation,
                    e.type, e.payload::text AS payload, e.dedup_id, e.created_at,
                    e.keep_days
             FROM due LEFT JOIN events e ON e.org_id = due.org_id AND e.id = due.event_id),
         sized AS (
             SELECT read.*,
                    sum(coalesce(octet_length(payload), 0))
                        OVER (ORDER BY due_at, event_id) AS running,
                    row_number() OVER (ORDER BY due_at, event_id) AS n
             FROM read),
         taken AS (SELECT * FROM sized WHERE n = 1 OR running <= $2),
         lease AS (
             SELECT date_trunc('milliseconds', now() + make_interval(secs => $3)) AS until),
         leased AS (
             UPDATE deliveries d
             SET lease_until = lease.until, due_at = lease.until
             FROM taken, lease
             WHERE d.org_id = taken.org_id AND d.event_id = taken.event_id
             RETURNING d.org_id, d.event_id, d.attempts, d.lease_until)
         SELECT l.org_id, l.event_id, l.attempts, l.lease_until,
                t.type, t.payload, t.dedup_id, t.created_at, t.keep_days, t.generation
         FROM leased l JOIN taken t ON t.org_id = l.org_id AND t.event_id = l.event_id",
        &[&limit, &bytes, &lease_s, &skip],
    )?;
    let mut claimed = Vec::with_capacity(rows.len());
    let mut orphans: (Vec<OrgId>, Vec<EventId>) = (Vec::new(), Vec::new());
    for r in rows {
        let kind: Option<String> = r.get(4);
        match kind {
            Some(kind) => claimed.push(Claimed {
                org: r.get(0),
                id: r.get(1),
                attempts: r.get(2),
                lease_until: r.get(3),
                kind,
                payload: r.get(5),
                dedup_id: r.get(6),
                created_at: r.get(7),
                keep_days: r.get(8),
                generation: r.get(9),
            }),
            None => {
                orphans.0.push(r.get(0));
                orphans.1.push(r.get(1));
            }
        }
    }
    if !orphans.0.is_empty() {
        tx.execute(
            "DELETE FROM deliveries d USING unnest($1::uuid[], $2::uuid[]) AS k(org_id, event_id)
             WHERE d.org_id = k.org_id AND d.event_id = k.event_id",
            &[&orphans.0, &orphans.1],
        )?;
    }
    tx.commit()?;
    Ok(claimed)
}

/// What became of one leased delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Delivered: the row goes, the event is `delivered`.
    Delivered,
    /// Try again at this time.
    Retry(SystemTime),
    /// The last attempt failed: the row goes, the event is `failed`.
    Failed,
    /// The lease is given back, the row due at once (or at `infinity` while its endpoint is
    /// disabled: `disable` sets that on every row of the organization, leased or not).
    Release,
}

/// Longest text an attempt keeps of what came from outside (a receiver's answer, an error's
/// message), in bytes.
pub const ATTEMPT_TEXT_BYTES_MAX: usize = 1024;

/// `raw`, from outside, as a `text` column can hold it: valid UTF-8 (what is not becomes
/// U+FFFD), no NUL (PostgreSQL's text refuses it, and one such row would fail the batch of
/// outcomes it is recorded with: it becomes U+FFFD too), at most `ATTEMPT_TEXT_BYTES_MAX`
/// bytes, cut at a character boundary.
pub fn storable_text(raw: &[u8]) -> String {
    let raw = &raw[..raw.len().min(ATTEMPT_TEXT_BYTES_MAX)];
    let mut text = String::from_utf8_lossy(raw).replace('\0', "\u{fffd}");
    if text.len() > ATTEMPT_TEXT_BYTES_MAX {
        let mut end = ATTEMPT_TEXT_BYTES_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// One attempt, as recorded and as `GET /api/events/{id}/attempts` shows it. Its texts are
/// made with `storable_text`.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub attempt: i16,
    pub attempted_at: SystemTime,
    pub status_code: Option<i16>,
    pub error: Option<String>,
    pub latency_us: i32,
    pub response: Option<String>,
}

/// One leased delivery's outcome: what to do with the row, and the attempt made, if any.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub org: OrgId,
    pub id: EventId,
    pub lease_until: SystemTime,
    /// The event's retention class, which its attempt is recorded in.
    pub keep_days: i16,
    pub attempts: i16,
    pub next: Next,
    pub attempt: Option<Attempt>,
}

/// The error class of an attempt whose answer PostgreSQL refused to store: it is kept without
/// its texts.
pub const UNSTORABLE: &str = "unstorable_answer";

impl Outcome {
    /// This outcome with its attempt's texts dropped (error `UNSTORABLE`): what is recorded when
    /// PostgreSQL refuses the whole of it.
    pub fn without_texts(&self) -> Outcome {
        let mut o = self.clone();
        if let Some(a) = &mut o.attempt {
            a.error = Some(UNSTORABLE.to_string());
            a.response = None;
        }
        o
    }

    /// This outcome without its attempt: the row still moves on.
    pub fn without_attempt(&self) -> Outcome {
        Outcome {
            attempt: None,
            ..self.clone()
        }
    }
}

/// The statements that record outcomes, prepared once per connection: the store records
/// hundreds of batches a second, and each would otherwise be parsed again.
///
/// Each execution is planned anew (`prepare` sets the connection's `plan_cache_mode`):
/// `deliveries` swings from empty to a backlog of millions and back, and a cached generic
/// plan keeps the shape the table had when it was made. One made while the table was nearly
/// empty joined every batch of outcomes to a sequential scan of the whole table: 61 µs per
/// outcome with a 150,000-row backlog, 7 µs planned anew (results/2026-11-30-delivery-tail).
/// Planning a batch of hundreds of rows costs well under a microsecond per row.
pub struct Recorder {
    attempts: postgres::Statement,
    gone: postgres::Statement,
    mark: postgres::Statement,
    stay: postgres::Statement,
}

impl Recorder {
    pub fn prepare(client: &mut Client) -> Result<Recorder, postgres::Error> {
        client.batch_execute("SET plan_cache_mode = force_custom_plan")?;
        Ok(Recorder {
            attempts: client.prepare(
                "INSERT INTO delivery_attempts
                     (org_id, event_id, attempt, attempted_at, status_code, error, latency_us,
                      response, keep_days)
                 SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int2[], $4::timestamptz[],
                                      $5::int2[], $6::text[], $7::int4[], $8::text[],
                                      $9::int2[])
                 ON CONFLICT DO NOTHING",
            )?,
            gone: client.prepare(
                "DELETE FROM deliveries d
                 USING unnest($1::uuid[], $2::uuid[], $3::timestamptz[])
                       AS k(org_id, event_id, lease)
                 WHERE d.org_id = k.org_id AND d.event_id = k.event_id
                   AND d.lease_until = k.lease",
            )?,
            // A delivered event is `delivered` whatever it was; a failed one only if still
            // pending (a consumer may have acknowledged it meanwhile).
            mark: client.prepare(
                "UPDATE events e
                 SET status = CASE WHEN k.delivered THEN 'delivered' ELSE 'failed' END,
                     delivered_at = CASE WHEN k.delivered THEN coalesce(e.delivered_at, $4) END
                 FROM unnest($1::uuid[], $2::uuid[], $3::bool[]) AS k(org_id, id, delivered)
                 WHERE e.org_id = k.org_id AND e.id = k.id
                   AND (k.delivered OR e.status = 'pending')
                   AND e.status <> 'delivered'",
            )?,
            stay: client.prepare(
                "UPDATE deliveries d
                 SET attempts = k.attempts,
                     due_at = coalesce(k.due, CASE WHEN d.due_at = 'infinity'
                                                   THEN d.due_at ELSE now() END),
                     lease_until = NULL
                 FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[], $4::int2[],
                             $5::timestamptz[]) AS k(org_id, event_id, lease, attempts, due)
                 WHERE d.org_id = k.org_id AND d.event_id = k.event_id
                   AND d.lease_until = k.lease",
            )?,
        })
    }

    /// Records `outcomes` in one transaction on `client` (the connection this was prepared
    /// on): attempts inserted, rows moved on, events marked. A row whose lease is no longer
    /// `lease_until` is left alone (another node took it); its attempt is still recorded,
    /// since it happened.
    pub fn record(
        &self,
        client: &mut Client,
        outcomes: &[Outcome],
        at: SystemTime,
    ) -> Result<(), postgres::Error> {
        let mut tx = client.transaction()?;
        let made: Vec<(&Outcome, &Attempt)> = outcomes
            .iter()
            .filter_map(|o| Some((o, o.attempt.as_ref()?)))
            .collect();
        if !made.is_empty() {
            tx.execute(
                &self.attempts,
                &[
                    &made.iter().map(|(o, _)| o.org).collect::<Vec<_>>(),
                    &made.iter().map(|(o, _)| o.id).collect::<Vec<_>>(),
                    &made.iter().map(|(_, a)| a.attempt).collect::<Vec<_>>(),
                    &made.iter().map(|(_, a)| a.attempted_at).collect::<Vec<_>>(),
                    &made.iter().map(|(_, a)| a.status_code).collect::<Vec<_>>(),
                    &made
                        .iter()
                        .map(|(_, a)| a.error.as_deref())
                        .collect::<Vec<_>>(),
                    &made.iter().map(|(_, a)| a.latency_us).collect::<Vec<_>>(),
                    &made
                        .iter()
                        .map(|(_, a)| a.response.as_deref())
                        .collect::<Vec<_>>(),
                    &made.iter().map(|(o, _)| o.keep_days).collect::<Vec<_>>(),
                ],
            )?;
        }
        // Rows that go: delivered and failed.
        let gone: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| matches!(o.next, Next::Delivered | Next::Failed))
            .collect();
        if !gone.is_empty() {
            let (orgs, ids): (Vec<OrgId>, Vec<EventId>) =
                gone.iter().map(|o| (o.org, o.id)).unzip();
            tx.execute(
                &self.gone,
                &[
                    &orgs,
                    &ids,
                    &gone.iter().map(|o| o.lease_until).collect::<Vec<_>>(),
                ],
            )?;
            tx.execute(
                &self.mark,
                &[
                    &orgs,
                    &ids,
                    &gone
                        .iter()
                        .map(|o| o.next == Next::Delivered)
                        .collect::<Vec<_>>(),
                    &at,
                ],
            )?;
        }
        // Rows that stay: the lease given back, due at their retry or at once (NULL).
        let stay: Vec<(&Outcome, Option<SystemTime>)> = outcomes
            .iter()
            .filter_map(|o| match o.next {
                Next::Retry(t) => Some((o, Some(t))),
                Next::Release => Some((o, None)),
                Next::Delivered | Next::Failed => None,
            })
            .collect();
        if !stay.is_empty() {
            tx.execute(
                &self.stay,
                &[
                    &stay.iter().map(|(o, _)| o.org).collect::<Vec<_>>(),
                    &stay.iter().map(|(o, _)| o.id).collect::<Vec<_>>(),
                    &stay.iter().map(|(o, _)| o.lease_until).collect::<Vec<_>>(),
                    &stay.iter().map(|(o, _)| o.attempts).collect::<Vec<_>>(),
                    &stay.iter().map(|(_, due)| *due).collect::<Vec<_>>(),
                ],
            )?;
        }
        tx.commit()
    }
}

/// Disables `org`'s endpoint (`reason`: "gone", "manual"): its queued deliveries wait.
pub fn disable(client: &mut Client, org: OrgId, reason: &str) -> Result<bool, postgres::Error> {
    let mut tx = client.transaction()?;
    let n = tx.execute(
        "UPDATE organizations SET webhook_enabled = false, webhook_disabled_reason = $2
         WHERE org_id = $1 AND webhook_url IS NOT NULL",
        &[&org, &reason],
    )?;
    tx.execute(
        "UPDATE deliveries SET due_at = 'infinity' WHERE org_id = $1",
        &[&org],
    )?;
    announce(&mut tx, org)?;
    tx.commit()?;
    Ok(n == 1)
}

/// Enables `org`'s endpoint again: what waited is due now.
pub fn enable(client: &mut Client, org: OrgId) -> Result<bool, postgres::Error> {
    let mut tx = client.transaction()?;
    let n = tx.execute(
        "UPDATE organizations SET webhook_enabled = true, webhook_disabled_reason = NULL
         WHERE org_id = $1 AND webhook_url IS NOT NULL",
        &[&org],
    )?;
    wake(&mut tx, org)?;
    announce(&mut tx, org)?;
    tx.commit()?;
    Ok(n == 1)
}

/// Makes `org`'s deliveries that waited for its endpoint (disabled: due at 'infinity') due now.
pub fn wake(tx: &mut postgres::Transaction<'_>, org: OrgId) -> Result<u64, postgres::Error> {
    tx.execute(
        "UPDATE deliveries SET due_at = now() WHERE org_id = $1 AND due_at = 'infinity'",
        &[&org],
    )
}

/// Where a page of attempts goes on: after this attempt (its time, then its number).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptCursor {
    pub attempted_at: SystemTime,
    pub attempt: i16,
}

/// The attempts made to deliver `org`'s event `id`, oldest first, after `after`, at most
/// `limit` and whether more follow; `None` when `org` has no such event.
pub fn attempts(
    client: &mut Client,
    org: OrgId,
    id: EventId,
    after: Option<AttemptCursor>,
    limit: i64,
) -> Result<Option<(Vec<Attempt>, bool)>, postgres::Error> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM events WHERE org_id = $1 AND id = $2",
            &[&org, &id],
        )?
        .is_some();
    if !exists {
        return Ok(None);
    }
    let (after_t, after_n) = (after.map(|a| a.attempted_at), after.map(|a| a.attempt));
    let rows = client.query(
        "SELECT attempt, attempted_at, status_code, error, latency_us, response
         FROM delivery_attempts WHERE org_id = $1 AND event_id = $2
           AND ($3::timestamptz IS NULL OR (attempted_at, attempt) > ($3, $4))
         ORDER BY attempted_at, attempt
         LIMIT $5",
        &[&org, &id, &after_t, &after_n, &(limit + 1)],
    )?;
    let more = rows.len() as i64 > limit;
    let page = rows
        .iter()
        .take(limit as usize)
        .map(|r| Attempt {
            attempt: r.get(0),
            attempted_at: r.get(1),
            status_code: r.get(2),
            error: r.get(3),
            latency_us: r.get(4),
            response: r.get(5),
        })
        .collect();
    Ok(Some((page, more)))
}

/// Deliveries queued and not yet made, for the stats: (due now or later, paused), each
/// counted up to `cap`.
pub fn backlog(client: &mut Client, cap: i64) -> Result<(i64, i64), postgres::Error> {
    let r = client.query_one(
        "SELECT (SELECT count(*) FROM (SELECT 1 FROM deliveries
                 WHERE due_at < 'infinity' LIMIT $1) a),
                (SELECT count(*) FROM (SELECT 1 FROM deliveries
                 WHERE due_at = 'infinity' LIMIT $1) p)",
        &[&cap],
    )?;
    Ok((r.get(0), r.get(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_text_is_made_storable_and_bounded() {
        assert_eq!(storable_text(b"ok\0ok"), "ok\u{fffd}ok");
        assert_eq!(storable_text(b"\xff\xfe"), "\u{fffd}\u{fffd}");
        // Cut at the bound, then at a character boundary: a replacement (3 bytes) never
        // lengthens it past the bound.
        let long = storable_text(&[0u8; 2 * ATTEMPT_TEXT_BYTES_MAX]);
        assert!(long.len() <= ATTEMPT_TEXT_BYTES_MAX && !long.contains('\0'));
        assert_eq!(storable_text("é".repeat(600).as_bytes()).len(), 1024);
    }
}
