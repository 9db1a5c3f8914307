-- The deliverability rule checked once per change, by a function (issue #16).
--
-- The rule (003_guarantees.sql: at least one topic, one dimension, no NULL or
-- empty topic, a non-empty event name) was a CHECK expression, and tested
-- again by rowcast.emit before its INSERT. PostgreSQL prepares a table's CHECK
-- expressions again for every statement that writes the table (the stored
-- expression is parsed back from text, simplified by the planner and compiled),
-- and emit's INSERT is one statement per change: that preparation was 82,000
-- of the 385,000 instructions of a single-row UPDATE transaction of
-- market.products with the market trigger (valgrind callgrind, single-user
-- backend; benches/issue16/write-profile/). A CHECK that calls one function
-- prepares a two-variable call instead, and the function's own expression is
-- compiled once per session; emit no longer tests the rule itself.
--
-- What stays exactly as it was:
--   * every row written to rowcast.changes, by emit or by a direct INSERT,
--     obeys the rule; the constraint keeps its name and stays NOT VALID (rows
--     an older release let in are not re-checked; the reader skips them);
--   * emit's errors: invalid_parameter_value with the same messages (now
--     prefixed `rowcast:`, since direct INSERTs get them too), the topics'
--     error before the event's; emit maps NULL topics / event to the empty
--     array / string so that they get the same errors rather than a NOT NULL
--     violation;
--   * the doorbell protocol of 007_lean_emit.sql, unchanged.
CREATE FUNCTION rowcast.deliverable(topics text[], event text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    -- one test for the usual case; the detailed ones only to name the error
    -- (IS NOT TRUE: a NULL makes the test NULL, not false)
    IF (cardinality(topics) > 0 AND array_ndims(topics) = 1
        AND array_position(topics, NULL) IS NULL
        AND array_position(topics, '') IS NULL
        AND event <> '') IS NOT TRUE THEN
        IF topics IS NULL OR cardinality(topics) = 0 THEN
            RAISE EXCEPTION 'rowcast: at least one topic is required'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF array_ndims(topics) <> 1 OR array_position(topics, NULL) IS NOT NULL
           OR array_position(topics, '') IS NOT NULL THEN
            RAISE EXCEPTION 'rowcast: topics must be non-empty text, got %', topics
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        RAISE EXCEPTION 'rowcast: an event name is required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN true;
END
$$;

ALTER TABLE rowcast.changes DROP CONSTRAINT changes_deliverable;
ALTER TABLE rowcast.changes ADD CONSTRAINT changes_deliverable
    CHECK (rowcast.deliverable(topics, event)) NOT VALID;

CREATE OR REPLACE FUNCTION rowcast.emit(topics text[], event text, payload jsonb, entity text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- the rule is the table's (changes_deliverable); NULLs become the empty
    -- values the rule names, instead of a NOT NULL violation
    INSERT INTO rowcast.changes (topics, event, payload, entity)
    VALUES (coalesce(topics, '{}'), coalesce(event, ''), coalesce(payload, 'null'::jsonb),
            nullif(entity, ''));
    -- rowcast.ring(), inlined (see it in 001_core.sql for the protocol). A
    -- transaction still rings at most once in effect: after its first emit the
    -- flag reads false (its own UPDATE is visible to it), the shared key is a
    -- local re-grant, and PostgreSQL folds identical NOTIFYs of a transaction.
    IF current_setting('transaction_isolation') <> 'read committed'
       OR NOT pg_try_advisory_xact_lock_shared(7305280317090915) THEN
        PERFORM pg_notify('rowcast', '');
    ELSIF (SELECT d.armed FROM rowcast.doorbell d WHERE d.id = 1) THEN
        PERFORM 1 FROM rowcast.doorbell d WHERE d.id = 1 AND d.armed FOR UPDATE SKIP LOCKED;
        IF FOUND THEN
            UPDATE rowcast.doorbell SET armed = false WHERE id = 1;
        END IF;
        PERFORM pg_notify('rowcast', '');
    END IF;
END
$$;
