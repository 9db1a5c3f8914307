-- set_product_quantity answers the quantity it replaced, `previousQuantity`,
-- as set_order_status answers `previousStatus`: equal to the new value when
-- nothing was written.
--
-- Why the caller needs it: a write that meets a concurrent writer of the same
-- row waits for it, then (READ COMMITTED) locks the row's newest version to
-- re-check its condition. Finding the value already set, it writes nothing
-- and emits nothing, but the lock has assigned the transaction an id, so
-- `pg_current_xact_id_if_assigned()` is not NULL. A `tx` answered then is one
-- no change will ever carry. So "nothing was written" is told by the answer
-- (previous = new), not by the transaction id; the HTTP API answers
-- `"tx": null` then (src/shop/endpoints.rs).
--
-- Same checks, refusals, locks and triggers as before (007_farmer_writes.sql).

CREATE OR REPLACE FUNCTION market.set_product_quantity(p_farmer bigint, p_product bigint, p_quantity numeric,
                                                       p_admin boolean DEFAULT false)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_owner    bigint;
    v_previous numeric;
    v_doc      jsonb;
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
    -- the row lock, the triggers and the cart reconciliation happen only on
    -- a real change; `old` is the version this update replaces (re-checked
    -- on the newest one after waiting for a concurrent writer)
    UPDATE market.products x SET quantity = trim_scale(p_quantity)
      FROM (SELECT id, quantity FROM market.products
             WHERE id = p_product AND quantity IS DISTINCT FROM p_quantity
               FOR NO KEY UPDATE) old
     WHERE x.id = old.id
    RETURNING old.quantity INTO v_previous;
    SELECT market.product_document(p, f.name)
           || jsonb_build_object('previousQuantity', trim_scale(coalesce(v_previous, p.quantity)))
      INTO v_doc
      FROM market.products p JOIN market.farms f ON f.id = p.farm_id
     WHERE p.id = p_product;
    RETURN v_doc;
END
$$;
