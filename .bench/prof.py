import os, sys, subprocess, tempfile
from pathlib import Path
ROOT = Path("/work/wt/lean15"); sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "benchmarks"))
from tests.pgcluster import PgCluster
from tests.upgrade_support import SEED_SQL
import upgrade_bench as ub
cl = PgCluster().start()
work = Path(tempfile.mkdtemp(prefix="lean15-"))
db = cl.createdb("b1"); cl.psql(";\n".join(SEED_SQL) + ";", db)
cfg = ub.write_statekeeper_project(work / "p", cl.url(db), backup=False)
env = dict(os.environ, PYTHONPATH=str(ROOT))
subprocess.run([sys.executable, "-m", "cli", "--config", str(cfg), "start", "--to", "v2.6", "--from", "v2.5"], cwd=cfg.parent, env=env, check=True, capture_output=True)
child = "import sys; sys.argv=['statekeeper', *sys.argv[1:]]; from cli.main import main; main()"
p = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(ROOT / ".bench/noop.prof"), "-m", "cli", "--config", str(cfg), "start", "--to", "v2.7"], cwd=cfg.parent, env=env, capture_output=True, text=True)
print(p.returncode, p.stderr[-500:])
cl.destroy()
