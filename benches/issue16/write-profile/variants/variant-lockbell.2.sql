-- applied after variant-lockbell.sql (009): emit with only a test of one advisory key
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
