"""`statekeeper report` on big ledgers: peak RSS and wall time of each format.

    python benchmarks/report_bench.py                 # 25,000 runs (~1M events), ~5 minutes
    python benchmarks/report_bench.py --runs 2000     # quicker
    python benchmarks/report_bench.py --dir DIR       # keep (and reuse) the ledgers in DIR

Two real runs are made once with the real CLI (tests/upgrade_support.py: one completed, one
rolled back by a restore); their events are copied, with fresh run ids, into a SQLite ledger
(one sealed append per run, as the runner's appends are per stream) until it holds ``--runs``
runs, alternating the two. Then ``statekeeper report`` runs in a fresh process per format
(`benchmarks/ledger_bench.py`'s launcher: the child's own ru_maxrss): CSV and JSON over the
whole ledger, HTML over a ledger of ``--html-runs`` runs (1,000). The targets of issue 10 are
checked at the end (met / missed); the exit status is 0 either way.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.ledger_bench import child_rss  # noqa: E402

RSS_TARGET_MB = 200
HTML_TARGET_S = 5.0


def progress(msg: str) -> None:
    print(f"... {msg}", file=sys.stderr, flush=True)


def template_runs(work: Path) -> tuple[list[list[tuple[str, str]]], Path]:
    """The events (type, payload text) of a real completed run and a real rolled-back run."""
    from tests.upgrade_support import SCENARIOS, make_project, seed

    key = work / "key.pem"
    url = f"sqlite:///{work / 'template.db'}"
    for name in ("forward", "restore"):
        (work / f"{name}.db").touch()
        target = f"sqlite:///{work / name}.db"
        seed("sqlite", target)
        p = make_project(work / name, "sqlite", target, SCENARIOS[name], ledger_url=url,
                         key=str(key))
        p.cli("start", "--to", "v2.6")
    conn = sqlite3.connect(work / "template.db")
    runs: dict[str, list[tuple[str, str]]] = {}
    for stream, type_, payload in conn.execute(
            "SELECT stream, type, payload FROM ledger_events WHERE stream LIKE 'upgrade/%' "
            "ORDER BY seq"):
        runs.setdefault(stream, []).append((type_, payload))
    conn.close()
    return list(runs.values()), key


def build(url: str, key: Path, templates: list[list[tuple[str, str]]], n: int) -> int:
    import ledger
    import ledger.canonical as canonical

    ids = [str(canonical.loads(t[0][1])["run_id"]) for t in templates]
    events = 0
    with ledger.Ledger(url, signer=ledger.load_signer(key), tool="report-bench") as lg:
        for i in range(n):
            k = i % len(templates)
            run_id = f"20250101-{i // 10000:06d}-{i % 10000:06x}"
            batch = [ledger.NewEvent(t, canonical.loads(p.replace(ids[k], run_id)))
                     for t, p in templates[k]]
            lg.append(f"upgrade/{run_id}", batch, expected_position=0)
            events += len(batch)
            if i and i % 5000 == 0:
                progress(f"{i} runs")
    return events


def ledger_for(directory: Path, name: str, key: Path, templates: list[list[tuple[str, str]]],
               runs: int) -> tuple[str, int]:
    path = directory / f"{name}-{runs}.db"
    url = f"sqlite:///{path}"
    if path.exists():  # kept from an earlier run with --dir
        conn = sqlite3.connect(path)
        n = conn.execute("SELECT count(*) FROM ledger_events").fetchone()[0]
        conn.close()
        return url, n
    progress(f"building a ledger of {runs} runs in {path}")
    t = time.perf_counter()
    n = build(url, key, templates, runs)
    progress(f"  {n} events in {time.perf_counter() - t:.0f} s")
    return url, n


def report(url: str, key: Path, fmt: str, out: Path, cwd: Path) -> tuple[float, float, int]:
    cli = [sys.executable, "-c", "from cli.main import main; main()", "--ledger", url,
           "--key", str(key), "report", "--format", fmt, "--out", str(out)]
    rss, dt = child_rss(cli, cwd)
    return rss, dt, out.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=25_000)
    ap.add_argument("--html-runs", type=int, default=1_000)
    ap.add_argument("--dir", type=Path, default=None)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="report-bench-"))
    directory = a.dir or tmp
    directory.mkdir(parents=True, exist_ok=True)
    try:
        templates, key = template_runs(tmp)
        # a kept ledger (--dir) was sealed with an earlier key: the report verifies against
        # the keys the chain introduced and never signs, so any key file will do here
        big_url, big_n = ledger_for(directory, "big", key, templates, a.runs)
        small_url, small_n = ledger_for(directory, "small", key, templates, a.html_runs)
        rows = []
        for fmt, url, runs, n in (("csv", big_url, a.runs, big_n),
                                  ("json", big_url, a.runs, big_n),
                                  ("html", small_url, a.html_runs, small_n),
                                  ("pdf", small_url, a.html_runs, small_n)):
            progress(f"report --format {fmt} over {runs} runs ({n} events)")
            rss, dt, size = report(url, key, fmt, tmp / f"report.{fmt}", directory)
            rows.append((fmt, runs, n, rss, dt, size))
        base, _ = child_rss([sys.executable, "-c", "import statekeeper.report.source, ledger"],
                            directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n| format | runs | events | peak RSS | wall time | output |")
    print("|---|---:|---:|---:|---:|---:|")
    for fmt, runs, n, rss, dt, size in rows:
        print(f"| {fmt} | {runs:,} | {n:,} | {rss:.0f} MB | {dt:.1f} s | "
              f"{size / 2**20:.1f} MB |")
    print(f"\nbaseline: a process that only imports the report's modules peaks at {base:.0f} MB")
    print("(wall time includes verifying the whole ledger first: every hash, link and seal)\n")
    by = {r[0]: r for r in rows}
    for fmt in ("csv", "json"):
        rss = by[fmt][3]
        print(f"target: {fmt} over {by[fmt][2]:,} events under {RSS_TARGET_MB} MB peak RSS: "
              f"{'met' if rss < RSS_TARGET_MB else 'MISSED'} ({rss:.0f} MB)")
    dt = by["html"][4]
    print(f"target: html for {a.html_runs:,} runs in a few seconds (< {HTML_TARGET_S:g} s): "
          f"{'met' if dt < HTML_TARGET_S else 'MISSED'} ({dt:.1f} s)")


if __name__ == "__main__":
    main()
