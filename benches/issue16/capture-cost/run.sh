#!/bin/bash
# Capture cost by part: a standalone cluster under /tmp/cap, migrated by target/release/rowcast.
# Run as root (initdb runs as the postgres user through setpriv).
# CPU per single-row UPDATE transaction of market.products, by capture variant.
set -e
. "$(dirname "$0")/../cluster.sh"
D=/tmp/cap/data; P=55433; S=/tmp/cap
cluster_start $D $S $P ''
$PSQL -c "CREATE DATABASE cap" 
/work/main/target/release/rowcast migrate --market --database-url "postgres://postgres@localhost/cap?host=$S&port=$P" 2>&1 | tail -1
cluster_seed cap
$PSQL -d cap <<SQL
$(grep -A14 'pub const NOTIFY_TRIGGER' /work/main/bench/src/writers.rs | sed -n '2,14p' | sed 's/";$//')
SQL
echo 'UPDATE market.products SET quantity = quantity + 1 WHERE id = 1 + (random()*999)::int;' > /tmp/cap/upd.sql
run() { # name, setup sql, sync
  local name=$1 setup=$2 sync=$3 n=${4:-20000}
  $PSQL -d cap -c "ALTER TABLE market.products DISABLE TRIGGER products_changed, DISABLE TRIGGER bench_notify, DISABLE TRIGGER products_reconcile_carts" -c "$setup" -c "CHECKPOINT" >/dev/null
  local ms=$($PSQL -d cap -c "SET synchronous_commit = $sync" -c '\timing on' -c "DO \$\$ BEGIN FOR i IN 1..2000 LOOP UPDATE market.products SET quantity = quantity + 1 WHERE id = 1 + (i % 1000); COMMIT; END LOOP; END \$\$" -c "DO \$\$ BEGIN FOR i IN 1..$n LOOP UPDATE market.products SET quantity = quantity + 1 WHERE id = 1 + (i % 1000); COMMIT; END LOOP; END \$\$" | grep Time | tail -1 | awk '{print $2}')
  printf "%-28s sync=%-3s %7.1f us/tx\n" "$name" "$sync" "$(echo "$ms * 1000 / $n" | bc -l)"
}
variants() {
$PSQL -d cap <<'SQL'
CREATE TABLE IF NOT EXISTS public.sink (x jsonb);
CREATE OR REPLACE FUNCTION public.t_payload_only() RETURNS trigger LANGUAGE plpgsql AS $f$
DECLARE p jsonb; t text[];
BEGIN
  t := ARRAY['product-' || NEW.id, 'farm-' || NEW.farm_id];
  p := jsonb_build_object('productId', NEW.id::text, 'newQuantity', NEW.quantity,
        'previousQuantity', CASE WHEN TG_OP = 'UPDATE' THEN OLD.quantity END,
        'farmId', NEW.farm_id::text, 'unit', NEW.unit, 'timestamp', market.epoch_ms());
  RETURN NULL;
END $f$;
CREATE OR REPLACE FUNCTION public.t_insert_direct() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  INSERT INTO rowcast.changes (topics, event, payload) VALUES (ARRAY['product-' || NEW.id, 'farm-' || NEW.farm_id], 'inventory.updated',
     jsonb_build_object('productId', NEW.id::text, 'newQuantity', NEW.quantity,
        'previousQuantity', CASE WHEN TG_OP = 'UPDATE' THEN OLD.quantity END,
        'farmId', NEW.farm_id::text, 'unit', NEW.unit, 'timestamp', market.epoch_ms()));
  RETURN NULL;
END $f$;
CREATE OR REPLACE FUNCTION public.t_insert_door() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  INSERT INTO rowcast.changes (topics, event, payload) VALUES (ARRAY['product-' || NEW.id, 'farm-' || NEW.farm_id], 'inventory.updated',
     jsonb_build_object('productId', NEW.id::text, 'newQuantity', NEW.quantity,
        'previousQuantity', CASE WHEN TG_OP = 'UPDATE' THEN OLD.quantity END,
        'farmId', NEW.farm_id::text, 'unit', NEW.unit, 'timestamp', market.epoch_ms()));
  IF current_setting('transaction_isolation') <> 'read committed'
     OR NOT pg_try_advisory_xact_lock_shared(7305280317090915) THEN
      PERFORM pg_notify('rowcast', '');
  ELSIF (SELECT d.armed FROM rowcast.doorbell d WHERE d.id = 1) THEN
      PERFORM pg_notify('rowcast', '');
  END IF;
  RETURN NULL;
END $f$;
DROP TRIGGER IF EXISTS t1 ON market.products; DROP TRIGGER IF EXISTS t2 ON market.products; DROP TRIGGER IF EXISTS t3 ON market.products;
CREATE TRIGGER t1 AFTER UPDATE OF quantity ON market.products FOR EACH ROW EXECUTE FUNCTION public.t_payload_only();
CREATE TRIGGER t2 AFTER UPDATE OF quantity ON market.products FOR EACH ROW EXECUTE FUNCTION public.t_insert_direct();
CREATE TRIGGER t3 AFTER UPDATE OF quantity ON market.products FOR EACH ROW EXECUTE FUNCTION public.t_insert_door();
SQL
OFF="ALTER TABLE market.products DISABLE TRIGGER t1, DISABLE TRIGGER t2, DISABLE TRIGGER t3"
for round in 1 2 3; do
run no_trigger "$OFF" off
run notify_per_row "$OFF; ALTER TABLE market.products ENABLE TRIGGER bench_notify" off
run payload_only "$OFF; ALTER TABLE market.products ENABLE TRIGGER t1" off
run insert_direct "$OFF; ALTER TABLE market.products ENABLE TRIGGER t2" off
run insert_door "$OFF; ALTER TABLE market.products ENABLE TRIGGER t3" off
run rowcast "$OFF; ALTER TABLE market.products ENABLE TRIGGER products_changed" off
done
}
variants
cluster_stop $D
