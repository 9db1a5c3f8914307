-- Presence in the market (see sql/006_presence.sql for the mechanism).
--
-- User ids carry the role, as in FR-021's example ('farmer-123'): customer
-- and farmer ids are separate number spaces, and farmer 101 is not
-- customer 101. A farmer's transitions also go to the public topic of each
-- of their farms, with "farmId", so a farm page subscribed to farm-7 shows
-- "Sunny Valley Farm is online" without knowing the farmer's id.
-- Farmers' presence is public; a customer's is theirs (and admins').

CREATE OR REPLACE FUNCTION rowcast.presence_user(claims jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN claims ->> 'role' IN ('customer', 'farmer', 'admin')
             AND coalesce(claims ->> 'sub', '') ~ '^[0-9A-Za-z_-]{1,64}$'
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
    IF user_id ~ '^farmer-[0-9]{1,18}$' THEN
        FOR farm IN SELECT f.id FROM market.farms f
                     WHERE f.farmer_id = substr(user_id, 8)::bigint ORDER BY f.id LOOP
            PERFORM rowcast.emit(
                ARRAY['presence-' || user_id, 'farm-' || farm],
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

-- The market policy, now with presence:
--   product-<id>, farm-<id>          public (inventory, farmers' presence)
--   presence-farmer-<id>             public
--   presence-customer-<id>           that customer (role customer, sub = <id>), admins
--   order-<id>, customer-<id>, farm-<id>-orders   as in 003_private_orders.sql
--   anything else                    denied
CREATE OR REPLACE FUNCTION rowcast.authorize(claims jsonb, topic text) RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_sub  text := claims ->> 'sub';
    v_role text := claims ->> 'role';
    v_id   bigint;
BEGIN
    IF topic IS NULL THEN
        RETURN false;
    END IF;
    IF topic ~ '^(product|farm)-[0-9]{1,18}$' OR topic ~ '^presence-farmer-[0-9]{1,18}$' THEN
        RETURN true;
    END IF;
    IF v_sub IS NULL OR v_role IS NULL THEN
        RETURN false;
    END IF;
    IF v_role = 'admin' THEN
        RETURN topic ~ '^(order|customer)-[0-9]{1,18}$'
            OR topic ~ '^farm-[0-9]{1,18}-orders$'
            OR topic ~ '^presence-customer-[0-9]{1,18}$';
    END IF;
    IF topic ~ '^presence-customer-[0-9]{1,18}$' THEN
        RETURN v_role = 'customer' AND substr(topic, 19) = v_sub;
    END IF;
    IF topic ~ '^order-[0-9]{1,18}$' THEN
        v_id := substr(topic, 7)::bigint;
        IF v_role = 'customer' THEN
            RETURN EXISTS (SELECT 1 FROM market.orders o
                            WHERE o.id = v_id AND o.customer_id::text = v_sub);
        ELSIF v_role = 'farmer' THEN
            RETURN EXISTS (SELECT 1 FROM market.orders o
                             JOIN market.farms f ON f.id = o.farm_id
                            WHERE o.id = v_id AND f.farmer_id::text = v_sub);
        END IF;
        RETURN false;
    END IF;
    IF topic ~ '^customer-[0-9]{1,18}$' THEN
        RETURN v_role = 'customer' AND substr(topic, 10) = v_sub;
    END IF;
    IF topic ~ '^farm-[0-9]{1,18}-orders$' THEN
        v_id := substring(topic FROM '^farm-([0-9]+)-orders$')::bigint;
        RETURN v_role = 'farmer' AND EXISTS (SELECT 1 FROM market.farms f
                                              WHERE f.id = v_id AND f.farmer_id::text = v_sub);
    END IF;
    RETURN false;
END
$$;
