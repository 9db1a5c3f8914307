#!/usr/bin/env python3
# usage: while a bench step runs, python3 pg-backends.py SECONDS (CPU of each PostgreSQL backend of the bench cluster, by application_name)
"""Attribute PostgreSQL CPU by backend (application_name / backend_type) during a running bench."""
import os, subprocess, time, sys, collections
def posts():
    out = subprocess.run(["ps","-eo","pid,args"],capture_output=True,text=True).stdout
    pm=None
    for l in out.splitlines():
        p=l.split(None,1)
        if len(p)==2 and '/postgres' in p[1] and ' -D ' in p[1] and 'rowcast' in p[1].lower() or (len(p)==2 and p[1].startswith('/usr/lib/postgresql') and ' -D ' in p[1]):
            pm=(int(p[0]),p[1])
    return pm
pm=posts()
if not pm: sys.exit("no postmaster")
datadir=pm[1].split(' -D ')[1].split()[0]
lines=open(os.path.join(datadir,'postmaster.pid')).read().splitlines()
port, sockdir = lines[3], lines[4]
def q(sql):
    return subprocess.run(["psql","-h",sockdir,"-p",port,"-U",os.environ.get("PGU","postgres"),"-d","rowcast_bench","-Atc",sql],capture_output=True,text=True)
r=q("select pid, coalesce(nullif(application_name,''),backend_type) from pg_stat_activity")
if r.returncode: print(r.stderr); sys.exit(1)
names={int(a):b for a,b in (l.split('|',1) for l in r.stdout.splitlines())}
def cpu(pid):
    try:
        s=open(f"/proc/{pid}/stat").read(); f=s[s.rfind(')')+2:].split()
        return int(f[11])+int(f[12])
    except Exception: return None
def ppid(d):
    try: return open(f'/proc/{d}/stat').read().rsplit(')',1)[1].split()[1]
    except Exception: return None
def kids():
    return [int(d) for d in os.listdir('/proc') if d.isdigit() and ppid(d)==str(pm[0])]
ks=kids(); a={k:cpu(k) for k in ks}; t0=time.time()
time.sleep(float(sys.argv[1]) if len(sys.argv)>1 else 10)
b={k:cpu(k) for k in ks}; dt=time.time()-t0
agg=collections.Counter()
for k in ks:
    if a[k] is None or b[k] is None: continue
    agg[names.get(k) or 'other']+= (b[k]-a[k])
tot=sum(agg.values())
for n,v in agg.most_common(): print(f"{v/dt:6.1f} %core  {n}")
print(f"{tot/dt:6.1f} %core total over {dt:.1f}s")
