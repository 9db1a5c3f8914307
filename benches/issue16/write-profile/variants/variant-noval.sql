CREATE OR REPLACE FUNCTION rowcast.emit(topics text[], event text, payload jsonb, entity text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
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
