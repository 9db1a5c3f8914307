-- Capture by a logical replication slot (issue #16; docs/logical-source.md).
--
-- A table's changes reach the log one of two ways, never both:
--   * by its trigger (the default): the trigger calls rowcast.emit in the
--     writer's transaction;
--   * by the slot: the writer's transaction captures nothing; PostgreSQL
--     decodes the change from the WAL (pgoutput, the publication `rowcast`)
--     and one rowcast node, the capturer (src/capture.rs), appends it to the
--     log after the commit, through the table's event function, in batches.
-- The event function is the table's one description of its events, used by
-- both ways: fn(op text, old <table>, new <table>) RETURNS rowcast.event
-- (NULL: no event for this change; op is INSERT, UPDATE or DELETE; old is
-- NULL for an INSERT, new for a DELETE).
--
-- rowcast.capture_by_slot switches a table to the slot in one transaction:
-- it disables the table's capture trigger (which waits for the table's
-- writers in progress), adds the table to the publication and records it.
-- The decoder sees the publication as of each change's place in the WAL, so
-- a change committed before the switch was the trigger's and is not decoded,
-- and one committed after it is decoded and has no trigger: each change is
-- captured exactly once. rowcast.capture_by_trigger switches back the same way.

CREATE TYPE rowcast.event AS (topics text[], event text, payload jsonb, entity text);

-- A row the capturer appended names its writer's transaction here (its own
-- xid is the capturer's, which the cursor needs): every change reaches
-- clients with its writer's `tx`, however it was captured. NULL: the row's
-- own xid. (emitted_at of such a row is its writer's commit time.)
ALTER TABLE rowcast.changes ADD COLUMN tx xid8;

-- The publication exists before any slot: the decoder looks it up as of
-- each decoded transaction, and one that committed before the publication
-- existed would stop the slot for good ("publication does not exist").
-- Empty until a table is captured by the slot.
CREATE PUBLICATION rowcast;

-- Every table ever switched to the slot. `by_slot` false: switched back; the
-- row stays, since the capturer may still be appending changes the slot
-- decoded before the switch back (up to `released_at`). `event_fn` is the
-- function's signature as text, resolved at every append: a function dropped
-- and created again with the same signature goes on working; one that is
-- missing stops capture (loudly) until it is back, rather than skip changes.
CREATE TABLE rowcast.captured (
    relid        regclass PRIMARY KEY,
    event_fn     text NOT NULL,
    trigger_name name NOT NULL,
    by_slot      boolean NOT NULL,
    released_at  pg_lsn
);

-- The end of the last decoded transaction the capturer appended, written in
-- the same transaction as the append. The slot is told only after that
-- commits, so after a crash the slot may send transactions again: the
-- capturer skips those that end at or before this position. Reset when a new
-- slot is made (an old slot's positions mean nothing to it).
CREATE TABLE rowcast.capture_state (
    id  int PRIMARY KEY CHECK (id = 1),
    lsn pg_lsn NOT NULL
);
INSERT INTO rowcast.capture_state VALUES (1, '0/0');

-- Slots are named per cluster, publications per database: the slot is this
-- database's, named by its oid.
CREATE FUNCTION rowcast.capture_slot() RETURNS name
LANGUAGE sql STABLE AS $$
    SELECT ('rowcast_' || oid)::name FROM pg_database WHERE datname = current_database()
$$;

-- Whether this database's slot can capture: 'ready', 'missing' (none) or
-- 'lost' (PostgreSQL invalidated it, past max_slot_wal_keep_size) or
-- 'creating' (another transaction is making it).
CREATE FUNCTION rowcast.capture_slot_state() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT CASE WHEN s.wal_status = 'lost' THEN 'lost'
                                 WHEN s.confirmed_flush_lsn IS NULL THEN 'creating'
                                 ELSE 'ready' END
                       FROM pg_replication_slots s WHERE s.slot_name = rowcast.capture_slot()),
                    'missing')
$$;

-- The switch functions take this lock first, one at a time (it assigns no
-- transaction id, so the slot can still be made after it).
CREATE FUNCTION rowcast.capture_switch_lock() RETURNS void
LANGUAGE sql AS $$ SELECT pg_advisory_xact_lock(7305280317090920) $$;

CREATE FUNCTION rowcast.capture_by_slot(tbl regclass, event_fn regprocedure, trigger_name name)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    rowtype regtype := (SELECT c.reltype FROM pg_class c WHERE c.oid = tbl)::regtype;
    fn pg_proc;
    slot_state text;
