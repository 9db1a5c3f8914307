#!/bin/bash
# What a logical-replication source would cost PostgreSQL (issue #16, the
# lever the README names for PostgreSQL CPU per change): the same writes
# (pgbench, 16 clients, single-row UPDATEs of market.products at RATE/s,
# durable commits) captured five ways, on one standalone cluster with
# wal_level = logical:
#   none      no capture at all (the writers' own cost)
#   notify    the bench's per-row pg_notify trigger, relayed by rowcast-floor
#   rowcast   rowcast's capture trigger, read by a rowcast node (no clients)
#   decoding  no trigger; a logical slot (test_decoding) streamed by pg_recvlogical
#   pgoutput  no trigger; a logical slot (pgoutput, a publication of
#             market.products) streamed by pg_recvlogical
#   pgoutput-full  the same with REPLICA IDENTITY FULL (old rows in the WAL,
#             which previousQuantity needs)
#   append-N  pgoutput, plus what a capturer would add: the decoded changes
#             appended to rowcast.changes in batches of N rows per
#             transaction (RATE/N durable commits per second, one client)
# CPU of every cluster process over 12 s in the middle of each 25 s run
# (cpu.py). Run as root from the repository's root, after
# cargo build --release --workspace. usage: [VARIANTS="none notify ..."] run.sh OUT [RATE] [ROUNDS]
set -e
O=$1; RATE=${2:-500}; ROUNDS=${3:-2}
. benches/issue16/cluster.sh
D=/tmp/lv/data; S=/tmp/lv; P=55441; URL="postgres://postgres@localhost/lv?host=$S&port=$P"
cluster_start $D $S $P '127.0.0.1' "wal_level = logical
max_replication_slots = 8
max_wal_senders = 8"
$PSQL -c "CREATE DATABASE lv"
target/release/rowcast migrate --market --database-url "$URL" 2>&1 | tail -1
cluster_seed lv
$PSQL -d lv <<SQL
$(grep -A14 'pub const NOTIFY_TRIGGER' bench/src/writers.rs | sed -n '2,14p' | sed 's/";$//')
CREATE PUBLICATION lv_pub FOR TABLE market.products;
SQL
echo 'UPDATE market.products SET quantity = quantity + 1 WHERE id = 1 + (random()*999)::int;' > $S/upd.sql
triggers() { # enable | disable, for each capture trigger
  $PSQL -d lv -c "ALTER TABLE market.products DISABLE TRIGGER products_changed, DISABLE TRIGGER bench_notify, DISABLE TRIGGER products_reconcile_carts" >/dev/null
  [ -n "$1" ] && $PSQL -d lv -c "ALTER TABLE market.products ENABLE TRIGGER $1" >/dev/null
  return 0
}
run() { # variant round
  local v=$1 r=$2 consumer="" identity=DEFAULT
  case $v in
    none) triggers "" ;;
    notify) triggers bench_notify
      ROWCAST_FLOOR_DATABASE_URL="$URL" ROWCAST_FLOOR_LISTEN=127.0.0.1:18090 target/release/rowcast-floor >/dev/null 2>&1 & consumer=$! ;;
    rowcast) triggers products_changed
      target/release/rowcast serve --database-url "$URL" --listen 127.0.0.1:18091 >/dev/null 2>&1 & consumer=$! ;;
    decoding|pgoutput|pgoutput-full|append-*) triggers ""
      [ $v = pgoutput-full ] && identity=FULL
      $PSQL -d lv -c "ALTER TABLE market.products REPLICA IDENTITY $identity" >/dev/null
      local plugin=test_decoding opts=""
      [ $v != decoding ] && { plugin=pgoutput; opts="-o proto_version=1 -o publication_names=lv_pub"; }
      $B/pg_recvlogical -h $S -p $P -U postgres -d lv -S lv_slot --create-slot -P $plugin >/dev/null
      $B/pg_recvlogical -h $S -p $P -U postgres -d lv -S lv_slot --start -f /dev/null -F 1 $opts >/dev/null 2>&1 & consumer=$! ;;
  esac
  $PSQL -d lv -c "CHECKPOINT" >/dev/null
  sleep 2
  ( sleep 8; python3 benches/issue16/logical-lever/cpu.py $S $P lv 12 $RATE > $O/cpu-$v-$r.txt ) &
  local cpu=$! appender=""
  case $v in append-*)
    local n=${v#append-}
    echo "INSERT INTO rowcast.changes (topics, event, payload) SELECT ARRAY['product-' || g, 'farm-' || (g % 10)], 'inventory.updated', jsonb_build_object('productId', g::text, 'newQuantity', 100, 'previousQuantity', 99, 'farmId', (g % 10)::text, 'unit', 'lb', 'timestamp', market.epoch_ms()) FROM generate_series(1, $n) g;" > $S/append.sql
    PGAPPNAME=capturer $B/pgbench -h $S -p $P -U postgres -n -c 1 -R $(echo "$RATE / $n" | bc -l) -T 25 -f $S/append.sql lv > $O/append-$v-$r.txt 2>&1 & appender=$! ;;
  esac
  $B/pgbench -h $S -p $P -U postgres -n -c 16 -j 2 -R $RATE -T 25 -f $S/upd.sql lv > $O/pgbench-$v-$r.txt 2>&1
  [ -n "$appender" ] && wait $appender
  wait $cpu
  [ -n "$consumer" ] && { kill $consumer; wait $consumer 2>/dev/null || true; }
  if [ "$plugin" != "" ] && [ $v != none ] && [ $v != notify ] && [ $v != rowcast ]; then
    sleep 1; $PSQL -d lv -c "SELECT pg_drop_replication_slot('lv_slot')" >/dev/null
  fi
  $PSQL -d lv -c "ALTER TABLE market.products REPLICA IDENTITY DEFAULT" >/dev/null
  echo "$v round $r: $(grep -o 'tps = [0-9.]*' $O/pgbench-$v-$r.txt | head -1)"; cat $O/cpu-$v-$r.txt | tail -1
}
mkdir -p $O
for r in $(seq 1 $ROUNDS); do
  for v in ${VARIANTS:-none notify rowcast decoding pgoutput pgoutput-full}; do run $v $r; done
done
cluster_stop $D
