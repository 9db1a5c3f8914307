#!/usr/bin/env python3
"""One line per step of an A/B directory written by ab-step.sh (METRICS=1):
latency, server and PostgreSQL CPU, the source's backend, reads and rings per change."""
import glob, os, re, sys
d = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
def counters(path):
    try:
        parts = open(path).read().split('## t25')
    except OSError:
        return None
    if len(parts) < 2:
        return None
    get = lambda t: {l.split()[0]: float(l.split()[1]) for l in t.splitlines() if l and not l.startswith('#')}
    a, b = get(parts[0].replace('## t10', '')), get(parts[1])
    ch = b['rowcast_events_total'] - a['rowcast_events_total']
    if ch <= 0:
        return None
    reads = (b['rowcast_source_read_seconds_count'] - a['rowcast_source_read_seconds_count']) / ch
    rings = (b['rowcast_source_notifications_total'] - a['rowcast_source_notifications_total']) / ch
    return reads, rings
print('| bin | writes/s | round | p50 ms | p99 ms | srv µs/delivery | PG µs/change | source backend % core | writers % core | reads/change | rings/change |')
print('|---|---|---|---|---|---|---|---|---|---|---|')
for tp in sorted(glob.glob(os.path.join(d, 'tp-*.txt')), key=lambda p: re.findall(r'tp-(.*)-(\d+)-(\d+)\.txt', p)[0][1:] + (p,)):
    bin_, rate, rnd = re.findall(r'tp-(.*)-(\d+)-(\d+)\.txt', tp)[0]
    line = [l for l in open(tp) if l.startswith('| throughput |')]
    if not line:
        continue
    f = [x.strip() for x in line[0].split('|')]
    pg = open(tp.replace('/tp-', '/pg-')).read()
    src = re.search(r'([\d.]+) %core\s+rowcast-source', pg)
    wr = re.search(r'([\d.]+) %core\s+rowcast-bench-writer', pg)
    c = counters(tp.replace('/tp-', '/metrics-'))
    print(f"| {bin_} | {rate} | {rnd} | {f[9]} | {f[10]} | {f[17]} | {f[19]} | {src.group(1) if src else '?'} | {wr.group(1) if wr else '?'} | "
          + (f"{c[0]:.2f} | {c[1]:.3f} |" if c else "? | ? |"))
