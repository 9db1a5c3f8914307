-- What a farmer changes (issue #13: the storefront's farmer endpoints), with
-- the same calling convention as the cart functions (sql/market/004_carts.sql:
-- one call per request, jsonb answers, refusals as SQLSTATE MK<http status>
-- with a JSON DETAIL body in the API's error shape, passed through unchanged):
--
--   SELECT market.set_product_quantity(farmer, product, qty, admin)  -- PATCH /api/products/:id
--   SELECT market.set_order_status(farmer, order, status, admin)     -- POST  /api/orders/:id/status
--
-- `farmer` is the caller's farmer id (farms.farmer_id); only products and orders
-- of that farmer's farms may be changed. `admin` true (default false) lifts
-- that restriction, and `farmer` may then be NULL. Who the caller is, and
-- whether it is an admin, is the caller's to establish (the HTTP layer reads it
-- from a verified token); these functions only enforce ownership.
--
-- Nothing is written when nothing changes: a quantity or status set to what it
-- already is takes no lock and assigns no transaction id, so the caller's
-- `pg_current_xact_id_if_assigned()` stays NULL and no event is emitted. Every
-- real change goes through the existing triggers (inventory.updated and the
-- reconciliation of open carts with cart.adjusted; order.status.changed).
--
-- Refusals:
--   MK400 invalid_farmer    not admin, and farmer NULL or not positive
--   MK400 invalid_quantity  qty NULL, NaN, not in [0, 1e9], or more than 6 decimals
--   MK400 invalid_status    not one of PENDING CONFIRMED PREPARING READY COMPLETED CANCELLED
--   MK404 unknown_product   no product with that id
--   MK403 forbidden         the product belongs to another farmer's farm (products
--                           are public, so saying so hides nothing)
--   MK404 unknown_order     no order with that id, or (not admin) it belongs to
--                           another farmer's farm: the same answer either way, so
--                           a farmer cannot learn which order ids other farms hold
-- Order statuses have no transition rules here (any status to any other): that
-- is the app's business.

-- One product as the storefront shows it; list_products is its array.
--   {"productId","farmId","farmName","name","unit","quantity","priceCents"}
CREATE FUNCTION market.product_document(p market.products, farm_name text) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'productId',  p.id::text,
        'farmId',     p.farm_id::text,
        'farmName',   farm_name,
        'name',       p.name,
        'unit',       p.unit,
        'quantity',   trim_scale(p.quantity),
        'priceCents', p.price_cents)
$$;

-- Same answer as before (sql/market/004_carts.sql), now built from product_document.
CREATE OR REPLACE FUNCTION market.list_products(p_farm bigint DEFAULT NULL) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT coalesce(jsonb_agg(market.product_document(p, f.name) ORDER BY p.id), '[]'::jsonb)
      FROM market.products p
      JOIN market.farms f ON f.id = p.farm_id
     WHERE p_farm IS NULL OR p.farm_id = p_farm
$$;

CREATE FUNCTION market.check_farmer(p_farmer bigint, p_admin boolean) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT coalesce(p_admin, false) AND (p_farmer IS NULL OR p_farmer <= 0) THEN
        PERFORM market.refuse('MK400', jsonb_build_object(
            'error', 'invalid_farmer',
            'message', 'the farmer id must be a positive integer'));
    END IF;
END
$$;

-- PATCH /api/products/:id: sets the product's quantity (0 = out of stock).
-- Returns the product (product_document). Refusals: invalid_farmer,
-- invalid_quantity, unknown_product, forbidden.
CREATE FUNCTION market.set_product_quantity(p_farmer bigint, p_product bigint, p_quantity numeric,
                                            p_admin boolean DEFAULT false)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_owner bigint;
    v_doc   jsonb;
