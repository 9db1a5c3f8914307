#!/bin/bash
set -e
B=/usr/lib/postgresql/15/bin; D=/tmp/rd/data; P=55435; S=/tmp/rd
pkill -f "postgres -D $D" 2>/dev/null || true; sleep 1
rm -rf $D; mkdir -p $D; chown postgres:postgres $D $S
setpriv --reuid=postgres --regid=postgres --init-groups $B/initdb -D $D -U postgres -A trust >/dev/null
printf "port = $P\nunix_socket_directories = '$S'\nlisten_addresses = '127.0.0.1'\n" >> $D/postgresql.conf
setpriv --reuid=postgres --regid=postgres --init-groups $B/pg_ctl -D $D -l $S/pg.log -w start >/dev/null
PSQL="$B/psql -h $S -p $P -U postgres -q -X"
$PSQL -c "CREATE DATABASE rd"
/work/main/target/release/rowcast migrate --market --database-url "postgres://postgres@127.0.0.1:$P/rd" 2>&1 | tail -1
$PSQL -d rd -c "INSERT INTO market.farms (id, name, farmer_id) SELECT g, 'f'||g, 100+g FROM generate_series(1,10) g; INSERT INTO market.products (id, farm_id, name, unit, quantity) SELECT g, 1 + g % 10, 'p'||g, 'lb', 100 FROM generate_series(1,1000) g;"
echo 'UPDATE market.products SET quantity = quantity + 1 WHERE id = 1 + (random()*999)::int;' > $S/u.sql
$B/pgbench -h $S -p $P -U postgres -n -f $S/u.sql -t 3000 -c 1 rd > /dev/null
$PSQL -d rd -Atc "SELECT pg_current_snapshot()" > $S/s0
$PSQL -d rd -c "UPDATE market.products SET quantity = quantity + 1 WHERE id = 5"
$PSQL -d rd -Atc "SELECT pg_current_snapshot()" > $S/s1
$PSQL -d rd -c "VACUUM ANALYZE rowcast.changes"; $PSQL -d rd -Atc "SELECT count(*) FROM rowcast.changes"
setpriv --reuid=postgres --regid=postgres --init-groups $B/pg_ctl -D $D -w stop >/dev/null
cat $S/s0 $S/s1
