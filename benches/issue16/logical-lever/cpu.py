#!/usr/bin/env python3
# usage: cpu.py SOCKDIR PORT DB SECONDS CHANGES_PER_S
# CPU of every process of the cluster (children of its postmaster) over
# SECONDS, by application_name (else backend_type), in % of a core and in
# us per change at CHANGES_PER_S.
import os, subprocess, sys, time, collections
sock, port, db, secs, rate = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
pm = int(open(os.path.join(subprocess.run(["psql", "-h", sock, "-p", port, "-U", "postgres", "-d", db, "-AtXc", "show data_directory"], capture_output=True, text=True).stdout.strip(), "postmaster.pid")).readline())
def ppid(p):
    try: return int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
    except Exception: return None
def cpu(p):
    try:
        f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])
    except Exception: return None
r = subprocess.run(["psql", "-h", sock, "-p", port, "-U", "postgres", "-d", db, "-AtXc",
                    "select pid, coalesce(nullif(application_name,''), backend_type) from pg_stat_activity"], capture_output=True, text=True)
names = {int(a): b for a, b in (l.split("|", 1) for l in r.stdout.splitlines())}
kids = [int(d) for d in os.listdir("/proc") if d.isdigit() and ppid(d) == pm]
a = {k: cpu(k) for k in kids}; t0 = time.time()
time.sleep(secs)
b = {k: cpu(k) for k in kids}; dt = time.time() - t0
agg = collections.Counter()
hz = os.sysconf("SC_CLK_TCK")
for k in kids:
    if a[k] is None or b[k] is None: continue
    agg[names.get(k, "other")] += b[k] - a[k]
tot = sum(agg.values())
for n, t in agg.most_common():
    if t: print(f"  {n:28s} {100*t/hz/dt:6.1f} % of a core  {1e6*t/hz/dt/rate:7.0f} us/change")
print(f"  {'ALL':28s} {100*tot/hz/dt:6.1f} % of a core  {1e6*tot/hz/dt/rate:7.0f} us/change")