BEGIN
    PERFORM market.check_farmer(p_farmer, p_admin);
    -- NaN compares greater than every number, Infinity too: both fail the upper bound
    IF p_quantity IS NULL OR NOT (p_quantity >= 0 AND p_quantity <= 1000000000)
       OR scale(trim_scale(p_quantity)) > 6 THEN
        PERFORM market.refuse('MK400', jsonb_build_object(
            'error', 'invalid_quantity',
            'message', 'the quantity must be a number from 0 to 1000000000, with at most 6 decimals',
            'quantity', left(p_quantity::text, 40)));
    END IF;
    SELECT f.farmer_id INTO v_owner
      FROM market.products p JOIN market.farms f ON f.id = p.farm_id
     WHERE p.id = p_product;
    IF NOT FOUND THEN
        PERFORM market.refuse('MK404', jsonb_build_object(
            'error', 'unknown_product',
            'message', 'no product with id ' || coalesce(p_product::text, 'null'),
            'productId', p_product::text));
    END IF;
    IF NOT coalesce(p_admin, false) AND v_owner IS DISTINCT FROM p_farmer THEN
        PERFORM market.refuse('MK403', jsonb_build_object(
            'error', 'forbidden',
            'message', 'product ' || p_product || ' belongs to another farm',
            'productId', p_product::text));
    END IF;
    -- the row lock, the triggers and the cart reconciliation happen only on a real change
    UPDATE market.products SET quantity = trim_scale(p_quantity)
     WHERE id = p_product AND quantity IS DISTINCT FROM p_quantity;
    SELECT market.product_document(p, f.name) INTO v_doc
      FROM market.products p JOIN market.farms f ON f.id = p.farm_id
     WHERE p.id = p_product;
    RETURN v_doc;
END
$$;

-- POST /api/orders/:id/status: sets the order's status. Returns
--   {"orderId","customerId","farmId","status","previousStatus","totalCents"}
-- (previousStatus = status when it was already so). Refusals: invalid_farmer,
-- invalid_status, unknown_order.
CREATE FUNCTION market.set_order_status(p_farmer bigint, p_order bigint, p_status text,
                                        p_admin boolean DEFAULT false)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_owner    bigint;
    v_previous text;
    o          market.orders;
BEGIN
    PERFORM market.check_farmer(p_farmer, p_admin);
    IF p_status IS NULL OR p_status NOT IN
       ('PENDING', 'CONFIRMED', 'PREPARING', 'READY', 'COMPLETED', 'CANCELLED') THEN
        PERFORM market.refuse('MK400', jsonb_build_object(
            'error', 'invalid_status',
            'message', 'the status must be one of PENDING, CONFIRMED, PREPARING, READY, COMPLETED, CANCELLED',
            'status', left(p_status, 40)));
    END IF;
    SELECT f.farmer_id INTO v_owner
      FROM market.orders x JOIN market.farms f ON f.id = x.farm_id
     WHERE x.id = p_order;
    IF NOT FOUND OR (NOT coalesce(p_admin, false) AND v_owner IS DISTINCT FROM p_farmer) THEN
        PERFORM market.refuse('MK404', jsonb_build_object(
            'error', 'unknown_order',
            'message', 'no order with id ' || coalesce(p_order::text, 'null'),
            'orderId', p_order::text));
    END IF;
    -- Locks the row only when its status differs (re-checked on the latest
    -- version after waiting for a concurrent writer), so `old.status` is the
    -- status this update replaces.
    UPDATE market.orders x SET status = p_status, updated_at = now()
      FROM (SELECT id, status FROM market.orders
             WHERE id = p_order AND status IS DISTINCT FROM p_status
               FOR NO KEY UPDATE) old
     WHERE x.id = old.id
    RETURNING old.status INTO v_previous;
    SELECT * INTO o FROM market.orders WHERE id = p_order;
    RETURN jsonb_build_object(
        'orderId',        o.id::text,
        'customerId',     o.customer_id::text,
        'farmId',         o.farm_id::text,
        'status',         o.status,
        'previousStatus', coalesce(v_previous, o.status),
        'totalCents',     o.total_cents);
END
$$;
