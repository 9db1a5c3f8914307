#!/bin/bash
# Instructions (valgrind callgrind's Ir, deterministic where CPU time on this
# VM is not) per single-row UPDATE transaction of market.products with the
# market trigger on, in a single-user backend on the write-profile cluster
# (created by run.sh, then stopped), for each variant set up / undone by
# variants/variant-<v>.sql / variants/undo-<v>.sql, each followed by its
# .2.sql if present (a variant without files is the schema as migrated; some
# files are links to the migration they apply or restore): (Ir of a warm-up
# and N transactions - Ir of the warm-up alone) / N. Usage: ir.sh v1 v2 ...   (N, default 300)
B=/usr/lib/postgresql/15/bin; S=/tmp/wp; D=$S/data
V=$(cd "$(dirname "$0")" && pwd)/variants
N=${N:-300}
single() { # sql file, name -> Ir
  setpriv --reuid=postgres --regid=postgres --init-groups valgrind --tool=callgrind \
    --callgrind-out-file=$S/cg-$2.out $B/postgres --single -D $D wp < $1 2>&1 | awk '/Collected :/{print $4}'
}
loop() { echo "DO \$\$ BEGIN FOR i IN 1..$1 LOOP UPDATE market.products SET quantity = quantity + 1 WHERE id = 1 + (i % 1000); COMMIT; END LOOP; END \$\$;"; }
# single-user -j input: each statement ends with a semicolon and an empty line
statements() {
  python3 - "$1" <<'PY'
import re, sys
s = "\n".join(l for l in open(sys.argv[1]).read().splitlines() if not l.startswith("--"))
out, quoted, buf = [], False, ""
for line in s.splitlines(keepends=True):
    if len(re.findall(r"\$[a-z]*\$", line)) % 2:
        quoted = not quoted
    buf += line
    if not quoted and line.rstrip().endswith(";"):
        out.append(buf.strip("\n")); buf = ""
print("\n\n".join(out) + "\n")
PY
}
prep() { # the variant's SQL, then a clean log and table
  { echo "ALTER TABLE market.products DISABLE TRIGGER bench_notify, DISABLE TRIGGER products_reconcile_carts, ENABLE TRIGGER products_changed;"
    echo; [ -f "$1" ] && statements "$1"
    echo; echo "TRUNCATE rowcast.changes;"; echo; echo "VACUUM market.products;"; echo; } > $S/prep.sql
  setpriv --reuid=postgres --regid=postgres --init-groups $B/postgres --single -j -D $D wp < $S/prep.sql > $S/prep.log 2>&1
  if grep -i "error" $S/prep.log; then return 1; fi
}
for v in "$@"; do
  prep $V/variant-$v.sql || exit 1
  if [ -e $V/variant-$v.2.sql ]; then prep $V/variant-$v.2.sql || exit 1; fi
  { echo "SET synchronous_commit = off;"; loop 100; } > $S/base.sql
  { echo "SET synchronous_commit = off;"; loop 100; loop $N; } > $S/full.sql
  a=$(single $S/base.sql $v-base); b=$(single $S/full.sql $v)
  prep $V/undo-$v.sql || exit 1
  if [ -e $V/undo-$v.2.sql ]; then prep $V/undo-$v.2.sql || exit 1; fi
  printf "%-16s %8.0f instructions/tx\n" $v "$(echo "($b - $a) / $N" | bc -l)"
done
