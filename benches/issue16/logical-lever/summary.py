#!/usr/bin/env python3
# usage: summary.py DIR...: per variant, PostgreSQL us per change (ALL), and by process, median (min-max) over rounds
import sys, glob, re, collections, statistics
for d in sys.argv[1:]:
    per = collections.defaultdict(lambda: collections.defaultdict(list))
    for f in sorted(glob.glob(f"{d}/cpu-*.txt")):
        v = re.match(r".*/cpu-(.+)-(\d+)\.txt", f).group(1)
        for line in open(f):
            m = re.match(r"\s+(.+?)\s+[\d.]+ % of a core\s+(\d+) us/change", line)
            if m: per[v][m.group(1)].append(int(m.group(2)))
    print(f"## {d}")
    for v in ["none", "notify", "rowcast", "decoding", "pgoutput", "pgoutput-full"] + sorted(k for k in per if k.startswith("append-")):
        if v not in per: continue
        def fmt(xs): return f"{statistics.median(xs):.0f} ({min(xs)}–{max(xs)})"
        parts = "; ".join(f"{k} {fmt(x)}" for k, x in per[v].items() if k != "ALL" and statistics.median(x) >= 5)
        print(f"{v:14s} ALL {fmt(per[v]['ALL'])}  [{parts}]")
