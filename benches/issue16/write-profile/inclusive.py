#!/usr/bin/env python3
"""Inclusive share of functions among perf samples whose call chain holds a
given frame: `perf script -i X.data | inclusive.py FRAME [N]`. Prints the
share of all samples that hold FRAME, then, within those, each function's
inclusive share (unresolved addresses skipped)."""
import collections, re, sys

frame = sys.argv[1]
top = int(sys.argv[2]) if len(sys.argv) > 2 else 80
samples, cur = [], None
for line in sys.stdin:
    if not line.strip():
        if cur:
            samples.append(cur)
        cur = None
    elif not line[0].isspace():
        cur = (line.split()[0], [])
    elif cur is not None:
        m = re.match(r"\s*[0-9a-f]+ (\S+?)(\+0x[0-9a-f]+)? \(", line)
        if m:
            cur[1].append(m.group(1))
if cur:
    samples.append(cur)
hit = [s for s in samples if frame in s[1]]
print(f"{len(hit)} of {len(samples)} samples ({100 * len(hit) / max(1, len(samples)):.1f}%) hold {frame}")
inc = collections.Counter()
for _, chain in hit:
    for f in set(chain):
        inc[f] += 1
for f, c in inc.most_common(top * 3):
    if f == "[unknown]":
        continue
    print(f"{100 * c / max(1, len(hit)):6.1f}% {f}")
