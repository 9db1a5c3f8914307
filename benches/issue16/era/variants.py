#!/usr/bin/env python3
"""Writes the statements of instructions.txt to /tmp/era/ (from
../lean-read/statement-after.sql brought to 014's read), then:
for f in before era float raw; do ../lean-read/ir-read.sh /tmp/era/statement-$f.sql
"'S0','S0','S1',0,5000,0" one-$f; done (S0, S1 from ../lean-read/setup.sh;
"'S1','S1',NULL,0,5000,0" for the empty read)."""
import os

here = os.path.dirname(os.path.abspath(__file__))
base = open(os.path.join(here, "../lean-read/statement-after.sql")).read()
out = "/tmp/era"
os.makedirs(out, exist_ok=True)
MARKS = "(SELECT pruned_below::text || coalesce(' ' || lost_before::text, '') FROM rowcast.retention) AS pruned)"
before = (
    base.replace("c.xid::text, NULL::int8\n", "c.xid::text, NULL::int8, c.tx\n")
    .replace(
        "pg_visible_in_snapshot(x.xid, p.hi) AS first\n",
        "pg_visible_in_snapshot(x.xid, p.hi) AS first, coalesce(x.tx, x.xid)::text AS tx\n",
    )
    .replace("(SELECT pruned_below FROM rowcast.retention)::text AS pruned)", MARKS)
)
ERA = """greatest(coalesce((extract(epoch FROM pg_stat_get_bgwriter_stat_reset_time()
    - timestamptz '2000-01-01 00:00:00+00') * 1000)::int8, 1), 1)"""
FLOAT = "greatest(coalesce((date_part('epoch', pg_stat_get_bgwriter_stat_reset_time()) * 1000)::int8, 1), 1)"
RAW = "(pg_stat_get_bgwriter_stat_reset_time() IS NULL)"
variants = {"before": before}
for name, expr in {"era": ERA, "float": FLOAT, "raw": RAW}.items():
    variants[name] = before.replace(MARKS, MARKS.replace("(SELECT ", f"(SELECT {expr}::text || ' ' || ", 1))
for name, sql in variants.items():
    open(os.path.join(out, f"statement-{name}.sql"), "w").write(sql)
    print(os.path.join(out, f"statement-{name}.sql"))
