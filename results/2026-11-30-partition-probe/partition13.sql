-- Experiment (issue 12): `events` partitioned by day on its UUIDv7 id, 13 partitions
-- (11 past days, today, tomorrow: as many as weekly ones for 90 days), the same indexes (dedup
-- as a plain index). For loadtest/ab.sh SQL=.
BEGIN;
ALTER TABLE events RENAME TO events_unpartitioned;
ALTER INDEX events_pkey RENAME TO events_unpartitioned_pkey;
CREATE TABLE events (LIKE events_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (id);
ALTER TABLE events ADD PRIMARY KEY (org_id, id);
CREATE INDEX events_by_status_p ON events (org_id, status, id);
CREATE INDEX events_by_type_p ON events (org_id, type, id);
CREATE INDEX events_dedup_p ON events (org_id, dedup_id) WHERE dedup_id IS NOT NULL;
CREATE FUNCTION pg_temp.v7(t timestamptz) RETURNS uuid LANGUAGE sql AS $$
    SELECT (lpad(to_hex((extract(epoch FROM t) * 1000)::bigint), 12, '0')
            || '00000000000000000000')::uuid $$;
DO $$
DECLARE d date;
BEGIN
    FOR i IN -11..1 LOOP
        d := current_date + i;
        EXECUTE format('CREATE TABLE events_%s PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                       to_char(d, 'YYYYMMDD'), pg_temp.v7(d), pg_temp.v7(d + 1));
    END LOOP;
END $$;
COMMIT;
