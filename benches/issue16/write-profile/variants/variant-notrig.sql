ALTER TABLE market.products DISABLE TRIGGER products_changed;
