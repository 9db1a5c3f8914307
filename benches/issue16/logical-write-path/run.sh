#!/bin/bash
# The write path with capture out of the writers' transactions (issue #16,
# item 5): what a logical-replication capturer would leave the writers, before
# building one. One standalone cluster, wal_level = logical for every variant,
# durable commits; pgbench's 16 clients run single-row UPDATEs of
# market.products as fast as they can for SECS seconds (the write-path
# scenario's load), captured three ways:
#   none      no capture (the writers' own rate: the 100 % of the ratio)
#   rowcast   rowcast's capture trigger, read by a rowcast node (no clients)
#   logical   no trigger; REPLICA IDENTITY FULL (previousQuantity needs the
#             old row); a pgoutput slot streamed by pg_recvlogical (the
#             walsender's decoding), plus one client appending what a
#             capturer would append: BATCH rows to rowcast.changes per
#             durable commit, at the rate the writers reached in the
#             previous `logical` round divided by BATCH (first round: the
#             `none` rate)
# Prints each variant's tps and its share of `none`'s in the same round.
# Run as root from the repository's root after cargo build --release.
# usage: run.sh OUT [ROUNDS] [BATCH] [SECS]
set -e
O=$1; ROUNDS=${2:-3}; BATCH=${3:-25}; SECS=${4:-10}
. benches/issue16/cluster.sh
D=/tmp/lw/data; S=/tmp/lw; P=55442; URL="postgres://postgres@localhost/lw?host=$S&port=$P"
cluster_start $D $S $P '127.0.0.1' "wal_level = logical
max_replication_slots = 8
max_wal_senders = 8"
$PSQL -c "CREATE DATABASE lw"
target/release/rowcast migrate --market --database-url "$URL" 2>&1 | tail -1
cluster_seed lw
$PSQL -d lw -c "CREATE PUBLICATION lw_pub FOR TABLE market.products" >/dev/null
echo 'UPDATE market.products SET quantity = quantity + 1 WHERE id = 1 + (random()*999)::int;' > $S/upd.sql
echo "INSERT INTO rowcast.changes (topics, event, payload) SELECT ARRAY['product-' || g, 'farm-' || (g % 10)], 'inventory.updated', jsonb_build_object('productId', g::text, 'newQuantity', 100, 'previousQuantity', 99, 'farmId', (g % 10)::text, 'unit', 'lb', 'timestamp', market.epoch_ms()) FROM generate_series(1, $BATCH) g;" > $S/append.sql
triggers() {
  $PSQL -d lw -c "ALTER TABLE market.products DISABLE TRIGGER products_changed, DISABLE TRIGGER products_reconcile_carts" >/dev/null
  [ -n "$1" ] && $PSQL -d lw -c "ALTER TABLE market.products ENABLE TRIGGER $1" >/dev/null
  return 0
}
tps() { grep -o 'tps = [0-9.]*' "$1" | head -1 | awk '{print $3}'; }
mkdir -p $O
rate=""
for r in $(seq 1 $ROUNDS); do
  for v in none rowcast logical; do
    consumer=""; appender=""
    case $v in
      none) triggers "" ;;
      rowcast) triggers products_changed
        target/release/rowcast serve --database-url "$URL" --listen 127.0.0.1:18093 --metrics-listen 127.0.0.1:18094 >/dev/null 2>&1 & consumer=$! ;;
      logical) triggers ""
        $PSQL -d lw -c "ALTER TABLE market.products REPLICA IDENTITY FULL" >/dev/null
        $B/pg_recvlogical -h $S -p $P -U postgres -d lw -S lw_slot --create-slot -P pgoutput >/dev/null
        $B/pg_recvlogical -h $S -p $P -U postgres -d lw -S lw_slot --start -f /dev/null -F 1 \
          -o proto_version=1 -o publication_names=lw_pub >/dev/null 2>&1 & consumer=$!
        PGAPPNAME=capturer $B/pgbench -h $S -p $P -U postgres -n -c 1 -R $(echo "${rate:-$none} / $BATCH" | bc -l) \
          -T $((SECS + 1)) -f $S/append.sql lw > $O/append-$r.txt 2>&1 & appender=$! ;;
    esac
    $PSQL -d lw -c "CHECKPOINT" >/dev/null
    sleep 1
    $B/pgbench -h $S -p $P -U postgres -n -M prepared -c 16 -j 2 -T $SECS -f $S/upd.sql lw > $O/pgbench-$v-$r.txt 2>&1
    [ -n "$appender" ] && wait $appender
    [ -n "$consumer" ] && { kill $consumer; wait $consumer 2>/dev/null || true; }
    if [ $v = logical ]; then
      sleep 1; $PSQL -d lw -c "SELECT pg_drop_replication_slot('lw_slot')" >/dev/null
      $PSQL -d lw -c "ALTER TABLE market.products REPLICA IDENTITY DEFAULT" >/dev/null
    fi
    t=$(tps $O/pgbench-$v-$r.txt)
    [ $v = none ] && none=$t
    [ $v = logical ] && rate=$t
    extra=""; [ $v = logical ] && extra=" (appender: $(tps $O/append-$r.txt) batches/s of $BATCH)"
    printf "round %s %-8s %8.0f tps = %3.0f %% of none%s\n" $r $v $t $(echo "100 * $t / $none" | bc -l) "$extra"
  done
done
cluster_stop $D
