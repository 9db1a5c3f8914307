-- rowcast 014: changes declared lost are marked by the transaction that
-- declared them, not by the retention watermark.
--
-- 013's forced switch back from a lost capture slot moved
-- `retention.pruned_below` to the xmax of its snapshot, so that cursors from
-- before it resynced. That was wrong both ways (found in review,
-- 2026-11-26): a cursor taken after the last uncaptured change but before
-- the switch could have an xmin equal to that watermark and resume past the
-- hole; and while any transaction from before the switch stayed open, every
-- cursor handed out after it had an xmin below the watermark and was
-- refused, for as long as that transaction lasted.
--
-- The loss is a point in commit order, not a range of xids: changes nobody
-- captured were committed before the switch, and the log never had them.
-- So the switch records its own transaction id, `lost_before`, and a
-- position may lack them exactly when its snapshot does not see that
-- transaction committed (`changelog::Watermarks` in the node; a cursor then
-- gets the `cursor_expired` resync, and a node whose position predates it
-- ends its connected clients the same way). Only the last switch is kept:
-- switches take turns (`capture_switch_lock`), so a snapshot that sees the
-- last one sees every earlier one.

ALTER TABLE rowcast.retention ADD COLUMN lost_before xid8;
COMMENT ON COLUMN rowcast.retention.lost_before IS
    'the last forced switch back from a lost capture slot: positions whose snapshot does not see this transaction committed may lack changes nobody captured';

-- As in 013 (see its comments), but for how the forced switch marks the loss.
CREATE OR REPLACE FUNCTION rowcast.capture_by_trigger(tbl regclass, wait interval DEFAULT '30 seconds',
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
        -- this transaction's own xid: every snapshot that does not see it
        -- committed was taken before the switch and may lack what was lost
        UPDATE rowcast.retention SET lost_before = pg_current_xact_id() WHERE id = 1;
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
