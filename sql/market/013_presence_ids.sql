-- Presence users are the market's ids, spelled as the market spells them.
--
-- 006_presence mapped any `sub` of 1–64 letters, digits, `_` or `-` to a
-- user: a farmer token with `sub` "0101" (a validly signed one) became
-- `farmer-0101`, a user of its own, whose transitions 010_presence_once sent
-- to the farms of farmer 101 (it reads the id as a number): a farm page could
-- show the farm online while its farmer was not. The market's ids in `sub`
-- are 1 to 18 digits without a leading zero (as rowcast.authorize and the
-- market API compare them: by text), so only those are users now; any other
-- `sub` is no user (its activity is refused as anonymous, 401).
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
