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
    IF NOT pg_try_advisory_xact_lock_shared(7305280317090915) THEN
        PERFORM pg_notify('rowcast', '');
    END IF;
END
$$;
