ALTER TABLE rowcast.changes DROP CONSTRAINT changes_deliverable;
ALTER TABLE rowcast.changes ADD CONSTRAINT changes_deliverable CHECK (cardinality(topics) > 0 AND array_ndims(topics) = 1 AND array_position(topics, NULL) IS NULL AND array_position(topics, '') IS NULL AND event <> '') NOT VALID;
DROP FUNCTION rowcast.deliverable(text[], text);
CREATE OR REPLACE FUNCTION rowcast.emit(topics text[], event text, payload jsonb, entity text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- one test for the usual case; the detailed ones only to name the error
    -- (IS NOT TRUE: a NULL topics array or event makes the test NULL, not false)
    IF (cardinality(topics) > 0 AND array_ndims(topics) = 1
        AND array_position(topics, NULL) IS NULL
        AND array_position(topics, '') IS NULL
        AND event <> '') IS NOT TRUE THEN
        IF topics IS NULL OR cardinality(topics) = 0 THEN
            RAISE EXCEPTION 'rowcast.emit: at least one topic is required'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF array_ndims(topics) <> 1 OR array_position(topics, NULL) IS NOT NULL
           OR array_position(topics, '') IS NOT NULL THEN
            RAISE EXCEPTION 'rowcast.emit: topics must be non-empty text, got %', topics
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        RAISE EXCEPTION 'rowcast.emit: an event name is required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO rowcast.changes (topics, event, payload, entity)
    VALUES (topics, event, coalesce(payload, 'null'::jsonb), nullif(entity, ''));
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
