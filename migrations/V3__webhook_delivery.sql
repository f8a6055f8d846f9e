-- V3: webhook delivery. The database is the queue: `deliveries` holds one row per event still
-- to be pushed, `delivery_attempts` every attempt made. An endpoint can be disabled (by its
-- organization, or by the server on `410 Gone`) without losing what is queued for it.

ALTER TABLE organizations
    ADD COLUMN webhook_enabled boolean NOT NULL DEFAULT true,
    -- Why the endpoint is disabled: 'gone' (it answered 410) or 'manual'.
    ADD COLUMN webhook_disabled_reason text,
    -- After a secret rotation, the previous secret signs too until this time.
    ADD COLUMN webhook_previous_secret text,
    ADD COLUMN webhook_previous_secret_until timestamptz,
    -- The endpoint failed too often in a row: no node attempts it before this time.
    ADD COLUMN webhook_rest_until timestamptz;

-- One row per event still to be delivered. A node works on a row while `lease_until` is in the
-- future (it claimed it, or committed the event and took it in memory); a node that dies
-- leaves a lease that runs out, and any node takes the row again. Rows of a disabled endpoint
-- wait with `due_at` = 'infinity'.
CREATE TABLE deliveries (
    org_id      uuid NOT NULL,
    event_id    uuid NOT NULL,
    -- Attempts made so far (the next one is attempts + 1 of the schedule).
    attempts    smallint NOT NULL DEFAULT 0,
    due_at      timestamptz NOT NULL,
    lease_until timestamptz,
    PRIMARY KEY (org_id, event_id)
);

-- Claims scan due rows oldest first.
CREATE INDEX deliveries_due ON deliveries (due_at);

-- Every attempt, for its organization to read (`GET /api/events/{id}/attempts`).
CREATE TABLE delivery_attempts (
    org_id       uuid NOT NULL,
    event_id     uuid NOT NULL,
    attempt      smallint NOT NULL,
    attempted_at timestamptz NOT NULL,
    -- The answer's status code; NULL when none came (see `error`).
    status_code  smallint,
    -- Why the attempt failed without an answer, or what the answer meant: a stable class
    -- such as 'timeout', 'connect', 'address_not_allowed'.
    error        text,
    latency_us   integer NOT NULL,
    -- The first 1 KiB of the answer's body, as UTF-8 (invalid bytes replaced).
    response     text,
    PRIMARY KEY (org_id, event_id, attempted_at, attempt)
);