BEGIN
    PERFORM rowcast.capture_switch_lock();
    IF current_setting('wal_level') <> 'logical' THEN
        RAISE EXCEPTION 'rowcast.capture_by_slot: wal_level is %, a slot needs logical',
            current_setting('wal_level')
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'set wal_level = logical in postgresql.conf and restart PostgreSQL';
    END IF;
    IF (SELECT c.relkind FROM pg_class c WHERE c.oid = tbl) <> 'r' THEN
        -- a partitioned table's changes are decoded under its partitions' names
        RAISE EXCEPTION 'rowcast.capture_by_slot: % is not a plain table (partitioned tables, views and the like are captured by their triggers)', tbl
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO fn FROM pg_proc p WHERE p.oid = event_fn;
    IF fn.pronargs <> 3 OR fn.proargtypes[0] <> 'text'::regtype OR fn.proargtypes[1] <> rowtype
       OR fn.proargtypes[2] <> rowtype OR fn.prorettype <> 'rowcast.event'::regtype OR fn.proretset THEN
        RAISE EXCEPTION 'rowcast.capture_by_slot: % must be (op text, old %, new %) RETURNS rowcast.event',
            event_fn, rowtype, rowtype
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger t
                   WHERE t.tgrelid = tbl AND t.tgname = trigger_name AND NOT t.tgisinternal) THEN
        RAISE EXCEPTION 'rowcast.capture_by_slot: % has no trigger %', tbl, trigger_name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT 1 FROM rowcast.captured c WHERE c.relid = tbl AND c.by_slot) THEN
        RAISE EXCEPTION 'rowcast.capture_by_slot: % is captured by the slot already', tbl
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_publication p WHERE p.pubname = 'rowcast') THEN
        RAISE EXCEPTION 'rowcast.capture_by_slot: the publication rowcast is missing'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'CREATE PUBLICATION rowcast, then drop the slot rowcast.capture_slot() names if it exists, then try again';
    END IF;
    slot_state := rowcast.capture_slot_state();
    IF slot_state = 'missing' THEN
        IF EXISTS (SELECT 1 FROM rowcast.captured c WHERE c.by_slot) THEN
            RAISE EXCEPTION 'rowcast.capture_by_slot: tables are captured by a slot that is gone (%)',
                (SELECT string_agg(c.relid::text, ', ') FROM rowcast.captured c WHERE c.by_slot)
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'switch each back with rowcast.capture_by_trigger(tbl, force => true) first';
        END IF;
        -- the slot first: PostgreSQL makes one only before a transaction writes
        PERFORM pg_create_logical_replication_slot(rowcast.capture_slot(), 'pgoutput');
        UPDATE rowcast.capture_state SET lsn = '0/0' WHERE id = 1;
    ELSIF slot_state <> 'ready' THEN
        RAISE EXCEPTION 'rowcast.capture_by_slot: the slot % is %', rowcast.capture_slot(), slot_state
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = CASE slot_state WHEN 'lost' THEN 'switch every table back with rowcast.capture_by_trigger(tbl, force => true), then rowcast.capture_release()'
                         ELSE 'try again in a moment' END;
    END IF;
    -- one statement: it takes the strongest lock it needs at once (two would
    -- upgrade a lock while writers queue, and deadlock with them)
    EXECUTE format('ALTER TABLE %s DISABLE TRIGGER %I, REPLICA IDENTITY FULL', tbl, trigger_name);
    EXECUTE format('ALTER PUBLICATION rowcast ADD TABLE %s', tbl);
    INSERT INTO rowcast.captured AS c VALUES (tbl, event_fn::text, trigger_name, true, NULL)
    ON CONFLICT (relid) DO UPDATE
        SET event_fn = excluded.event_fn, trigger_name = excluded.trigger_name,
            by_slot = true, released_at = NULL;
    -- wakes the nodes, which otherwise look for the slot once a minute
    PERFORM pg_notify('rowcast_capture', '');
END
$$;

