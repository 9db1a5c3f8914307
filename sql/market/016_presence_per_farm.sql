-- A farmer's presence transition is one change per farm (topics farm-<id>),
-- and each farm's change is now its own entity: `presence-<user>` for the
-- first farm's (the one that also carries `presence-<user>`), and
-- `presence-<user>@farm-<id>` for the others. Before, every farm's change of
-- one transition was `presence-<user>`, so a snapshot of two of a farmer's
-- farms (one change per entity) carried the status of one farm only, while
-- the live stream carries one per farm. Same topics, events and data as
-- 013_presence_ids.

CREATE OR REPLACE FUNCTION rowcast.presence_changed(user_id text, status text, last_active_at timestamptz)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    data  jsonb := jsonb_build_object(
        'userId', user_id,
        'status', status,
        'lastActiveAt', (extract(epoch FROM last_active_at) * 1000)::bigint);
    farm  bigint;
    found boolean := false;
BEGIN
    -- as 010_presence_once, for market ids only
    IF user_id ~ '^farmer-[1-9][0-9]{0,17}$' THEN
        FOR farm IN SELECT f.id FROM market.farms f
                     WHERE f.farmer_id = substr(user_id, 8)::bigint ORDER BY f.id LOOP
            PERFORM rowcast.emit(
                CASE WHEN found THEN ARRAY['farm-' || farm]
                     ELSE ARRAY['presence-' || user_id, 'farm-' || farm] END,
                'user.presence',
                data || jsonb_build_object('farmId', farm::text),
                CASE WHEN found THEN 'presence-' || user_id || '@farm-' || farm
                     ELSE 'presence-' || user_id END);
            found := true;
        END LOOP;
    END IF;
    IF NOT found THEN
        PERFORM rowcast.emit(ARRAY['presence-' || user_id], 'user.presence', data,
                             'presence-' || user_id);
    END IF;
END
$$;
