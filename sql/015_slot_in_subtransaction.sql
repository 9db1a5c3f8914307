-- rowcast 015: rowcast.capture_by_slot makes the slot in a subtransaction.
--
-- 013's capture_by_slot failed now and then (about 1 run in 8 of the
-- capture tests) with
--   XX000 snapshot reference 0x... is not owned by resource owner TopTransaction
-- at its PERFORM pg_create_logical_replication_slot(...). It is a
-- PostgreSQL bug (reproduced on 15.18; PostgreSQL's 2024 development source
-- has the same code): while the new slot waits for a consistent point it
-- decodes the WAL written meanwhile, and a cache invalidation decoded then
-- (a VACUUM or ANALYZE anywhere in the cluster, any DDL) is applied in an
-- internal subtransaction (ReorderBufferImmediateInvalidation), whose end
-- sets CurrentResourceOwner to the current transaction's owner.
-- create_logical_replication_slot does not put the caller's owner back
-- (pg_logical_slot_get_changes and pg_replication_slot_advance do, "a
-- kluge"). A top-level SELECT does not mind; in PL/pgSQL the statement's
-- executor registered its snapshot under the outer query's (the portal's)
-- owner and, at the statement's end, tries to unregister it from
-- TopTransaction: the error. The slot was made and persisted by then, so
-- the error left a ready slot behind and rolled back the rest of the switch.
--
-- In a block with an EXCEPTION clause the statement runs in a
-- subtransaction, and the statement's owner is that subtransaction's own,
-- the very owner PostgreSQL sets back: nothing is disturbed. The handler
-- only raises the error again: errors are as before, and the subtransaction
-- assigns no transaction id, so the slot is still made before this
-- transaction writes. Otherwise as in 013 (see its comments).

CREATE OR REPLACE FUNCTION rowcast.capture_by_slot(tbl regclass, event_fn regprocedure, trigger_name name)
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
        -- the slot first: PostgreSQL makes one only before a transaction writes;
        -- in a block of its own, a subtransaction (see the top of this file)
        BEGIN
            PERFORM pg_create_logical_replication_slot(rowcast.capture_slot(), 'pgoutput');
        EXCEPTION WHEN OTHERS THEN
            RAISE;  -- never caught: the block is here for its subtransaction only
        END;
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
