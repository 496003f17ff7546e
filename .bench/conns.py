"""dev harness: where target connections are opened in start / noop start."""
import os, sys, subprocess, tempfile, traceback, json
from pathlib import Path
ROOT = Path("/work/wt/lean15"); sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from tests.pgcluster import PgCluster
from tests.upgrade_support import SEED_SQL
import upgrade_bench as ub

cl = PgCluster().start()
try:
    work = Path(tempfile.mkdtemp(prefix="lean15-"))
    db = cl.createdb("b1")
    cl.psql(";\n".join(SEED_SQL) + ";", db)
    cfg = ub.write_statekeeper_project(work / "p", cl.url(db), backup=False)
    child = r'''
import sys, traceback, psycopg
orig = psycopg.connect
def c(*a, **k):
    st = [f"{f.filename.split('lean15/')[-1]}:{f.lineno}:{f.name}" for f in traceback.extract_stack()[:-1] if "lean15/" in f.filename and "cli/" not in f.filename]
    print("CONNECT", " <- ".join(reversed(st[-6:])), file=sys.stderr)
    return orig(*a, **k)
psycopg.connect = c
sys.argv = ["statekeeper", *sys.argv[1:]]
from cli.main import main
main()
'''
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for args in (["start", "--to", "v2.6", "--from", "v2.5"], ["start", "--to", "v2.7"]):
        p = subprocess.run([sys.executable, "-c", child, "--config", str(cfg), *args], cwd=cfg.parent, env=env, capture_output=True, text=True)
        print("==", args, p.returncode)
        print(p.stdout[-3000:])
        print("\n".join(l for l in p.stderr.splitlines()))
finally:
    pass
import sqlite3, glob
for db in glob.glob(str(work / "p/.statekeeper/ledger.db")):
    c = sqlite3.connect(db)
    print([r[0] for r in c.execute("select name from sqlite_master where type='table'")])
    for t in ("ledger_events", "ledger_seals"):
        try: print(t, c.execute(f"select count(*) from {t}").fetchone())
        except Exception as e: print(e)

cl.destroy()
