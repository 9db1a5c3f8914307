#!/bin/bash
# Writers on slow storage (issue #16): a durable cluster under /tmp/slow whose
# commits each take DELAY us more (commit_delay, commit_siblings = 0: every
# flushing commit sleeps), 1,000 products, pgbench with 16 clients each
# updating its own products (no row-lock waits) for SECS s, at full speed.
# Variants: none (no capture trigger), nodeless (the trigger, no node
# running: nobody sleeps, nobody rings), and rowcast serve from each binary
# in BINS (/work/bin/rowcast-<name>). Prints tps and the source's counters
# (notifications = rings, changes read, the commit estimate) per variant and
# round. Run as root from anywhere; the cluster is migrated by the last of BINS.
set -e
. "$(dirname "$0")/../cluster.sh"
D=/tmp/slow/data; P=55436; S=/tmp/slow
SECS=${SECS:-10}; DELAY=${DELAY:-4000}; ROUNDS=${ROUNDS:-2}
BINS=${BINS:-"rawwritev probe3"}
LAST=/work/bin/rowcast-${BINS##* }
cluster_start $D $S $P 127.0.0.1 "commit_siblings = 0
commit_delay = $DELAY"
URL="postgres://postgres@127.0.0.1:$P/wp"
$PSQL -c "CREATE DATABASE wp"
$LAST migrate --market --database-url "$URL" 2>&1 | tail -1
cluster_seed wp
$PSQL -d wp -c "ALTER TABLE market.products DISABLE TRIGGER products_reconcile_carts"
echo '\set p random(1, 62)
UPDATE market.products SET quantity = quantity + 1 WHERE id = :client_id + 16 * (:p - 1) + 1;' > $S/upd.sql
counters() {
  curl -s 127.0.0.1:18192/metrics 2>/dev/null | grep -E "^rowcast_(source_notifications_total|events_total|source_commit_seconds) "
}
run() { # variant, round
  local v=$1 r=$2 pid=""
  case $v in
    none) $PSQL -d wp -c "ALTER TABLE market.products DISABLE TRIGGER products_changed" ;;
    nodeless) $PSQL -d wp -c "ALTER TABLE market.products ENABLE TRIGGER products_changed" ;;
    *) $PSQL -d wp -c "ALTER TABLE market.products ENABLE TRIGGER products_changed"
       /work/bin/rowcast-$v serve --database-url "$URL" --listen 127.0.0.1:18191 --metrics-listen 127.0.0.1:18192 >/dev/null 2>&1 & pid=$! ;;
  esac
  sleep 1.5
  local before=$(counters)
  local tps=$($B/pgbench -h $S -p $P -U postgres -n -M prepared -c 16 -j 2 -T $SECS -f $S/upd.sql wp 2>/dev/null | awk '/^tps/{print $3}')
  local after=$(counters)
  [ -n "$pid" ] && kill $pid && wait $pid 2>/dev/null || true
  printf "round %s %-10s delay=%sus tps=%7.0f" $r $v $DELAY $tps
  if [ -n "$pid" ]; then
    paste <(echo "$before") <(echo "$after") | awk '{n=$1; sub(/^rowcast_(source_)?/,"",n); if (n=="commit_seconds") printf " %s=%.2fms", n, $4*1000; else printf " %s=%d", n, $4-$2}'
  fi
  echo
}
for r in $(seq 1 $ROUNDS); do
  for v in none nodeless $BINS; do run $v $r; done
done
cluster_stop $D
