ALTER TABLE market.products DISABLE TRIGGER products_changed, ENABLE TRIGGER bench_notify;
