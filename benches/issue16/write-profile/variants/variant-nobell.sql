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
END
$$;
