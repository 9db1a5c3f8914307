#!/bin/bash
# Where the write path's time goes at 16 writers: a standalone cluster under
# /tmp/wp (durable commits, as shipped), pgbench with 16 clients running
# single-row UPDATEs of market.products, one variant at a time, each with its
# real consumer running (no trigger: none; per-row pg_notify: rowcast-floor
# LISTENing; rowcast: `rowcast serve` reading the log). Prints tps per variant
# and round; with PERF=1 also records `perf record -a -g` for 5 s of each
# variant's first round into /tmp/wp/perf-<variant>.data.
# Run as root (initdb runs as the postgres user through setpriv).
set -e
. "$(dirname "$0")/../cluster.sh"
D=/tmp/wp/data; P=55434; S=/tmp/wp
ROUNDS=${ROUNDS:-3}; SECS=${SECS:-10}; CLIENTS=${CLIENTS:-16}
ROWCAST=${ROWCAST:-/work/main/target/release/rowcast}
FLOOR=${FLOOR:-/work/main/target/release/rowcast-floor}
cluster_start $D $S $P 127.0.0.1
URL="postgres://postgres@127.0.0.1:$P/wp"
$PSQL -c "CREATE DATABASE wp"
$ROWCAST migrate --market --database-url "$URL" 2>&1 | tail -1
cluster_seed wp
$PSQL -d wp <<SQL
$(grep -A14 'pub const NOTIFY_TRIGGER' /work/main/bench/src/writers.rs | sed -n '2,14p' | sed 's/";$//')
SQL
# each client its own products (no row-lock waits), as the bench's writers
echo '\set p random(1, 62)
UPDATE market.products SET quantity = quantity + 1 WHERE id = :client_id + 16 * (:p - 1) + 1;' > $S/upd.sql
ALL="ALTER TABLE market.products DISABLE TRIGGER products_changed, DISABLE TRIGGER bench_notify, DISABLE TRIGGER products_reconcile_carts"
run() { # variant, round
  local v=$1 r=$2 pid=""
  case $v in
    no_trigger) $PSQL -d wp -c "$ALL" ;;
    pg_notify_per_row) $PSQL -d wp -c "$ALL" -c "ALTER TABLE market.products ENABLE TRIGGER bench_notify"
      $FLOOR --database-url "$URL" --listen 127.0.0.1:18090 >/dev/null 2>&1 & pid=$! ;;
    rowcast) $PSQL -d wp -c "$ALL" -c "ALTER TABLE market.products ENABLE TRIGGER products_changed"
      $ROWCAST serve --database-url "$URL" --listen 127.0.0.1:18091 --metrics-listen 127.0.0.1:18092 >/dev/null 2>&1 & pid=$! ;;
  esac
  sleep 1
  $PSQL -d wp -c CHECKPOINT
  $B/pgbench -h $S -p $P -U postgres -n -M prepared -c $CLIENTS -j 2 -T 1 -f $S/upd.sql wp >/dev/null 2>&1
  local c0=($(head -1 /proc/stat))
  if [ "${PERF:-0}" = 1 ] && [ "$r" = 1 ]; then
    ( sleep $((SECS/2 - 2)); perf record -a -g -F 997 -o $S/perf-$v.data -- sleep 5 >/dev/null 2>&1 ) &
  fi
  local tps=$($B/pgbench -h $S -p $P -U postgres -n -M prepared -c $CLIENTS -j 2 -T $SECS -f $S/upd.sql wp 2>/dev/null | awk '/^tps/{print $3}')
  local c1=($(head -1 /proc/stat))
  wait_perf=$(jobs -p | grep -v "^$pid$" || true)
  [ -n "$pid" ] && kill $pid && wait $pid 2>/dev/null || true
  sleep 0.5
  # machine CPU (all processes: PostgreSQL, pgbench, the consumer) per transaction
  local busy=$(( (c1[1]+c1[2]+c1[3]+c1[6]+c1[7]) - (c0[1]+c0[2]+c0[3]+c0[6]+c0[7]) ))
  local all=$(( busy + (c1[4]+c1[5]) - (c0[4]+c0[5]) ))
  printf "round %s %-18s clients=%s tps=%8.0f machine_busy=%3d%% machine_cpu_us_per_tx=%6.1f\n" $r $v $CLIENTS $tps \
    $((100*busy/all)) $(echo "$busy * 10000 / ($tps * $SECS)" | bc -l)
}
for r in $(seq 1 $ROUNDS); do
  for v in no_trigger pg_notify_per_row rowcast; do run $v $r; done
done
wait
cluster_stop $D
