-- Carts and checkout (issue #13, FR-021 "Conflict Resolution"): inventory always
-- wins, the customer is told, and a checkout either takes everything it asked
-- for or changes nothing. All of it lives here, so every app that writes to this
-- database gets the same guarantees, whatever language it is written in.
--
-- ============================ Calling convention ============================
-- One call per API request, each in its own transaction (autocommit is fine):
--
--   SELECT market.list_products(farm bigint DEFAULT NULL)  -- GET    /api/products
--   SELECT market.get_cart(customer)                       -- GET    /api/cart
--   SELECT market.add_to_cart(customer, product, qty)      -- POST   /api/cart/items
--   SELECT market.set_cart_quantity(customer, product, qty)-- PATCH  /api/cart/items/:product
--   SELECT market.remove_from_cart(customer, product)      -- DELETE /api/cart/items/:product
--   SELECT market.checkout(customer)                       -- POST   /api/checkout
--
-- customer and product are bigint ids; qty is numeric (from a driver without a
-- numeric type pass text: `$3::text::numeric`). Every function returns jsonb.
-- Ids in JSON are strings (as in the market's events), quantities JSON numbers
-- without trailing zeros (2.50 is 2.5).
--
-- Success: the returned jsonb is the answer body. add_to_cart,
-- set_cart_quantity and remove_from_cart return the whole cart afterwards
-- (the same document as get_cart). checkout returns one of two result kinds:
--   {"result":"ok","orders":[...],"totalCents":n}                -> 201
--   {"result":"conflict","error":"checkout_conflict",
--    "message":"...","conflicts":[...]}                        -> 409, body as is
-- A conflict is an answer, not an error: nothing was written, the caller may
-- commit.
--
-- Refusals RAISE with a SQLSTATE of class MK whose last three characters are the
-- HTTP status, and DETAIL = a JSON error body in the API's error shape
-- {"error":"<code>","message":"...", ...}, to be passed through unchanged:
--   MK400 invalid_customer      customer id NULL or not positive
--   MK400 invalid_quantity      qty NULL, NaN, not in (0, 1e9], or more than 6 decimals
--   MK404 unknown_product       no product with that id (NULL included)
--   MK404 not_in_cart           set/remove of a product the cart does not hold
--   MK409 quantity_unavailable  add/set above what is available; extra fields
--                               productId, name, unit, requested, available,
--                               options, message (the FR-021 wording)
--   MK409 cart_empty            checkout of an empty cart
-- The MESSAGE is "<code>: <message>" for logs and psql. Any other SQLSTATE is a
-- real failure (connection, serialization, ...) -> 5xx. A raise rolls the
-- whole call back.
--
-- ================================ Metrics ==================================
-- checkouts{result}: the HTTP layer counts each market.checkout call once, by
-- its returned "result" ("ok" | "conflict"), and "error" when the call raised
-- (cart_empty, invalid_customer, or a database failure). FR-021's conflict rate
-- is conflict / (ok + conflict + error).
-- Cart adjustments happen in a trigger, inside whichever transaction changed
-- inventory (a farmer's UPDATE, another customer's checkout), so no API call
-- sees them. Each one emits exactly one `cart.adjusted` change: count them where
-- rowcast reads the change log (one per change read, not per delivery). Every
-- node reads every change, so each node's counter is the global count since it
-- started; aggregate across nodes with max, not sum.
--
-- ================================= Locking ==================================
-- Lock order, everywhere: the customer's cart row, then product rows in id
-- order, then cart lines. Hence no deadlock between any two of these functions
-- or the reconciling trigger:
--   * every cart function locks market.carts(customer) first (FOR UPDATE), so a
--     customer's cart operations run one at a time;
--   * add_to_cart / set_cart_quantity hold the product FOR SHARE while they
--     validate and write the line: an inventory UPDATE waits for them and then
--     sees (and reconciles) the new line, or they wait and see the new quantity;
--   * checkout locks all of the cart's products FOR NO KEY UPDATE in id order
--     before it reads availability and before it touches any cart line;
--   * the trigger runs while its transaction holds the product row, and writes
--     only that product's cart lines (a checkout's own lines are gone by then),
--     never market.carts (a cart row can be held by a checkout waiting for this
--     very product).
-- An app that updates several products in one transaction should do so in id
-- order too, or it may deadlock with a checkout (as with any two lockers).
-- Written for READ COMMITTED (PostgreSQL's default): after waiting for a lock,
-- each statement reads the latest committed rows. Under REPEATABLE READ or
-- SERIALIZABLE, a row changed since the snapshot makes the call fail with 40001
-- instead (safe; retry).

ALTER TABLE market.products
    ADD COLUMN price_cents bigint NOT NULL DEFAULT 0 CHECK (price_cents >= 0);

-- One cart per customer, for good: it is the lock that serializes that
-- customer's cart operations. A checkout empties it.
CREATE TABLE market.carts (
    customer_id bigint PRIMARY KEY CHECK (customer_id > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One line per product (the primary key; checkout still sums per product).
--   requested  what the customer asked for; only the customer changes it.
--   adjusted   NULL while `requested` is available; otherwise what is available
--              (0 = out of stock: the line stays, visible, so the customer
--              decides between "adjust" and "remove"). Kept equal to
--              CASE WHEN requested > products.quantity THEN products.quantity END
--              by the cart functions and market.products_reconcile_carts().
-- A product in a cart (or an order) cannot be deleted: set its quantity to 0,
-- and the carts holding it are told.
CREATE TABLE market.cart_items (
    customer_id bigint  NOT NULL REFERENCES market.carts (customer_id),
    product_id  bigint  NOT NULL REFERENCES market.products (id),
    requested   numeric NOT NULL CHECK (requested > 0 AND requested < 'Infinity'),
    adjusted    numeric CHECK (adjusted >= 0 AND adjusted < requested),
    added_at    timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, product_id)
);
CREATE INDEX cart_items_product ON market.cart_items (product_id);

-- What an order bought, at the price of the moment.
CREATE TABLE market.order_items (
    order_id    bigint  NOT NULL REFERENCES market.orders (id),
    product_id  bigint  NOT NULL REFERENCES market.products (id),
    quantity    numeric NOT NULL CHECK (quantity > 0),
    price_cents bigint  NOT NULL CHECK (price_cents >= 0),
    PRIMARY KEY (order_id, product_id)
);
CREATE INDEX order_items_product ON market.order_items (product_id);

-- ------------------------------- wording -----------------------------------

-- A unit for a quantity: 1 lb, 3 lbs, 2 bunches, 2 dozen, 500 g. English
-- plurals by rule, with the usual exceptions for abbreviations; apps with other
-- units or languages replace this function.
CREATE FUNCTION market.unit_for(unit text, qty numeric) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN qty = 1 OR unit = '' THEN unit
        WHEN lower(unit) = 'lb' THEN unit || 's'
        WHEN lower(unit) IN ('lbs', 'oz', 'g', 'kg', 'mg', 'l', 'ml', 'dozen', 'each', 'ea')
            THEN unit
        WHEN unit ~* '(s|sh|ch|x|z)$' THEN unit || 'es'
        WHEN unit ~* '[^aeiou]y$' THEN left(unit, -1) || 'ies'
        ELSE unit || 's'
    END
$$;

-- "3 lbs", "2.5 lbs", "1 bunch".
CREATE FUNCTION market.format_quantity(qty numeric, unit text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT trim_scale(qty)::text || ' ' || market.unit_for(unit, qty)
$$;

-- What the customer is told about a line whose availability changed (FR-021):
--   nothing left            "Heirloom Tomatoes are now out of stock"
--   less than requested     "Only 3 lbs available. Adjust quantity?"
--   requested available     "Heirloom Tomatoes are available again"
-- "are" for names ending in s, "is" otherwise (Basil is, Eggs are).
CREATE FUNCTION market.availability_message(name text, unit text, requested numeric, available numeric)
RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN available <= 0 THEN
            name || CASE WHEN name ~* 's$' THEN ' are' ELSE ' is' END || ' now out of stock'
        WHEN available < requested THEN
            'Only ' || market.format_quantity(available, unit) || ' available. Adjust quantity?'
        ELSE
            name || CASE WHEN name ~* 's$' THEN ' are' ELSE ' is' END || ' available again'
    END
$$;

-- The choices a UI offers for a short line: "adjust" (set the quantity to what
-- is available) only when something is; "remove" and "contact_farmer" always.
-- Nothing when the requested quantity is available.
CREATE FUNCTION market.shortage_options(requested numeric, available numeric) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN available >= requested THEN '[]'::jsonb
        WHEN available > 0 THEN '["adjust","remove","contact_farmer"]'::jsonb
        ELSE '["remove","contact_farmer"]'::jsonb
    END
$$;

-- A short line, as checkout's conflicts and quantity_unavailable describe it.
CREATE FUNCTION market.shortage(p market.products, requested numeric) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'productId', p.id::text,
        'farmId',    p.farm_id::text,
        'name',      p.name,
        'unit',      p.unit,
        'requested', trim_scale(requested),
        'available', trim_scale(p.quantity),
        'options',   market.shortage_options(requested, p.quantity),
        'message',   market.availability_message(p.name, p.unit, requested, p.quantity))
$$;

-- ------------------------------- refusals ----------------------------------

-- Raises a refusal: SQLSTATE `state` (MKnnn, nnn = HTTP status), DETAIL = body
-- (which carries "error" and "message"). Never returns.
CREATE FUNCTION market.refuse(state text, body jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = state,
        MESSAGE = (body ->> 'error') || ': ' || (body ->> 'message'),
        DETAIL  = body::text;
END
$$;

CREATE FUNCTION market.check_customer(p_customer bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_customer IS NULL OR p_customer <= 0 THEN
        PERFORM market.refuse('MK400', jsonb_build_object(
            'error', 'invalid_customer',
            'message', 'the customer id must be a positive integer'));
    END IF;
END
$$;

-- A quantity is a number in (0, 1e9] with at most 6 decimals (trailing zeros
-- aside): that bounds what a caller can make the database store and echo.
CREATE FUNCTION market.check_quantity(p_quantity numeric) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- NaN compares greater than every number, Infinity too: both fail the upper bound
    IF p_quantity IS NULL OR NOT (p_quantity > 0 AND p_quantity <= 1000000000)
       OR scale(trim_scale(p_quantity)) > 6 THEN
        PERFORM market.refuse('MK400', jsonb_build_object(
            'error', 'invalid_quantity',
            'message', 'the quantity must be a number above 0, at most 1000000000, with at most 6 decimals',
            'quantity', left(p_quantity::text, 40)));
    END IF;
END
$$;

-- The product, locked FOR SHARE until the end of the transaction (see Locking),
-- or unknown_product.
CREATE FUNCTION market.share_product(p_product bigint) RETURNS market.products
LANGUAGE plpgsql AS $$
DECLARE
    v market.products;
BEGIN
    SELECT * INTO v FROM market.products WHERE id = p_product FOR SHARE;
    IF NOT FOUND THEN
        PERFORM market.refuse('MK404', jsonb_build_object(
            'error', 'unknown_product',
            'message', 'no product with id ' || coalesce(p_product::text, 'null'),
            'productId', p_product::text));
    END IF;
    RETURN v;
END
$$;

CREATE FUNCTION market.check_available(p market.products, requested numeric) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF requested > p.quantity THEN
        PERFORM market.refuse('MK409',
            jsonb_build_object('error', 'quantity_unavailable') || market.shortage(p, requested));
    END IF;
END
$$;

CREATE FUNCTION market.refuse_not_in_cart(p_product bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM market.refuse('MK404', jsonb_build_object(
        'error', 'not_in_cart',
        'message', 'product ' || p_product || ' is not in the cart',
        'productId', p_product::text));
END
$$;

-- -------------------------------- reads -------------------------------------

-- GET /api/products: every product (of one farm when `p_farm` is given), by id.
--   [{"productId","farmId","farmName","name","unit","quantity","priceCents"}]
CREATE FUNCTION market.list_products(p_farm bigint DEFAULT NULL) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'productId',  p.id::text,
               'farmId',     p.farm_id::text,
               'farmName',   f.name,
               'name',       p.name,
               'unit',       p.unit,
               'quantity',   trim_scale(p.quantity),
               'priceCents', p.price_cents) ORDER BY p.id), '[]'::jsonb)
      FROM market.products p
      JOIN market.farms f ON f.id = p.farm_id
     WHERE p_farm IS NULL OR p.farm_id = p_farm
$$;

-- GET /api/cart: the customer's cart (empty when there is none), lines by product id.
--   {"customerId","items":[{"productId","farmId","farmName","name","unit",
--     "priceCents","requested","adjusted","available","quantity","lineCents",
--     "status","options","message"}],"totalCents","ready"}
-- Per line, from the current inventory:
--   quantity   least(requested, available): what the line holds now
--   adjusted   the stored server adjustment (NULL when none)
--   status     "ok" | "short" (0 < available < requested) | "out_of_stock"
--   options    [] when ok, else as in checkout's conflicts
--   message    NULL when ok, else the FR-021 wording
--   lineCents  round(priceCents * quantity)
-- totalCents sums lineCents; ready = the cart is not empty and every line is
-- ok, i.e. a checkout now would succeed.
CREATE FUNCTION market.get_cart(p_customer bigint) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    WITH lines AS (
        SELECT ci.product_id, p.farm_id, f.name AS farm_name, p.name, p.unit, p.price_cents,
               ci.requested, ci.adjusted, p.quantity AS available,
               least(ci.requested, p.quantity) AS quantity
          FROM market.cart_items ci
          JOIN market.products p ON p.id = ci.product_id
          JOIN market.farms f ON f.id = p.farm_id
         WHERE ci.customer_id = p_customer
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

-- ----------------------------- cart writes ----------------------------------

-- POST /api/cart/items: adds `p_quantity` to the line of `p_product` (creating
-- cart and line as needed). The new requested quantity (existing requested +
-- p_quantity) must be available, else quantity_unavailable (an adjusted line
-- must be adjusted or removed before more can be added). Clears any adjustment.
-- Returns the cart (get_cart). Refusals: invalid_customer, invalid_quantity,
-- unknown_product, quantity_unavailable.
CREATE FUNCTION market.add_to_cart(p_customer bigint, p_product bigint, p_quantity numeric)
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
      FROM market.cart_items WHERE customer_id = p_customer AND product_id = p_product;
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

-- PATCH /api/cart/items/:product: sets the line's requested quantity to
-- `p_quantity` (the "adjust" choice: set it to what is available) and clears
-- any adjustment. The line must exist (a stale client cannot re-add a line the
-- customer removed elsewhere). Returns the cart. Refusals: invalid_customer,
-- invalid_quantity, unknown_product, not_in_cart, quantity_unavailable.
CREATE FUNCTION market.set_cart_quantity(p_customer bigint, p_product bigint, p_quantity numeric)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_product market.products;
BEGIN
    PERFORM market.check_customer(p_customer);
    PERFORM market.check_quantity(p_quantity);
    PERFORM 1 FROM market.carts WHERE customer_id = p_customer FOR UPDATE;
    v_product := market.share_product(p_product);
    PERFORM 1 FROM market.cart_items WHERE customer_id = p_customer AND product_id = p_product;
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

-- DELETE /api/cart/items/:product: removes the line (the "remove" choice).
-- Returns the cart. Refusals: invalid_customer, unknown_product, not_in_cart.
CREATE FUNCTION market.remove_from_cart(p_customer bigint, p_product bigint) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM market.check_customer(p_customer);
    PERFORM 1 FROM market.carts WHERE customer_id = p_customer FOR UPDATE;
    PERFORM 1 FROM market.products WHERE id = p_product;
    IF NOT FOUND THEN
        PERFORM market.refuse('MK404', jsonb_build_object(
            'error', 'unknown_product',
            'message', 'no product with id ' || coalesce(p_product::text, 'null'),
            'productId', p_product::text));
    END IF;
    DELETE FROM market.cart_items WHERE customer_id = p_customer AND product_id = p_product;
    IF NOT FOUND THEN
        PERFORM market.refuse_not_in_cart(p_product);
    END IF;
    UPDATE market.carts SET updated_at = now() WHERE customer_id = p_customer;
    RETURN market.get_cart(p_customer);
END
$$;

-- -------------------------------- checkout ----------------------------------

-- POST /api/checkout. Locks the cart, then the cart's products in id order,
-- sums the requested quantities per product, and compares them with inventory.
--
-- Any product short: writes nothing (no order, no inventory change, no cart
-- change, no event) and returns
--   {"result":"conflict","error":"checkout_conflict","message":"...",
--    "conflicts":[{"productId","farmId","name","unit","requested","available",
--                  "options":["adjust","remove","contact_farmer"],
--                  "message":"Only 3 lbs available. Adjust quantity?"}]}
-- (every short product, by id; "adjust" only when available > 0, and the
-- message "<name> are now out of stock" at 0).
--
-- Otherwise: empties the cart, creates one PENDING order per farm (by farm id;
-- each emits order.status.changed) with its order_items at the current prices,
-- decrements inventory (emits inventory.updated; other customers' lines of
-- these products are reconciled and told, the buyer's are already gone) and returns
--   {"result":"ok","totalCents":n,"orders":[{"orderId","farmId","status":"PENDING",
--     "totalCents","items":[{"productId","name","unit","quantity","priceCents","lineCents"}]}]}
-- Refusals: invalid_customer, cart_empty.
CREATE FUNCTION market.checkout(p_customer bigint) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_ids       bigint[];
    v_lines     jsonb;
    v_conflicts jsonb;
    v_orders    jsonb := '[]'::jsonb;
    v_total     bigint := 0;
    v_order     bigint;
    f           record;
BEGIN
    PERFORM market.check_customer(p_customer);
    PERFORM 1 FROM market.carts WHERE customer_id = p_customer FOR UPDATE;
    SELECT array_agg(DISTINCT product_id ORDER BY product_id) INTO v_ids
      FROM market.cart_items WHERE customer_id = p_customer;
    IF v_ids IS NULL THEN
        PERFORM market.refuse('MK409', jsonb_build_object(
            'error', 'cart_empty',
            'message', 'the cart is empty'));
    END IF;
    -- the lock order that keeps concurrent checkouts free of deadlocks
    PERFORM 1 FROM market.products WHERE id = ANY (v_ids) ORDER BY id FOR NO KEY UPDATE;

    -- a new statement, so a new snapshot: the locked rows' latest quantities
    SELECT coalesce(jsonb_agg(market.shortage(p, l.requested) ORDER BY p.id)
                        FILTER (WHERE l.requested > p.quantity), '[]'::jsonb),
           jsonb_agg(jsonb_build_object(
               'productId',  p.id,
               'farmId',     p.farm_id,
               'name',       p.name,
               'unit',       p.unit,
               'quantity',   l.requested,
               'priceCents', p.price_cents) ORDER BY p.farm_id, p.id)
      INTO v_conflicts, v_lines
      FROM (SELECT product_id, trim_scale(sum(requested)) AS requested
              FROM market.cart_items WHERE customer_id = p_customer
             GROUP BY product_id) l
      JOIN market.products p ON p.id = l.product_id;

    IF jsonb_array_length(v_conflicts) > 0 THEN
        RETURN jsonb_build_object(
            'result',    'conflict',
            'error',     'checkout_conflict',
            'message',   'Some items are not available in the quantity in your cart.',
            'conflicts', v_conflicts);
    END IF;

    -- the buyer's lines go before the decrement, so the reconciling trigger
    -- never adjusts (nor tells about) the cart being bought
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

-- ------------------------ server wins, customer told -------------------------

-- After a product's quantity changes: every cart line of it gets
-- adjusted = CASE WHEN requested > quantity THEN quantity END, and each line
-- whose adjustment changed emits, in this same transaction,
--   cart.adjusted on customer-<id> (private: that customer and admins)
--   {"customerId","productId","farmId","name","unit","requested","adjusted",
--    "available","options","message","timestamp"}
-- Three cases:
--   drop below requested  adjusted = available (0: out of stock, line kept),
--                         "Only 3 lbs available. Adjust quantity?" /
--                         "Heirloom Tomatoes are now out of stock"
--   partial restock       adjusted rises, same wording
--   full restock          adjusted = null, "Heirloom Tomatoes are available again"
-- The requested quantity is never touched: the customer decides, through
-- set_cart_quantity ("adjust") or remove_from_cart ("remove").
-- Fires after market.products_changed (trigger names sort so), hence the
-- inventory.updated of the same row precedes its cart.adjusted in the log.
CREATE FUNCTION market.products_reconcile_carts() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    FOR r IN
        UPDATE market.cart_items ci
           SET adjusted   = CASE WHEN ci.requested > NEW.quantity THEN trim_scale(NEW.quantity) END,
               updated_at = now()
         WHERE ci.product_id = NEW.id
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
CREATE TRIGGER products_reconcile_carts AFTER UPDATE OF quantity ON market.products
    FOR EACH ROW WHEN (NEW.quantity IS DISTINCT FROM OLD.quantity)
    EXECUTE FUNCTION market.products_reconcile_carts();
