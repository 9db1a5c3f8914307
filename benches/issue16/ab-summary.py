#!/usr/bin/env python3
"""Per step of an A/B (ab-step.sh with METRICS=1): the source's and the writers' backend CPU per change (pg-*.txt),
the bench's PostgreSQL CPU per change, p50/p99, lost/dup (tp-*.txt), and reads and
notifications per change between 10 s and 25 s into the step (metrics-*.txt).
usage: [ROUNDS="1 2"] ab-summary.py DIR BIN... (e.g. lean-read bell lean pacelean)"""
import os, re, sys
os.chdir(sys.argv[1]); bins = sys.argv[2:]
rounds = [int(r) for r in os.environ.get("ROUNDS", "1 2").split()]
def metr(f):
    t, cur = {}, None
    for l in open(f):
        if l.startswith('## '):
            cur = l[3:].strip(); t[cur] = {}
        elif cur and l.strip():
            k, v = l.rsplit(' ', 1); t[cur][k] = float(v)
    d = {k: t['t25'][k] - t['t10'].get(k, 0) for k in t['t25']}
    ch = max(d.get('rowcast_events_total', 0), 1)
    return d.get('rowcast_source_read_seconds_count', 0) / ch, d.get('rowcast_source_notifications_total', 0) / ch
print("writes/s server round | source us/change writers us/change | PG us/change (bench) | p50 p99 ms | lost dup | reads/change notifications/change")
for rate in (100, 250, 500):
    for b in bins:
        for r in rounds:
            pg = {}
            for l in open(f'pg-{b}-{rate}-{r}.txt'):
                p = l.split(); pg[p[-1]] = float(p[0])
            m = re.search(r'^\| throughput \| rowcast .*$', open(f'tp-{b}-{rate}-{r}.txt').read(), re.M).group(0).split('|')
            rpc, npc = metr(f'metrics-{b}-{rate}-{r}.txt')
            src = pg['rowcast-source'] / 100 * 1e6 / rate
            wr = pg['rowcast-bench-writer'] / 100 * 1e6 / rate
            print(f"{rate} {b} {r} | {src:.0f} {wr:.0f} | {m[19].strip()} | {m[9].strip()} {m[10].strip()} | {m[14].strip()} {m[15].strip()} | {rpc:.2f} {npc:.2f}")
