-- The market's default topics for Socket.IO clients (see sql/005_default_topics.sql):
--   a customer joins customer-<sub> (their orders, their cart adjustments),
--   a farmer joins farm-<id>-orders of each of their farms,
--   anyone else joins nothing by default.
-- Every topic returned is still checked by rowcast.authorize.
CREATE OR REPLACE FUNCTION rowcast.default_topics(claims jsonb) RETURNS text[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_sub  text := claims ->> 'sub';
    v_role text := claims ->> 'role';
BEGIN
    IF v_sub IS NULL THEN
        RETURN '{}';
    END IF;
    IF v_role = 'customer' AND v_sub ~ '^[0-9]{1,18}$' THEN
        RETURN ARRAY['customer-' || v_sub];
    END IF;
    IF v_role = 'farmer' THEN
        RETURN ARRAY(SELECT 'farm-' || f.id || '-orders'
                       FROM market.farms f
                      WHERE f.farmer_id::text = v_sub
                      ORDER BY f.id);
    END IF;
    RETURN '{}';
END
$$;
