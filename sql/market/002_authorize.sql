-- The farmers-market policy (replaces the core allow-all rowcast.authorize):
--   product-<id>, farm-<id>, presence-<...>  public, anonymous clients included
--   order-<id>     the order's customer (role customer, sub = customer_id),
--                  the farmer of the order's farm (role farmer, sub = farms.farmer_id),
--                  admins
--   customer-<id>  that customer (role customer, sub = <id>), admins
--   anything else  denied
-- Ids are matched as digits only, so `order-abc` or `order-1 OR 1=1` simply
-- deny (the topic is never spliced into SQL, and never cast unless it is digits).
-- A customer match requires role customer: customer and farmer ids are separate
-- number spaces, and farmer 101 must not read customer 101's orders.
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
    IF topic ~ '^(product|farm|presence)-.+$' THEN
        RETURN true;
    END IF;
    IF v_role = 'admin' AND v_sub IS NOT NULL AND topic ~ '^(order|customer)-[0-9]{1,18}$' THEN
        RETURN true;
    END IF;
    IF v_sub IS NULL OR v_role IS NULL THEN
        RETURN false;
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
    RETURN false;
END
$$;
