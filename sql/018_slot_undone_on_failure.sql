-- rowcast 018: a switch to the slot that fails after making the slot
-- drops it again.
--
-- A slot is made (and dropped) outside the transaction, so a switch that
-- failed after 015's capture_by_slot made the slot (a role that may not
-- alter the table or write rowcast's tables, a lock or statement timeout,
-- a cancel) rolled back
-- everything but the slot: no table captured, yet a node streamed the slot
-- and, with no node running, the slot held WAL back without limit. Now the
-- rest of the switch runs in a block whose handler drops the slot it made,
-- then raises the error as before. Otherwise as in 015.

CREATE OR REPLACE FUNCTION rowcast.capture_by_slot(tbl regclass, event_fn regprocedure, trigger_name name)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    rowtype regtype := (SELECT c.reltype FROM pg_class c WHERE c.oid = tbl)::regtype;
    fn pg_proc;
    slot_state text;
    made boolean := false;
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
        -- the slot first: PostgreSQL makes one only before a transaction writes;
        -- in a block of its own, a subtransaction (see 015)
        BEGIN
            PERFORM pg_create_logical_replication_slot(rowcast.capture_slot(), 'pgoutput');
        EXCEPTION WHEN OTHERS THEN
            RAISE;  -- never caught: the block is here for its subtransaction only
        END;
        made := true;
    ELSIF slot_state <> 'ready' THEN
        RAISE EXCEPTION 'rowcast.capture_by_slot: the slot % is %', rowcast.capture_slot(), slot_state
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = CASE slot_state WHEN 'lost' THEN 'switch every table back with rowcast.capture_by_trigger(tbl, force => true), then rowcast.capture_release()'
                         ELSE 'try again in a moment' END;
    END IF;
    -- the rest undoes the slot it made when it fails (a slot is made, and
    -- dropped, outside the transaction: the rollback alone would leave it)
    BEGIN
        IF made THEN
            UPDATE rowcast.capture_state SET lsn = '0/0' WHERE id = 1;
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
    -- OTHERS leaves out a cancel (statement_timeout, pg_cancel_backend, a
    -- client's Ctrl-C): named, so that it drops the slot too
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        IF made THEN
            PERFORM pg_drop_replication_slot(rowcast.capture_slot());
        END IF;
        RAISE;
    END;
END
$$;
