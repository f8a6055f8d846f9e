-- V5: `events` partitioned by retention, then by time, so that expired events leave by
-- dropping whole partitions: no DELETE, no dead rows for vacuum to chase, no long lock.
--
--   events                      LIST (keep_days): one class per retention some tier has
--   ├── events_k1               RANGE (id): partitions a quarter of the retention long
--   │   ├── events_k1_1764460800000 ...
--   ├── events_k90 ...
--   └── events_legacy           the unpartitioned table of V1-V4, if it held rows
--
-- Ids are UUIDv7: their first 48 bits are the creation time in milliseconds, so a range of ids
-- is a range of time, and an inbox page bounded below by its organization's retention reads
-- only partitions that may hold its events. The server creates the classes and their
-- partitions ahead of time and drops them behind (src/db/partitions.rs); this migration makes
-- only what does not depend on the configured tiers.
--
-- A unique index on a partitioned table must hold its partition keys, so one on
-- (org_id, dedup_id) across partitions cannot exist. Dedup moves to `event_dedup`: one row per
-- stored event with a dedup_id, written in the statement that stores the event, and removed
-- when its event's partition is dropped.
--
-- An existing table becomes the partition `events_legacy` as it is (its rows are not copied;
-- its dedup_ids are): one scan to check it fits the class -1, which no tier has, and a bound on
-- its ids so that pages reading later events skip it. It is dropped once the longest retention
-- has passed over its newest event.

ALTER TABLE events RENAME TO events_legacy;
ALTER INDEX events_pkey RENAME TO events_legacy_pkey;
ALTER INDEX events_dedup RENAME TO events_legacy_dedup;
ALTER INDEX events_by_status RENAME TO events_legacy_by_status;
ALTER INDEX events_by_type RENAME TO events_legacy_by_type;

CREATE TABLE events (
    org_id       uuid NOT NULL,
    id           uuid NOT NULL,
    type         text NOT NULL,
    payload      jsonb NOT NULL,
    dedup_id     text,
    -- Named as V1 named it, so the legacy table's constraint is recognised as this one.
    status       text NOT NULL DEFAULT 'pending'
                 CONSTRAINT events_status_check
                 CHECK (status IN ('pending', 'delivered', 'failed')),
    created_at   timestamptz NOT NULL,
    delivered_at timestamptz,
    -- The retention of the organization's tier when the event arrived, in days (0: forever).
    -- An event stays in the class it arrived in; a change of tier applies to later events.
    keep_days    smallint NOT NULL
) PARTITION BY LIST (keep_days);

-- The same indexes as V2; each class adds its primary key (org_id, id).
CREATE INDEX events_by_status ON events (org_id, status, id);
CREATE INDEX events_by_type ON events (org_id, type, id);

CREATE TABLE event_dedup (
    org_id    uuid NOT NULL,
    dedup_id  text NOT NULL,
    event_id  uuid NOT NULL,
    -- The event's class: its row leaves when the event's partition is dropped.
    keep_days smallint NOT NULL,
    PRIMARY KEY (org_id, dedup_id)
);

-- Trimming finds a class's rows older than its oldest partition.
CREATE INDEX event_dedup_expiry ON event_dedup (keep_days, event_id);

-- The classes each organization's events are stored in: an inbox page reads only those. A
-- node records a class here before it commits the first event in it.
ALTER TABLE organizations ADD COLUMN keep_classes smallint[] NOT NULL DEFAULT '{}';

-- Trimming finds attempts of events no longer kept.
CREATE INDEX delivery_attempts_by_event ON delivery_attempts (event_id);

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM events_legacy) THEN
        DROP TABLE events_legacy;
        RETURN;
    END IF;
    ALTER TABLE events_legacy ADD COLUMN keep_days smallint NOT NULL DEFAULT -1;
    -- Validated here (one scan), so ATTACH needs none; the id bound lets pages skip the table.
    EXECUTE format(
        'ALTER TABLE events_legacy ADD CONSTRAINT events_legacy_bound
         CHECK (keep_days = -1 AND id < %L)',
        -- The first id of a day from now: above every id stored so far, even by a node whose
        -- clock runs ahead of this one's.
        (lpad(to_hex((extract(epoch FROM clock_timestamp() + interval '1 day') * 1000)::bigint),
              12, '0')
         || '00000000000000000000')::uuid);
    INSERT INTO event_dedup (org_id, dedup_id, event_id, keep_days)
    SELECT org_id, dedup_id, id, -1 FROM events_legacy WHERE dedup_id IS NOT NULL;
    UPDATE organizations SET keep_classes = '{-1}';
    ALTER TABLE events ATTACH PARTITION events_legacy FOR VALUES IN (-1);
END $$;
