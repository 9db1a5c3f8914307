-- The market's events as event functions (013_capture.sql): one description
-- of each table's events, used by its trigger (in the writer's transaction)
-- and by the capturer when the table is captured by the slot
-- (`SELECT rowcast.capture_by_slot('market.products',
-- 'market.products_event(text, market.products, market.products)',
-- 'products_changed')`). Same events, topics and payloads as 008: NULL (no
-- event) for a DELETE, or an UPDATE that leaves the watched column as it was.
-- Each is one SELECT of one expression, which PostgreSQL inlines into the
-- trigger's expression: the trigger makes no extra function call.

CREATE FUNCTION market.products_event(op text, old_row market.products, new_row market.products)
RETURNS rowcast.event
LANGUAGE sql VOLATILE AS $$
    SELECT CASE
        WHEN op = 'DELETE' OR (op = 'UPDATE' AND new_row.quantity IS NOT DISTINCT FROM old_row.quantity)
            THEN NULL
        ELSE ROW(
            ARRAY['product-' || new_row.id, 'farm-' || new_row.farm_id],
            'inventory.updated',
            jsonb_build_object(
                'productId',        new_row.id::text,
                'newQuantity',      new_row.quantity,
                'previousQuantity', CASE WHEN op = 'UPDATE' THEN old_row.quantity END,
                'farmId',           new_row.farm_id::text,
                'unit',             new_row.unit,
                'timestamp',        market.epoch_ms()),
            NULL)::rowcast.event
    END
$$;

CREATE FUNCTION market.orders_event(op text, old_row market.orders, new_row market.orders)
RETURNS rowcast.event
LANGUAGE sql VOLATILE AS $$
    SELECT CASE
        WHEN op = 'DELETE' OR (op = 'UPDATE' AND new_row.status IS NOT DISTINCT FROM old_row.status)
            THEN NULL
        ELSE ROW(
            ARRAY['order-' || new_row.id, 'customer-' || new_row.customer_id,
                  'farm-' || new_row.farm_id || '-orders'],
            'order.status.changed',
            jsonb_build_object(
                'orderId',        new_row.id::text,
                'customerId',     new_row.customer_id::text,
                'farmId',         new_row.farm_id::text,
                'newStatus',      new_row.status,
                'previousStatus', CASE WHEN op = 'UPDATE' THEN old_row.status END,
                'message',        market.order_status_message(new_row.status),
                'timestamp',      market.epoch_ms()),
            NULL)::rowcast.event
    END
$$;

CREATE OR REPLACE FUNCTION market.products_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    e rowcast.event := market.products_event(TG_OP, OLD, NEW);
    done text;  -- emit's void result, discarded
BEGIN
    IF e.event IS NOT NULL THEN
        done := rowcast.emit(e.topics, e.event, e.payload, e.entity)::text;
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION market.orders_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    e rowcast.event := market.orders_event(TG_OP, OLD, NEW);
    done text;  -- emit's void result, discarded
BEGIN
    IF e.event IS NOT NULL THEN
        done := rowcast.emit(e.topics, e.event, e.payload, e.entity)::text;
    END IF;
    RETURN NULL;
END
$$;
