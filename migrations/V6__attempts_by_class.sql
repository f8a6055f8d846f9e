-- Attempts are kept as long as their events: each attempt records its event's retention
-- class, and the upkeep deletes a class's attempts older than its oldest kept partition, as it
-- does its dedup_ids. Attempts recorded before this migration have no class; they are kept
-- for the longest retention, as before.

ALTER TABLE delivery_attempts ADD COLUMN keep_days smallint;

CREATE INDEX delivery_attempts_expiry ON delivery_attempts (keep_days, event_id);
DROP INDEX delivery_attempts_by_event;
