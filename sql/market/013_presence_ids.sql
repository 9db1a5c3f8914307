-- Presence users are the market's ids, spelled as the market spells them.
--
-- 006_presence mapped any `sub` of 1–64 letters, digits, `_` or `-` to a
-- user: a farmer token with `sub` "0101" (a validly signed one) became
-- `farmer-0101`, a user of its own, whose transitions 010_presence_once sent
-- to the farms of farmer 101 (it reads the id as a number): a farm page could
-- show the farm online while its farmer was not. The market's ids in `sub`
-- are 1 to 18 digits without a leading zero (as rowcast.authorize and the
-- market API compare them: by text), so only those are users now; any other
-- `sub` is no user (its activity is refused as anonymous, 401). The same
-- rule where a transition is routed (presence_changed: only farmer-<id>
-- reaches a farm, so an app's rowcast.touch('farmer-0101') is a user of its
-- own, on presence-farmer-0101 only), and the rows such users left behind
-- go (they were never the market's users; their topics keep what was sent).
--
-- An admin's activity is recorded (`admin-<sub>`, on `presence-admin-<sub>`),
-- but the market policy gives that topic to no one: admins' presence is not
-- shown, as FR-021 shows farmers' and customers' only.

CREATE OR REPLACE FUNCTION rowcast.presence_user(claims jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN claims ->> 'role' IN ('customer', 'farmer', 'admin')
             AND coalesce(claims ->> 'sub', '') ~ '^[1-9][0-9]{0,17}$'
            THEN (claims ->> 'role') || '-' || (claims ->> 'sub')
        ELSE NULL
    END
$$;

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

DELETE FROM rowcast.presence
 WHERE user_id ~ '^(customer|farmer|admin)-'
   AND user_id !~ '^(customer|farmer|admin)-[1-9][0-9]{0,17}$';
