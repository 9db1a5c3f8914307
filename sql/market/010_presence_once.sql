-- A farmer with several farms: each transition reaches presence-farmer-<id>
-- once. 006_presence emitted one change per farm, each with both topics, so
-- a watcher of presence-farmer-<id> got every transition once per farm
-- (differing only in "farmId"). Now the first farm's change (lowest id)
-- carries presence-farmer-<id> and farm-<first>; every other farm's change
-- only its farm-<id>, with its own "farmId". A farmer with one farm, or none,
-- emits exactly as before.

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
    IF user_id ~ '^farmer-[0-9]{1,18}$' THEN
        FOR farm IN SELECT f.id FROM market.farms f
                     WHERE f.farmer_id = substr(user_id, 8)::bigint ORDER BY f.id LOOP
            PERFORM rowcast.emit(
                CASE WHEN found THEN ARRAY['farm-' || farm]
                     ELSE ARRAY['presence-' || user_id, 'farm-' || farm] END,
                'user.presence',
                data || jsonb_build_object('farmId', farm::text),
                'presence-' || user_id);
            found := true;
        END LOOP;
    END IF;
    IF NOT found THEN
        PERFORM rowcast.emit(ARRAY['presence-' || user_id], 'user.presence', data,
                             'presence-' || user_id);
    END IF;
END
$$;
