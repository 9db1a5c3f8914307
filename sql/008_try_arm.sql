-- The source's re-arm without waiting, for the read that follows it on the
-- same connection (issue #16).
--
-- rowcast.arm_doorbell() waits for every writer that holds the doorbell key
-- shared, so the source runs it on a connection of its own, and an isolated
-- change cost the database three wake-ups besides the writer's: the read the
-- ring caused, the re-arm, and the read after it. This one only *tries* the
-- key: when no writer holds it (nearly always: writers hold it from their
-- first emit to their commit), the flag is set and the call returns true, and
-- the source sends it pipelined with its next read in one round trip. The
-- read runs as its own statement after this one committed, so the protocol is
-- that of arm_doorbell() exactly: every writer that may have seen the bell
-- disarmed had ended before the key was granted, so the read sees it; writers
-- that come while the key is held cannot take it and ring; writers after the
-- commit see the flag armed. When a writer holds the key the call changes
-- nothing and returns false, and the source falls back to arm_doorbell() on
-- its second connection.
CREATE OR REPLACE FUNCTION rowcast.try_arm_doorbell() RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock(7305280317090915) THEN
        RETURN false;
    END IF;
    UPDATE rowcast.doorbell SET armed = true WHERE id = 1 AND NOT armed;
    RETURN true;
END
$$;
