"""A/B at the same load: the 10-migration start and the no-op start, main's tree vs this one,
interleaved with psql one process per file and sqitch, on one fsync=on cluster on disk."""
import os, resource, statistics, subprocess, sys, tempfile, time, json
from pathlib import Path
HERE = Path("/work/wt/lean15"); sys.path.insert(0, str(HERE)); sys.path.insert(0, str(HERE / "benchmarks"))
import upgrade_bench as ub
from tests.pgcluster import PgCluster
TREES = {"before (main 7205d25)": Path("/work/main"), "after (lean15)": HERE}
reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
ub.PYCACHE = HERE / "benchmarks/.cache/pycache"; ub.PYCACHE.mkdir(parents=True, exist_ok=True)
cl = PgCluster(conf={"fsync": "on", "log_connections": "on"}, base=Path(tempfile.gettempdir())).start()
work = Path(tempfile.mkdtemp(prefix="lean15-ab-"))
b = ub.Bench(cl, work, None)
def cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN); return r.ru_utime + r.ru_stime
res = {}
try:
    for rep in range(-1, reps):
        for name, root in TREES.items():
            ub.ROOT = root
            db = b.fresh_db("sk")
            cfg, run = b.statekeeper(db, backup=False)
            c0 = cpu(); t, c = run(); c1 = cpu()
            tn, cn = b.sk_noop(db, cfg); c2 = cpu()
            if rep >= 0:
                r = res.setdefault(name, {"apply": [], "noop": [], "cpu_apply": [], "cpu_noop": [], "conns": []})
                r["apply"].append(t); r["noop"].append(tn); r["cpu_apply"].append(c1 - c0); r["cpu_noop"].append(c2 - c1); r["conns"].append(c)
        db = b.fresh_db("sqitch"); c0 = cpu(); t, _ = b.sqitch_run(db); c1 = cpu(); tn, _ = b.sqitch_run(db); c2 = cpu()
        db = b.fresh_db("psql"); c3 = cpu(); tp, _ = b.psql_run(db); c4 = cpu()
        if rep >= 0:
            r = res.setdefault("Sqitch", {"apply": [], "noop": [], "cpu_apply": [], "cpu_noop": []}); r["apply"].append(t); r["noop"].append(tn); r["cpu_apply"].append(c1 - c0); r["cpu_noop"].append(c2 - c1)
            r = res.setdefault("psql", {"apply": [], "cpu_apply": []}); r["apply"].append(tp); r["cpu_apply"].append(c4 - c3)
        print("rep", rep, {k: round(v["apply"][-1], 2) for k, v in res.items()}, file=sys.stderr, flush=True)
finally:
    cl.destroy()
load = os.getloadavg()
print(f"load average after: {load[0]:.2f}/{load[1]:.2f}; median of {reps}, interleaved")
m = lambda xs: statistics.median(xs) if xs else float('nan')
psql = m(res["psql"]["apply"]); sq = m(res["Sqitch"]["apply"]); sqn = m(res["Sqitch"]["noop"])
print(f"{'':24} {'apply':>7} {'vs psql':>8} {'vs Sqitch':>9} {'no-op':>7} {'vs Sqitch no-op':>15} {'cpu apply':>9} {'cpu no-op':>9}")
for k, v in res.items():
    a = m(v["apply"]); n = m(v.get("noop", []))
    print(f"{k:24} {a:6.2f}s {a/psql:7.2f}x {a/sq:8.2f}x {n:6.2f}s {n/sqn:14.2f}x {m(v['cpu_apply']):8.2f}s {m(v.get('cpu_noop', [])):8.2f}s")
json.dump(res, open(HERE / ".bench/ab.json", "w"))
