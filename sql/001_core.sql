-- rowcast core: the change log, the doorbell and the two functions apps call.
-- Applied by `rowcast migrate` / `rowcast serve --migrate`; recorded in rowcast.migrations.

-- (schema rowcast is created by the migration runner)

-- One row per emitted change. `xid` is the writer's top-level transaction id:
-- readers order and resume by snapshot visibility of `xid`, never by `id` alone,
-- because ids are taken at INSERT time and transactions commit out of id order.
CREATE TABLE rowcast.changes (
    id         bigint GENERATED ALWAYS AS IDENTITY,
    xid        xid8        NOT NULL DEFAULT pg_current_xact_id(),
    topics     text[]      NOT NULL,
    event      text        NOT NULL,
    payload    jsonb       NOT NULL,
    emitted_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- Tailing: "rows not visible in snapshot S" = xid >= xmax(S) OR xid IN xip(S).
CREATE INDEX changes_xid ON rowcast.changes (xid);
-- Per-topic reads (resume of a single topic far back, latest state per topic).
CREATE INDEX changes_topics ON rowcast.changes USING gin (topics);

-- Retention: every change with xid below `pruned_below` may have been deleted.
-- A cursor whose lower snapshot still lacks such an xid cannot be resumed
-- exactly, and gets an explicit "resync" instead of silently missing rows.
CREATE TABLE rowcast.retention (
    id           int PRIMARY KEY CHECK (id = 1),
    pruned_below xid8 NOT NULL
);
INSERT INTO rowcast.retention VALUES (1, '0');

-- The doorbell. A NOTIFY takes a cluster-wide lock held through the commit flush,
-- so a NOTIFY per write serializes the app's commits. Instead only the first
-- writer after a reader has gone idle ("armed") rings; while readers are busy
-- draining, writers skip NOTIFY entirely. See rowcast.ring() and src/source.rs.
CREATE TABLE rowcast.doorbell (
    id    int PRIMARY KEY CHECK (id = 1),
    armed boolean NOT NULL
);
INSERT INTO rowcast.doorbell VALUES (1, true);

-- Writers hold this advisory key (shared, transaction scope) while they decide
-- not to ring; a reader re-arming takes it exclusively, so it waits until every
-- writer that may have seen "disarmed" has finished, and writers arriving
-- meanwhile fail the try-lock and ring unconditionally.
CREATE FUNCTION rowcast.ring() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- Under REPEATABLE READ or SERIALIZABLE the flag below would be read from the
    -- transaction's old snapshot, which may predate a re-arm: always ring.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        PERFORM pg_notify('rowcast', '');
        RETURN;
    END IF;
    IF NOT pg_try_advisory_xact_lock_shared(7305280317090915) THEN
        -- a reader is re-arming right now: ring, whatever the flag says
        PERFORM pg_notify('rowcast', '');
        RETURN;
    END IF;
    IF (SELECT armed FROM rowcast.doorbell WHERE id = 1) THEN
        -- claim the bell so that writers after us skip the NOTIFY; a writer that
        -- finds it claimed by a still-open transaction rings too (that one may abort)
        PERFORM 1 FROM rowcast.doorbell WHERE id = 1 AND armed FOR UPDATE SKIP LOCKED;
        IF FOUND THEN
            UPDATE rowcast.doorbell SET armed = false WHERE id = 1;
        END IF;
        PERFORM pg_notify('rowcast', '');
    END IF;
END
$$;

-- The one primitive: any trigger, function or app SQL calls it.
CREATE FUNCTION rowcast.emit(topics text[], event text, payload jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF topics IS NULL OR cardinality(topics) = 0 THEN
        RAISE EXCEPTION 'rowcast.emit: at least one topic is required';
    END IF;
    INSERT INTO rowcast.changes (topics, event, payload) VALUES (topics, event, payload);
    -- Every emit asks; a transaction still rings at most once in effect: after the
    -- first call the flag reads false (its own UPDATE is visible to it), the shared
    -- advisory lock is already held (a local re-grant), and PostgreSQL folds
    -- identical NOTIFYs of one transaction into one. A per-transaction guard in a
    -- GUC (set_config/current_setting) cost more than it saved on one-row writes.
    PERFORM rowcast.ring();
END
$$;

-- Generic row trigger used by rowcast.track().
-- TG_ARGV[0]: topic prefix (default: table name); TG_ARGV[1]: key column (default: primary key).
CREATE FUNCTION rowcast.track_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    prefix text := TG_ARGV[0];
    keycol text := TG_ARGV[1];
    rec    jsonb;
    body   jsonb;
    verb   text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        rec := to_jsonb(NEW); verb := 'inserted';
        body := jsonb_build_object('row', rec);
    ELSIF TG_OP = 'UPDATE' THEN
        rec := to_jsonb(NEW); verb := 'updated';
        body := jsonb_build_object('row', rec, 'old', to_jsonb(OLD));
    ELSE
        rec := to_jsonb(OLD); verb := 'deleted';
        body := jsonb_build_object('old', rec);
    END IF;
    PERFORM rowcast.emit(
        ARRAY[prefix || '-' || (rec ->> keycol)],
        TG_TABLE_NAME || '.' || verb,
        body);
    RETURN NULL;
END
$$;

-- Attach change capture to an existing table with one statement:
--   SELECT rowcast.track('public.products');
-- Topic: <topic_prefix>-<key>, events <table>.inserted|updated|deleted,
-- payload {"row": new row} / {"row": new, "old": old} / {"old": old row}.
CREATE FUNCTION rowcast.track(tbl regclass, topic_prefix text DEFAULT NULL, key_column text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    relname text;
    keycol  text := key_column;
BEGIN
    SELECT c.relname INTO relname FROM pg_class c WHERE c.oid = tbl;
    IF keycol IS NULL THEN
        SELECT a.attname INTO keycol
          FROM pg_index i
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
         WHERE i.indrelid = tbl AND i.indisprimary AND i.indnkeyatts = 1;
        IF keycol IS NULL THEN
            RAISE EXCEPTION 'rowcast.track(%): no single-column primary key; pass key_column', tbl;
        END IF;
    END IF;
    EXECUTE format('DROP TRIGGER IF EXISTS rowcast_track ON %s', tbl);
    EXECUTE format(
        'CREATE TRIGGER rowcast_track AFTER INSERT OR UPDATE OR DELETE ON %s '
        'FOR EACH ROW EXECUTE FUNCTION rowcast.track_trigger(%L, %L)',
        tbl, coalesce(topic_prefix, relname), keycol);
END
$$;

CREATE FUNCTION rowcast.untrack(tbl regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS rowcast_track ON %s', tbl);
END
$$;
