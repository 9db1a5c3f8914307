-- A cart line whose product sells out is removed from the cart (issue #13:
-- "clamped to the new quantity (removed at 0)"), and the customer is told
-- (cart.adjusted with "adjusted":0, "<name> are now out of stock").
--
-- Removed, as the cart shows it: get_cart leaves the line out, and a later
-- checkout buys the cart's other lines. The row stays behind as a marker
-- (adjusted = 0, which no live line has) for one reason: a checkout that
-- raced the sale still answers what happened, a conflict naming the
-- product, rather than buying the rest of a cart it no longer has whole, or
-- answering cart_empty. So:
--   quantity drops to 0   live lines become markers (adjusted = 0), each told
--   quantity rises from 0 markers are deleted, silently: the line stays
--                         removed (no "available again"), and a later sale
--                         finds nothing of it
--   get_cart              markers left out (an empty cart: "items":[])
--   checkout              the lines that were live when it began: all bought,
--                         or a conflict; a line removed while it waited for
--                         the products' locks (a marker now, or gone: its
--                         product restocked meanwhile) is never bought: it
--                         is in the conflict as sold out ("available":0,
--                         "now out of stock", options remove and
--                         contact_farmer). A cart with no live line: a
--                         conflict listing its markers (the loser of a race
--                         for the last pound), else cart_empty. A success
--                         deletes the markers too.
--   add_to_cart           starts the line afresh (a marker's quantity is not
--                         added to); refused at 0 as before
--   set_cart_quantity     a marker is no line: not_in_cart
--   remove_from_cart      deletes a marker too (the conflict offers "remove")
-- 004_carts.sql's invariant, adjusted = CASE WHEN requested > quantity THEN
-- quantity END, holds for every row, markers included (they exist only
-- while their product's quantity is 0).

CREATE OR REPLACE FUNCTION market.products_reconcile_carts() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    -- lines removed at 0 go for good once there is stock again
    IF NEW.quantity > 0 THEN
        DELETE FROM market.cart_items ci WHERE ci.product_id = NEW.id AND ci.adjusted = 0;
    END IF;
    FOR r IN
        UPDATE market.cart_items ci
           SET adjusted   = CASE WHEN ci.requested > NEW.quantity THEN trim_scale(NEW.quantity) END,
               updated_at = now()
         WHERE ci.product_id = NEW.id
           AND ci.adjusted IS DISTINCT FROM 0  -- removed already: left alone
           AND ci.adjusted IS DISTINCT FROM
               (CASE WHEN ci.requested > NEW.quantity THEN NEW.quantity END)
        RETURNING ci.customer_id, ci.requested, ci.adjusted
    LOOP
        PERFORM rowcast.emit(
            ARRAY['customer-' || r.customer_id],
            'cart.adjusted',
            jsonb_build_object(
                'customerId', r.customer_id::text,
                'productId',  NEW.id::text,
                'farmId',     NEW.farm_id::text,
                'name',       NEW.name,
                'unit',       NEW.unit,
                'requested',  trim_scale(r.requested),
                'adjusted',   r.adjusted,
                'available',  trim_scale(NEW.quantity),
                'options',    market.shortage_options(r.requested, NEW.quantity),
                'message',    market.availability_message(NEW.name, NEW.unit, r.requested, NEW.quantity),
                'timestamp',  market.epoch_ms()),
            -- the entity is the cart line: a snapshot of customer-<id> shows
            -- the latest adjustment of every line, not only the last one
            'cart-' || r.customer_id || '-' || NEW.id);
    END LOOP;
    RETURN NULL;
END
$$;

-- As in 004_carts.sql, without the lines removed at 0.
CREATE OR REPLACE FUNCTION market.get_cart(p_customer bigint) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    WITH lines AS (
        SELECT ci.product_id, p.farm_id, f.name AS farm_name, p.name, p.unit, p.price_cents,
               ci.requested, ci.adjusted, p.quantity AS available,
               least(ci.requested, p.quantity) AS quantity
          FROM market.cart_items ci
          JOIN market.products p ON p.id = ci.product_id
          JOIN market.farms f ON f.id = p.farm_id
         WHERE ci.customer_id = p_customer
           AND ci.adjusted IS DISTINCT FROM 0
    )
    SELECT jsonb_build_object(
        'customerId', p_customer::text,
        'items', coalesce(jsonb_agg(jsonb_build_object(
            'productId',  product_id::text,
            'farmId',     farm_id::text,
            'farmName',   farm_name,
            'name',       name,
            'unit',       unit,
            'priceCents', price_cents,
            'requested',  trim_scale(requested),
            'adjusted',   trim_scale(adjusted),
            'available',  trim_scale(available),
            'quantity',   trim_scale(quantity),
            'lineCents',  round(price_cents * quantity)::bigint,
            'status',     CASE WHEN requested <= available THEN 'ok'
                               WHEN available > 0 THEN 'short'
                               ELSE 'out_of_stock' END,
            'options',    market.shortage_options(requested, available),
            'message',    CASE WHEN requested > available
                               THEN market.availability_message(name, unit, requested, available) END)
            ORDER BY product_id), '[]'::jsonb),
        'totalCents', coalesce(sum(round(price_cents * quantity)), 0)::bigint,
        'ready', count(*) > 0 AND coalesce(bool_and(requested <= available), false))
      FROM lines
$$;

-- A conflict entry for a line removed at 0: as market.shortage's when
-- nothing is left, whatever the product holds now.
CREATE FUNCTION market.sold_out(p market.products, requested numeric) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT market.shortage(p, requested) || jsonb_build_object(
        'available', 0,
        'options',   market.shortage_options(requested, 0),
        'message',   market.availability_message(p.name, p.unit, requested, 0))
$$;

-- As in 004_carts.sql (the full contract is there), with lines removed at 0
-- (see the top of this file).
CREATE OR REPLACE FUNCTION market.checkout(p_customer bigint) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_ids       bigint[];
    v_live      bigint[];
    v_start     jsonb;
    v_lines     jsonb;
    v_conflicts jsonb;
    v_orders    jsonb := '[]'::jsonb;
    v_total     bigint := 0;
    v_order     bigint;
    f           record;
BEGIN
    PERFORM market.check_customer(p_customer);
    PERFORM 1 FROM market.carts WHERE customer_id = p_customer FOR UPDATE;
    -- the lines it buys: those live now (the cart is locked: only a sale's
    -- trigger changes them meanwhile, which may make one a marker, or a
    -- restock's, which deletes markers)
    SELECT array_agg(product_id ORDER BY product_id),
           array_agg(product_id ORDER BY product_id) FILTER (WHERE adjusted IS DISTINCT FROM 0),
           jsonb_object_agg(product_id, requested) FILTER (WHERE adjusted IS DISTINCT FROM 0)
      INTO v_ids, v_live, v_start
      FROM market.cart_items WHERE customer_id = p_customer;
    IF v_ids IS NULL THEN
        PERFORM market.refuse('MK409', jsonb_build_object(
            'error', 'cart_empty',
            'message', 'the cart is empty'));
    END IF;
    -- the lock order that keeps concurrent checkouts free of deadlocks
    PERFORM 1 FROM market.products WHERE id = ANY (v_ids) ORDER BY id FOR NO KEY UPDATE;

    -- a new statement, so a new snapshot: the locked rows' latest quantities,
    -- and the lines as the sales this checkout waited for left them (a line
    -- removed meanwhile is sold out for this cart, restocked or not)
    SELECT coalesce(jsonb_agg(CASE WHEN l.removed
                                   THEN market.sold_out(p, l.requested)
                                   ELSE market.shortage(p, l.requested) END ORDER BY p.id)
                        FILTER (WHERE l.removed OR l.requested > p.quantity), '[]'::jsonb),
           jsonb_agg(jsonb_build_object(
               'productId',  p.id,
               'farmId',     p.farm_id,
               'name',       p.name,
               'unit',       p.unit,
               'quantity',   l.requested,
               'priceCents', p.price_cents) ORDER BY p.farm_id, p.id)
      INTO v_conflicts, v_lines
      FROM (SELECT s.product_id,
                   coalesce(c.requested, (v_start ->> s.product_id::text)::numeric) AS requested,
                   c.product_id IS NULL OR c.removed AS removed
              FROM unnest(v_live) AS s (product_id)
              LEFT JOIN (SELECT product_id, trim_scale(sum(requested)) AS requested,
                                bool_or(adjusted = 0) AS removed
                           FROM market.cart_items
                          WHERE customer_id = p_customer
                          GROUP BY product_id) c USING (product_id)) l
      JOIN market.products p ON p.id = l.product_id;

    IF v_lines IS NULL THEN
        -- no live line: only lines removed at 0, those still short told as
        -- the conflict they are (a checkout that came just after the sale)
        SELECT coalesce(jsonb_agg(market.shortage(p, ci.requested) ORDER BY p.id)
                            FILTER (WHERE p.quantity <= 0), '[]'::jsonb)
          INTO v_conflicts
          FROM market.cart_items ci
          JOIN market.products p ON p.id = ci.product_id
         WHERE ci.customer_id = p_customer AND ci.adjusted = 0;
        IF jsonb_array_length(v_conflicts) = 0 THEN
            PERFORM market.refuse('MK409', jsonb_build_object(
                'error', 'cart_empty',
                'message', 'the cart is empty'));
        END IF;
    END IF;

    IF jsonb_array_length(v_conflicts) > 0 THEN
        RETURN jsonb_build_object(
            'result',    'conflict',
            'error',     'checkout_conflict',
            'message',   'Some items are not available in the quantity in your cart.',
            'conflicts', v_conflicts);
    END IF;

    -- the buyer's lines (and markers) go before the decrement, so the
    -- reconciling trigger never adjusts (nor tells about) the cart being bought
    DELETE FROM market.cart_items WHERE customer_id = p_customer;
    UPDATE market.carts SET updated_at = now() WHERE customer_id = p_customer;

    FOR f IN
        SELECT x."farmId" AS farm_id,
               sum(round(x."priceCents" * x.quantity))::bigint AS total,
               jsonb_agg(jsonb_build_object(
                   'productId',  x."productId"::text,
                   'name',       x.name,
                   'unit',       x.unit,
                   'quantity',   x.quantity,
                   'priceCents', x."priceCents",
                   'lineCents',  round(x."priceCents" * x.quantity)::bigint)
                   ORDER BY x."productId") AS items
          FROM jsonb_to_recordset(v_lines) AS x("productId" bigint, "farmId" bigint, name text,
                                                unit text, quantity numeric, "priceCents" bigint)
         GROUP BY x."farmId"
         ORDER BY x."farmId"
    LOOP
        INSERT INTO market.orders (customer_id, farm_id, status, total_cents)
        VALUES (p_customer, f.farm_id, 'PENDING', f.total)
        RETURNING id INTO v_order;
        INSERT INTO market.order_items (order_id, product_id, quantity, price_cents)
        SELECT v_order, x."productId", x.quantity, x."priceCents"
          FROM jsonb_to_recordset(v_lines) AS x("productId" bigint, "farmId" bigint,
                                                quantity numeric, "priceCents" bigint)
         WHERE x."farmId" = f.farm_id;
        v_orders := v_orders || jsonb_build_object(
            'orderId',    v_order::text,
            'farmId',     f.farm_id::text,
            'status',     'PENDING',
            'totalCents', f.total,
            'items',      f.items);
        v_total := v_total + f.total;
    END LOOP;

    UPDATE market.products p
       SET quantity = p.quantity - x.quantity
      FROM jsonb_to_recordset(v_lines) AS x("productId" bigint, quantity numeric)
     WHERE p.id = x."productId";

    RETURN jsonb_build_object('result', 'ok', 'totalCents', v_total, 'orders', v_orders);
END
$$;

-- As in 004_carts.sql; a marker's quantity is not added to (the line starts afresh).
CREATE OR REPLACE FUNCTION market.add_to_cart(p_customer bigint, p_product bigint, p_quantity numeric)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_product market.products;
    v_requested numeric;
BEGIN
    PERFORM market.check_customer(p_customer);
    PERFORM market.check_quantity(p_quantity);
    INSERT INTO market.carts (customer_id) VALUES (p_customer) ON CONFLICT (customer_id) DO NOTHING;
    PERFORM 1 FROM market.carts WHERE customer_id = p_customer FOR UPDATE;
    v_product := market.share_product(p_product);
    SELECT requested INTO v_requested
      FROM market.cart_items
     WHERE customer_id = p_customer AND product_id = p_product AND adjusted IS DISTINCT FROM 0;
    v_requested := trim_scale(coalesce(v_requested, 0) + p_quantity);
    PERFORM market.check_available(v_product, v_requested);
    INSERT INTO market.cart_items (customer_id, product_id, requested)
    VALUES (p_customer, p_product, v_requested)
    ON CONFLICT (customer_id, product_id)
    DO UPDATE SET requested = EXCLUDED.requested, adjusted = NULL, updated_at = now();
    UPDATE market.carts SET updated_at = now() WHERE customer_id = p_customer;
    RETURN market.get_cart(p_customer);
END
$$;

-- As in 004_carts.sql; a marker is no line (not_in_cart).
CREATE OR REPLACE FUNCTION market.set_cart_quantity(p_customer bigint, p_product bigint, p_quantity numeric)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_product market.products;
BEGIN
    PERFORM market.check_customer(p_customer);
    PERFORM market.check_quantity(p_quantity);
    PERFORM 1 FROM market.carts WHERE customer_id = p_customer FOR UPDATE;
    v_product := market.share_product(p_product);
    PERFORM 1 FROM market.cart_items
     WHERE customer_id = p_customer AND product_id = p_product AND adjusted IS DISTINCT FROM 0;
    IF NOT FOUND THEN
        PERFORM market.refuse_not_in_cart(p_product);
    END IF;
    PERFORM market.check_available(v_product, p_quantity);
    UPDATE market.cart_items
       SET requested = trim_scale(p_quantity), adjusted = NULL, updated_at = now()
     WHERE customer_id = p_customer AND product_id = p_product;
    UPDATE market.carts SET updated_at = now() WHERE customer_id = p_customer;
    RETURN market.get_cart(p_customer);
END
$$;
