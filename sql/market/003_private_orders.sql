-- Orders leave the public farm topic.
--
-- Until this migration an order's status change also went to `farm-<farm_id>`,
-- which the policy makes public: anyone could read every customer's orders of a
-- farm. Public topics carry public data only. From now on:
--   farm-<id>          public farm data (inventory; presence later)
--   farm-<id>-orders   the farm's orders: that farm's farmer and admins only
-- Past order events in the change log are moved to the private topic as well,
-- so that no resume or snapshot on `farm-<id>` can replay them.

CREATE OR REPLACE FUNCTION market.orders_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.status IS NOT DISTINCT FROM OLD.status THEN
        RETURN NULL;
    END IF;
    PERFORM rowcast.emit(
        ARRAY['order-' || NEW.id, 'customer-' || NEW.customer_id, 'farm-' || NEW.farm_id || '-orders'],
        'order.status.changed',
        jsonb_build_object(
            'orderId',        NEW.id::text,
            'customerId',     NEW.customer_id::text,
            'farmId',         NEW.farm_id::text,
            'newStatus',      NEW.status,
            'previousStatus', CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END,
            'message',        market.order_status_message(NEW.status),
            'timestamp',      market.epoch_ms()));
    RETURN NULL;
END
$$;

UPDATE rowcast.changes
   SET topics = ARRAY(SELECT CASE WHEN t ~ '^farm-[0-9]+$' THEN t || '-orders' ELSE t END
                        FROM unnest(topics) WITH ORDINALITY AS u(t, i) ORDER BY i)
 WHERE event = 'order.status.changed'
   AND EXISTS (SELECT 1 FROM unnest(topics) t WHERE t ~ '^farm-[0-9]+$');

-- The farmers-market policy (replaces the core allow-all rowcast.authorize):
--   product-<id>, farm-<id>       public, anonymous clients included
--   presence-<...>                public
--   order-<id>        the order's customer (role customer, sub = customer_id),
--                     the farmer of the order's farm (role farmer, sub = farms.farmer_id),
--                     admins
--   customer-<id>     that customer (role customer, sub = <id>), admins
--   farm-<id>-orders  that farm's farmer (role farmer, sub = farms.farmer_id), admins
--   anything else     denied
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
    IF topic ~ '^(product|farm)-[0-9]{1,18}$' OR topic ~ '^presence-.+$' THEN
        RETURN true;
    END IF;
    IF v_sub IS NULL OR v_role IS NULL THEN
        RETURN false;
    END IF;
    IF v_role = 'admin' THEN
        RETURN topic ~ '^(order|customer)-[0-9]{1,18}$' OR topic ~ '^farm-[0-9]{1,18}-orders$';
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