-- Switching back must not let a change the trigger captures reach the log
-- before one the slot captured earlier (the capturer appends after the
-- commit): with the table's writers held off by the trigger change's lock,
-- it marks the WAL with a logical message, which the capturer answers once
-- it has appended every transaction before it, by moving
-- capture_state.lsn to the mark; only then does this commit. Without a
-- capturer keeping up it gives up after `wait` and changes nothing.
--
-- With the slot gone or invalidated (or `force`), nothing can be waited for:
-- the changes written since the slot stopped were never captured. Then the
-- trigger is switched back on at once and every client is made to resync:
-- the retention watermark moves past every transaction so far, so every
-- cursor from before it is answered "cursor expired" instead of resuming
-- past a hole.
CREATE FUNCTION rowcast.capture_by_trigger(tbl regclass, wait interval DEFAULT '30 seconds',
                                           force boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t name;
    mark pg_lsn;
    deadline timestamptz := clock_timestamp() + wait;
BEGIN
    PERFORM rowcast.capture_switch_lock();
    SELECT c.trigger_name INTO t FROM rowcast.captured c WHERE c.relid = tbl AND c.by_slot
    FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'rowcast.capture_by_trigger: % is not captured by the slot', tbl
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    EXECUTE format('ALTER TABLE %s ENABLE TRIGGER %I', tbl, t);
    EXECUTE format('ALTER PUBLICATION rowcast DROP TABLE %s', tbl);
    IF force OR rowcast.capture_slot_state() IN ('missing', 'lost') THEN
        UPDATE rowcast.retention
           SET pruned_below = greatest(pruned_below, pg_snapshot_xmax(pg_current_snapshot()))
         WHERE id = 1;
        UPDATE rowcast.captured SET by_slot = false, released_at = NULL WHERE relid = tbl;
        PERFORM pg_notify('rowcast', '');  -- the nodes read, and see the watermark
        RAISE WARNING 'rowcast.capture_by_trigger: % is captured by its trigger again; the slot could not say what it missed, so every client will resync', tbl;
        RETURN;
    END IF;
    mark := pg_logical_emit_message(false, 'rowcast.mark', '');
    -- PostgreSQL 15 and 16 do not flush a non-transactional message, and the
    -- decoder reads only flushed WAL: on a quiet database the mark waited for
    -- the next commit anywhere (0.9-7.3 s measured, up to ~15 s). A page of
    -- padding completes the mark's WAL page, which the WAL writer flushes
    -- within wal_writer_delay (13-14 ms measured). The capturer ignores it.
    PERFORM pg_logical_emit_message(false, 'rowcast.pad', repeat(' ', 8192));
    WHILE (SELECT s.lsn FROM rowcast.capture_state s WHERE s.id = 1) < mark LOOP
        IF clock_timestamp() > deadline THEN
            RAISE EXCEPTION 'rowcast.capture_by_trigger: no rowcast node appended what the slot captured of % within %; nothing changed', tbl, wait
                USING ERRCODE = 'lock_not_available',
                      HINT = 'run a rowcast node (serve) against this database, then try again; if the slot is gone, use force => true';
        END IF;
        PERFORM pg_sleep(0.01);
    END LOOP;
    UPDATE rowcast.captured SET by_slot = false, released_at = mark WHERE relid = tbl;
END
$$;

-- Drops the slot once no table is captured by it and the capturer has
-- appended everything the slot decoded; ends the capturer's stream.
CREATE FUNCTION rowcast.capture_release() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    slot name := rowcast.capture_slot();
    pending pg_lsn;
BEGIN
    PERFORM rowcast.capture_switch_lock();
    -- tables dropped since they were switched have nothing left to capture
    DELETE FROM rowcast.captured c WHERE NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = c.relid);
    IF EXISTS (SELECT 1 FROM rowcast.captured WHERE by_slot) THEN
        RAISE EXCEPTION 'rowcast.capture_release: tables are still captured by the slot: %',
            (SELECT string_agg(relid::text, ', ') FROM rowcast.captured WHERE by_slot)
            USING ERRCODE = 'object_in_use',
                  HINT = 'switch each back with rowcast.capture_by_trigger first';
    END IF;
    SELECT max(released_at) INTO pending FROM rowcast.captured;
    IF pending > (SELECT lsn FROM rowcast.capture_state) THEN
        RAISE EXCEPTION 'rowcast.capture_release: the capturer has not yet appended every change the slot decoded (up to %)', pending
            USING ERRCODE = 'object_in_use', HINT = 'try again once a rowcast node has caught up';
    END IF;
    -- ends the capturer's stream and waits (up to 10 s) for it to let go
    PERFORM pg_terminate_backend(s.active_pid, 10000) FROM pg_replication_slots s
    WHERE s.slot_name = slot AND s.active_pid IS NOT NULL;
    PERFORM pg_drop_replication_slot(slot) FROM pg_replication_slots s WHERE s.slot_name = slot;
    UPDATE rowcast.captured SET released_at = NULL;
