-- rowcast.touch says "became online" only when this call made the
-- transition. When two nodes wrote a user's first activity at once, the one
-- whose INSERT met the other's row (ON CONFLICT) also answered true, so
-- `rowcast_presence_transitions_total{status="online"}`, summed over the
-- nodes, counted that transition twice although one change was emitted.
-- Now an INSERT that finds the row takes the UPDATE path, with the status it
-- then reads (the other's row is committed once ON CONFLICT has waited).
CREATE OR REPLACE FUNCTION rowcast.touch(user_id text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    was text;
BEGIN
    IF user_id IS NULL OR user_id = '' THEN
        RAISE EXCEPTION 'rowcast.touch: a user id is required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT p.status INTO was FROM rowcast.presence p WHERE p.user_id = touch.user_id FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO rowcast.presence VALUES (touch.user_id, clock_timestamp(), 'online')
        ON CONFLICT ON CONSTRAINT presence_pkey DO NOTHING;
        IF FOUND THEN
            RETURN true;
        END IF;
        SELECT p.status INTO was FROM rowcast.presence p WHERE p.user_id = touch.user_id FOR UPDATE;
    END IF;
    UPDATE rowcast.presence p
       SET last_active_at = greatest(p.last_active_at, clock_timestamp()),
           status = 'online'
     WHERE p.user_id = touch.user_id;
    RETURN was IS DISTINCT FROM 'online';
END
$$;
