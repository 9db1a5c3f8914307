#!/bin/bash
# Writer-side A/B on the write-profile cluster (run.sh must have created it;
# this script restarts it): 16 pgbench clients of single-row UPDATEs, the
# market trigger on, no rowcast server (so the doorbell stays disarmed after
# the first ring, as under load). Each variant is set up by its SQL from
# variants/variant-<name>.sql and undone by variants/undo-<name>.sql; variants interleave.
# Usage: variants.sh name1 name2 ...   (ROUNDS, SECS, CLIENTS as in run.sh)
B=/usr/lib/postgresql/15/bin
V=$(cd "$(dirname "$0")" && pwd)/variants
D=/tmp/wp/data; P=55434; S=/tmp/wp
ROUNDS=${ROUNDS:-3}; SECS=${SECS:-10}; CLIENTS=${CLIENTS:-16}
setpriv --reuid=postgres --regid=postgres --init-groups $B/pg_ctl -D $D -l $S/pg.log -w start >/dev/null 2>&1
PSQL="$B/psql -h $S -p $P -U postgres -q -X"
$PSQL -d wp -c "ALTER TABLE market.products DISABLE TRIGGER bench_notify, DISABLE TRIGGER products_reconcile_carts, ENABLE TRIGGER products_changed"
for r in $(seq 1 $ROUNDS); do
  for v in "$@"; do
    [ -f $V/variant-$v.sql ] && $PSQL -d wp -f $V/variant-$v.sql
    $PSQL -d wp -c "TRUNCATE rowcast.changes" -c "VACUUM ANALYZE rowcast.changes" -c "VACUUM market.products" -c CHECKPOINT
    $B/pgbench -h $S -p $P -U postgres -n -M prepared -c $CLIENTS -j 2 -T 1 -f $S/upd.sql wp >/dev/null 2>&1
    c0=($(head -1 /proc/stat))
    tps=$($B/pgbench -h $S -p $P -U postgres -n -M prepared -c $CLIENTS -j 2 -T $SECS -f $S/upd.sql wp 2>/dev/null | awk '/^tps/{print $3}')
    c1=($(head -1 /proc/stat))
    [ -f $V/undo-$v.sql ] && $PSQL -d wp -f $V/undo-$v.sql
    busy=$(( (c1[1]+c1[2]+c1[3]+c1[6]+c1[7]) - (c0[1]+c0[2]+c0[3]+c0[6]+c0[7]) ))
    all=$(( busy + (c1[4]+c1[5]) - (c0[4]+c0[5]) ))
    printf "round %s %-16s tps=%8.0f machine_busy=%3d%% machine_cpu_us_per_tx=%6.1f\n" $r $v $tps \
      $((100*busy/all)) $(echo "$busy * 10000 / ($tps * $SECS)" | bc -l)
  done
done