END
$$;

-- The capturer's append of one table's decoded rows, in the order given
-- (their commit order): each row through the table's event function, rows
-- whose function returns NULL skipped. Rows are pgoutput's text values as
-- JSON objects (`olds` NULL for an INSERT, `news` for a DELETE); `xids` their
-- writers' 32-bit transaction ids (as decoding gives them, widened to xid8
-- here), `commit_us` their commit times (µs since 2000-01-01, PostgreSQL's
-- epoch). A row whose
-- event function raises, or whose event the log refuses (changes_deliverable),
-- is skipped with a warning and counted in the result: its writer committed
-- long ago, and one bad row must not stop every later change. Only data
-- errors are a bad row (classes 22 and 23, and RAISE's P0001); any other
-- error (a lock timeout, a deadlock, no memory, a missing function) fails
-- the whole batch, which the capturer retries.
CREATE FUNCTION rowcast.capture_append(tbl regclass, ops text[], olds jsonb[], news jsonb[],
                                       xids bigint[], commit_us bigint[])
RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    fn text;
    stmt text;
    skipped int := 0;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = tbl) THEN
        -- the table was dropped after these changes: no row type to give
        -- its event function any more
        RAISE WARNING 'rowcast: % changes of a dropped table (oid %) captured by the slot were skipped',
            coalesce(cardinality(ops), 0), tbl::oid;
        RETURN coalesce(cardinality(ops), 0);
    END IF;
    SELECT c.event_fn INTO fn FROM rowcast.captured c WHERE c.relid = tbl;
    IF fn IS NULL THEN
        RAISE EXCEPTION 'rowcast.capture_append: % was never captured by the slot', tbl
            USING HINT = 'capture waits: a row of rowcast.captured was deleted by hand?';
    END IF;
    IF to_regprocedure(fn) IS NULL THEN
        RAISE EXCEPTION 'rowcast.capture_append: the event function % of % is missing; capture waits until it is back', fn, tbl
            USING ERRCODE = 'undefined_function';
    END IF;
    fn := to_regprocedure(fn)::regproc::text;
    -- a 32-bit xid is in the current epoch, or the previous one when it is
    -- above the current xid's low half (decoding lags, never leads)
    stmt := format(
        'INSERT INTO rowcast.changes (topics, event, payload, entity, tx, emitted_at)
         SELECT coalesce((s.e).topics, ''{}''), coalesce((s.e).event, ''''),
                coalesce((s.e).payload, ''null''), nullif((s.e).entity, ''''),
                ((((s.now >> 32) - (s.x > (s.now & 4294967295))::int) << 32) | s.x)::text::xid8,
                ''2000-01-01 00:00:00+00''::timestamptz + s.us * interval ''1 microsecond''
         FROM (SELECT %s(t.op,
                         CASE WHEN t.o IS NOT NULL THEN jsonb_populate_record(NULL::%s, t.o) END,
                         CASE WHEN t.n IS NOT NULL THEN jsonb_populate_record(NULL::%s, t.n) END) AS e,
                      t.x, t.us, t.i, pg_current_xact_id()::text::bigint AS now
               FROM unnest($1, $2, $3, $4, $5) WITH ORDINALITY AS t(op, o, n, x, us, i)) s
         WHERE (s.e).event IS NOT NULL OR (s.e).topics IS NOT NULL
         ORDER BY s.i',
        fn, tbl, tbl);
    BEGIN
        EXECUTE stmt USING ops, olds, news, xids, commit_us;
        RETURN 0;
    EXCEPTION WHEN data_exception OR integrity_constraint_violation OR raise_exception THEN
        NULL;  -- one by one below, to find the bad rows
    END;
    FOR i IN 1 .. coalesce(cardinality(ops), 0) LOOP
        BEGIN
            EXECUTE stmt USING ops[i:i], olds[i:i], news[i:i], xids[i:i], commit_us[i:i];
        EXCEPTION WHEN data_exception OR integrity_constraint_violation OR raise_exception THEN
            skipped := skipped + 1;
            RAISE WARNING 'rowcast: a change of % captured by the slot was skipped: %', tbl, SQLERRM
                USING DETAIL = format('op %s, old %s, new %s', ops[i], olds[i], news[i]);
        END;
    END LOOP;
    RETURN skipped;
END
$$;
