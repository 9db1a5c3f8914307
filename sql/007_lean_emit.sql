-- rowcast.emit, leaner: the same contract, less work per change (issue #16).
--
-- Per emitted change the previous version ran, besides the INSERT, a second
-- plpgsql call (`PERFORM rowcast.ring()`: a full SPI query to call a function,
-- and that function's own frame) and five separate validity tests. Backend
-- CPU per single-row UPDATE transaction of market.products (the market
-- trigger -> emit), synchronous_commit off so that only CPU counts, 20,000
-- transactions per run, interleaved: 137-138 us before, 124-125 us after.
--
-- What stays exactly as it was:
--   * the errors: invalid_parameter_value with the same messages for missing
--     topics, a NULL or empty topic, or a missing event name;
--   * NULL payload -> JSON null, empty entity -> NULL;
--   * the doorbell protocol of rowcast.ring() (still there, unchanged, for
--     anyone who calls it): ring when not in READ COMMITTED (the flag would be
--     read from an old snapshot), or when the shared advisory key cannot be
--     taken (a reader is re-arming), or when the flag is armed (then the
--     first writer claims and clears it). The key is taken before the flag is
--     read, and held to the end of the transaction, exactly as before.
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

-- rowcast.track's trigger calls emit as an expression: `PERFORM f(...)` runs a
-- full SPI query to call a function, an assignment of a plain function call is
-- evaluated directly (see sql/market/008_lean_capture.sql for the numbers).
-- Otherwise exactly the trigger of 004_track.sql.
CREATE OR REPLACE FUNCTION rowcast.track_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    prefix text := TG_ARGV[0];
    keycol text := TG_ARGV[1];
    evname text := CASE WHEN TG_NARGS >= 3 THEN TG_ARGV[2] ELSE TG_TABLE_NAME END;
    rec    jsonb;
    body   jsonb;
    verb   text;
    k      text;
    done   text;  -- emit's void result, discarded
BEGIN
    IF TG_OP = 'INSERT' THEN
        rec := to_jsonb(NEW); verb := 'inserted';
        body := jsonb_build_object('row', rec);
    ELSIF TG_OP = 'UPDATE' THEN
        rec := to_jsonb(NEW); verb := 'updated';
        body := jsonb_build_object('row', rec, 'old', to_jsonb(OLD));
    ELSE
        rec := to_jsonb(OLD); verb := 'deleted';
        body := jsonb_build_object('old', rec);
    END IF;
    k := rec ->> keycol;
    IF k IS NULL THEN
        -- the key column was renamed or dropped after track(), or allows NULL
        -- (first-version triggers): refuse rather than write a change with no topic
        RAISE EXCEPTION 'rowcast.track on %.%: key column % is missing or NULL',
            TG_TABLE_SCHEMA, TG_TABLE_NAME, keycol
            USING HINT = 'call rowcast.track on the table again, with an existing NOT NULL key_column';
    END IF;
    done := rowcast.emit(ARRAY[prefix || '-' || k], evname || '.' || verb, body)::text;
    RETURN NULL;
END
$$;

-- The source's re-arm of the doorbell as one prepared call, instead of four
-- simple-query statements (BEGIN, the lock, the UPDATE, COMMIT) parsed and
-- planned on every re-arm. Called in autocommit, so the key, taken
-- exclusively (waiting for every writer that holds it shared, i.e. every
-- writer that may have seen the bell disarmed), is held until the flag's
-- update commits, exactly as before.
CREATE OR REPLACE FUNCTION rowcast.arm_doorbell() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7305280317090915);
    UPDATE rowcast.doorbell SET armed = true WHERE id = 1 AND NOT armed;
END
$$;
