-- V2: indexes for the inbox's filters, and each organization's webhook configuration.
--
-- Inbox pages are keyset scans in id order (ids are UUIDv7, so id order is time order):
-- by status (pending / delivered / failed) on events_by_status, by type on events_by_type (the
-- status, if also given, is checked on the rows it yields), and with neither on the primary key.

CREATE INDEX events_by_status ON events (org_id, status, id);
CREATE INDEX events_by_type ON events (org_id, type, id);

ALTER TABLE organizations
    ADD COLUMN webhook_url text,
    -- The Standard Webhooks signing secret (`whsec_...`); deliveries sign with it.
    ADD COLUMN webhook_secret text,
    ADD COLUMN webhook_updated_at timestamptz;
