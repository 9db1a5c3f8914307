#!/bin/bash
# Backend CPU (its own utime + stime) per single-row UPDATE transaction of market.products (the
# market trigger on), one backend, a DO loop, synchronous_commit off, for each
# variant (set up / undone by variants/variant-<v>.sql / variants/undo-<v>.sql), interleaved.
# Usage: cpu.sh v1 v2 ...   (ROUNDS, N)
B=/usr/lib/postgresql/15/bin; S=/tmp/wp; P=55434
V=$(cd "$(dirname "$0")" && pwd)/variants
ROUNDS=${ROUNDS:-3}; N=${N:-20000}
PSQL="$B/psql -h $S -p $P -U postgres -q -X"
$PSQL -d wp -c "ALTER TABLE market.products DISABLE TRIGGER bench_notify, DISABLE TRIGGER products_reconcile_carts, ENABLE TRIGGER products_changed"
for r in $(seq 1 $ROUNDS); do
  for v in "$@"; do
    [ -f $V/variant-$v.sql ] && $PSQL -d wp -f $V/variant-$v.sql
    $PSQL -d wp -c "TRUNCATE rowcast.changes" -c "VACUUM ANALYZE rowcast.changes" -c "VACUUM market.products" -c CHECKPOINT
    # CPU ticks (utime + stime, 1/100 s) of this backend itself, from /proc/self/stat
    T="(SELECT split_part(s, ' ', 14)::int + split_part(s, ' ', 15)::int FROM pg_read_file('/proc/self/stat') s)"
    ticks=$($PSQL -d wp -At -c "SET synchronous_commit = off" \
      -c "DO \$\$ BEGIN FOR i IN 1..2000 LOOP UPDATE market.products SET quantity = quantity + 1 WHERE id = 1 + (i % 1000); COMMIT; END LOOP; END \$\$" \
      -c "CREATE TEMP TABLE t0 AS SELECT $T AS t" \
      -c "DO \$\$ BEGIN FOR i IN 1..$N LOOP UPDATE market.products SET quantity = quantity + 1 WHERE id = 1 + (i % 1000); COMMIT; END LOOP; END \$\$" \
      -c "SELECT $T - t FROM t0")
    [ -f $V/undo-$v.sql ] && $PSQL -d wp -f $V/undo-$v.sql
    printf "round %s %-16s %7.1f us/tx (backend CPU)\n" $r $v "$(echo "$ticks * 10000 / $N" | bc -l)"
  done
done
