#!/usr/bin/env python3
"""Writes the read statements compared in instructions.txt to /tmp/lost-column/
(derived from ../lean-read/statement-after.sql, the read before 013's tx
column), then: for f in /tmp/lost-column/*.sql; do ../lean-read/ir-read.sh $f
"'S0','S0','S1',0,5000,0" one-$(basename $f .sql); done (S0, S1 from
../lean-read/setup.sh)."""
import os

here = os.path.dirname(os.path.abspath(__file__))
base = open(os.path.join(here, "../lean-read/statement-after.sql")).read()
out = "/tmp/lost-column"
os.makedirs(out, exist_ok=True)

PRUNED = "(SELECT pruned_below FROM rowcast.retention)::text AS pruned)"
s013 = base.replace(
    "c.xid::text, NULL::int8\n", "c.xid::text, NULL::int8, c.tx\n"
).replace(
    "pg_visible_in_snapshot(x.xid, p.hi) AS first\n",
    "pg_visible_in_snapshot(x.xid, p.hi) AS first, coalesce(x.tx, x.xid)::text AS tx\n",
)
variants = {
    "013": s013,
    "014-subquery": s013.replace(
        PRUNED,
        "(SELECT pruned_below FROM rowcast.retention)::text AS pruned,\n"
        "           (SELECT lost_before FROM rowcast.retention)::text AS lost)",
    ).replace("c.xid::text, NULL::int8, c.tx\n", "c.xid::text, NULL::int8, c.tx, p.lost\n"),
    "014-array": s013.replace(
        PRUNED,
        "(SELECT ARRAY[pruned_below::text, lost_before::text] FROM rowcast.retention) AS marks)",
    ).replace("p.pruned, c.xid::text, NULL::int8, c.tx", "p.marks[1], c.xid::text, NULL::int8, c.tx, p.marks[2]"),
    "014-from": s013.replace(
        PRUNED,
        "r.pruned_below::text AS pruned,\n           r.lost_before::text AS lost\n      FROM rowcast.retention r)",
    ).replace("c.xid::text, NULL::int8, c.tx\n", "c.xid::text, NULL::int8, c.tx, p.lost\n"),
    "014-concat": s013.replace(
        PRUNED,
        "(SELECT pruned_below::text || coalesce(' ' || lost_before::text, '') FROM rowcast.retention) AS pruned)",
    ),
}
for name, sql in variants.items():
    assert sql != base
    open(os.path.join(out, f"statement-{name}.sql"), "w").write(sql)
    print(os.path.join(out, f"statement-{name}.sql"))
