-- Changes the reader can always deliver, and a key for "the current state".
--
-- 1. Every change must be deliverable: at least one topic, no NULL or empty
--    topic, a non-empty event name. rowcast.emit refuses anything else with a
--    clear error in the writer's transaction (which then rolls back, as any
--    failing trigger does), and a CHECK constraint backs it for writers that
--    INSERT into rowcast.changes directly. NOT VALID: rows written before this
--    migration are not re-checked (the reader skips, logs and counts any row it
--    cannot deliver instead of stalling on it; see src/source.rs).
-- 2. `entity`: what a change is the state of. A snapshot (`snapshot=true`)
--    sends the latest change of every entity of the subscribed topics. NULL
--    means the change's first topic (`product-123` for inventory.updated,
--    `order-7` for an order's status, `<prefix>-<key>` for rowcast.track).

ALTER TABLE rowcast.changes ADD COLUMN entity text;

ALTER TABLE rowcast.changes ADD CONSTRAINT changes_deliverable CHECK (
    cardinality(topics) > 0
    AND array_ndims(topics) = 1
    AND array_position(topics, NULL) IS NULL
    AND array_position(topics, '') IS NULL
    AND event <> ''
) NOT VALID;

DROP FUNCTION rowcast.emit(text[], text, jsonb);

-- The one primitive: any trigger, function or app SQL calls it, inside the
-- writing transaction. The change is delivered if and only if that transaction
-- commits. `entity` (optional) names what the change is the state of; default:
-- the first topic.
CREATE FUNCTION rowcast.emit(topics text[], event text, payload jsonb, entity text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF topics IS NULL OR cardinality(topics) = 0 THEN
        RAISE EXCEPTION 'rowcast.emit: at least one topic is required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF array_ndims(topics) <> 1 OR array_position(topics, NULL) IS NOT NULL
       OR array_position(topics, '') IS NOT NULL THEN
        RAISE EXCEPTION 'rowcast.emit: topics must be non-empty text, got %', topics
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF event IS NULL OR event = '' THEN
        RAISE EXCEPTION 'rowcast.emit: an event name is required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF payload IS NULL THEN
        payload := 'null'::jsonb;
    END IF;
    INSERT INTO rowcast.changes (topics, event, payload, entity)
    VALUES (topics, event, payload, nullif(entity, ''));
    -- Every emit asks; a transaction still rings at most once in effect: after the
    -- first call the flag reads false (its own UPDATE is visible to it), the shared
    -- advisory lock is already held (a local re-grant), and PostgreSQL folds
    -- identical NOTIFYs of one transaction into one.
    PERFORM rowcast.ring();
END
$$;
