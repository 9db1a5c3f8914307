# A standalone PostgreSQL 15 cluster for the issue #16 scripts, sourced by
# them (run as root: initdb and pg_ctl run as the postgres user through
# setpriv). Durable commits, as shipped.
#   cluster_start DATA SOCKDIR PORT LISTEN [EXTRA_CONF]   (sets $PSQL)
#   cluster_seed DB       10 farms, 1,000 products (quantity 100)
#   cluster_stop DATA
B=/usr/lib/postgresql/15/bin
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
cluster_start() {
  local d=$1 s=$2 p=$3 listen=$4 extra=$5
  pkill -f "postgres -D $d" 2>/dev/null || true; sleep 1
  rm -rf "$d"; mkdir -p "$d" "$s"; chown postgres:postgres "$d" "$s"
  as_postgres $B/initdb -D "$d" -U postgres -A trust >/dev/null
  printf "port = %s\nunix_socket_directories = '%s'\nlisten_addresses = '%s'\nshared_buffers = 128MB\nmax_connections = 300\n%s\n" \
    "$p" "$s" "$listen" "$extra" >> "$d/postgresql.conf"
  as_postgres $B/pg_ctl -D "$d" -l "$s/pg.log" -w start >/dev/null
  PSQL="$B/psql -h $s -p $p -U postgres -q -X"
}
cluster_seed() {
  $PSQL -d "$1" <<SQL
INSERT INTO market.farms (id, name, farmer_id) SELECT g, 'f'||g, 100+g FROM generate_series(1,10) g;
INSERT INTO market.products (id, farm_id, name, unit, quantity) SELECT g, 1 + g % 10, 'p'||g, 'lb', 100 FROM generate_series(1,1000) g;
SQL
}
cluster_stop() { as_postgres $B/pg_ctl -D "$1" -w stop >/dev/null; }
