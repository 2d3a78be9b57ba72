"""`make bench`, panel part: the Dask panel's wall time on 1 and 2 workers, and a projection to real panels.

Writes `--pairs` synthetic bf16 pairs of the "panel-small" configuration (configs.py: Qwen2 layout, 8 layers,
~54 MB per checkpoint) into benchmarks/scratch/panel/ once, then for each worker count starts a LocalCluster
(one single-threaded worker process per worker, as `panel.connect` does), warms it (imports), and times
`panel.run_panel` over all pairs into a fresh store: every pair is header-checked, fingerprinted, scanned and
written to Parquet. From the measured per-worker throughput (GB/s of checkpoint bytes read by the scans,
1 GB = 1e9 B) it projects the scan time of the paper's panel (`panel_pairs(["paper"])`, 18 pairs, sizes from
the models' parameter counts in bf16) and of a 500-pair lineage study of one 7B base on k workers. Downloads
are not included: on a cluster they usually dominate (see the printed note).

Usage: python benchmarks/panel.py [--pairs 8] [--workers 1,2] [--out benchmarks/panel_results.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.configs import write_pair  # noqa: E402

SCRATCH = ROOT / "benchmarks" / "scratch" / "panel"
RESULTS = ROOT / "benchmarks" / "panel_results.json"
# Parameters (billions) of each paper family's checkpoints, from the model cards; pairs are read in bf16
# (2 bytes per parameter, both ends), so a pair is 4 x params GB. Continued-pretrained variants (Coder, Math)
# have their base's size.
PARAMS_B = {"qwen05b": 0.494, "qwen15b": 1.54, "qwen3b": 3.09, "qwen7b": 7.62, "llama1b": 1.24, "llama3b": 3.21,
            "llama8b": 8.03, "mistral7b": 7.25, "gemma2b": 2.61, "gemma1-2b": 2.51, "mistral7b-v01": 7.24,
            "llama2-7b": 6.74}
LINEAGE = {"pairs": 500, "params_b": 7.62, "workers": (1, 8, 32, 128)}  # every fine-tune of one 7B base


def _pairs(n: int, log=print) -> list[list[str]]:
    out = []
    for i in range(n):
        b, v = write_pair("panel-small", SCRATCH / f"p{i}", seed=i, log=log)
        out.append([str(b), str(v)])
    return out


def measure(refs: list[list[str]], n_workers: int) -> dict:
    """Wall time of one panel over `refs` on a fresh LocalCluster of `n_workers` processes."""
    from linker_nb.analyses import panel
    pairs = panel.panel_pairs(pairs=refs)
    store = SCRATCH / f"store-{n_workers}"
    shutil.rmtree(store, ignore_errors=True)
    t0 = time.perf_counter()
    client = panel.connect(n_workers=n_workers, dashboard_address=":0")
    try:
        client.wait_for_workers(n_workers, timeout=120)
        client.run(lambda: __import__("linker_nb.analyses.scan"))  # imports (torch) out of the timed part
        startup = time.perf_counter() - t0
        run = panel.run_panel(client, pairs, store, progress=False, echo=None)
    finally:
        client.close(timeout=60)
    bad = [o for o in run.outcomes if o["status"] != "scanned"]
    if bad:
        raise RuntimeError(f"benchmark pairs failed: {bad[0]['error']}")
    nbytes = sum(o["summary"]["bytes_read"] for o in run.outcomes)
    scan_s = sum(o["summary"]["elapsed_s"] for o in run.outcomes)
    return {"workers": n_workers, "pairs": len(pairs), "gb": nbytes / 1e9, "startup_s": startup, "wall_s": run.wall_s,
            "gb_per_s": nbytes / 1e9 / run.wall_s, "gb_per_s_per_worker": nbytes / 1e9 / run.wall_s / n_workers,
            "pairs_per_hour": len(pairs) / run.wall_s * 3600, "scan_s_sum": scan_s,
            "overhead_s_per_pair": (run.wall_s * n_workers - scan_s) / len(pairs)}


def project(per_worker_gbps: float, overhead_s: float) -> dict:
    """Scan hours of the paper's panel and of a 500-pair lineage study on k workers, assuming each worker
    keeps `per_worker_gbps` (its own cores and disk bandwidth) plus `overhead_s` per pair."""
    from linker_nb.analyses import panel
    sizes = [4 * PARAMS_B[p.family] for p in panel.panel_pairs(["paper"])]
    out = {"paper": {"pairs": len(sizes), "gb": sum(sizes), "largest_gb": max(sizes), "hours": {}},
           "lineage": {**LINEAGE, "gb": LINEAGE["pairs"] * 4 * LINEAGE["params_b"], "hours": {}}}
    for k in (1, 2, 4, 8):
        # a panel cannot finish before its largest pair, whatever k
        t = max(sum(sizes) / (k * per_worker_gbps), max(sizes) / per_worker_gbps) + len(sizes) * overhead_s / k
        out["paper"]["hours"][k] = t / 3600
    for k in LINEAGE["workers"]:
        per_pair = 4 * LINEAGE["params_b"] / per_worker_gbps + overhead_s
        out["lineage"]["hours"][k] = LINEAGE["pairs"] * per_pair / k / 3600
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    refs = _pairs(args.pairs)
    rows = [measure(refs, int(w)) for w in args.workers.split(",")]
    best = max(rows, key=lambda r: r["gb_per_s_per_worker"])
    proj = project(rows[0]["gb_per_s_per_worker"], rows[0]["overhead_s_per_pair"])
    load = os.getloadavg()
    res = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "load_avg": [round(x, 2) for x in load]}, "runs": rows, "projection": proj,
           "projection_from": "1-worker run", "best_per_worker_gbps": best["gb_per_s_per_worker"]}
    print(f"{'workers':>7} {'pairs':>5} {'GB':>6} {'startup s':>9} {'wall s':>7} {'GB/s':>6} {'GB/s/worker':>11} "
          f"{'pairs/h':>8} {'overhead s/pair':>15}")
    for r in rows:
        print(f"{r['workers']:>7} {r['pairs']:>5} {r['gb']:>6.2f} {r['startup_s']:>9.1f} {r['wall_s']:>7.2f} "
              f"{r['gb_per_s']:>6.2f} {r['gb_per_s_per_worker']:>11.2f} {r['pairs_per_hour']:>8.0f} "
              f"{r['overhead_s_per_pair']:>15.2f}")
    p, lin = proj["paper"], proj["lineage"]
    print(f"projection at {rows[0]['gb_per_s_per_worker']:.2f} GB/s per worker: paper panel ({p['pairs']} pairs, "
          f"{p['gb']:.0f} GB) " + ", ".join(f"{k} worker(s) {h * 60:.0f} min" for k, h in p["hours"].items()))
    print(f"  lineage study ({lin['pairs']} pairs of a {lin['params_b']}B base, {lin['gb'] / 1e3:.1f} TB) "
          + ", ".join(f"{k} workers {h:.1f} h" for k, h in lin["hours"].items()))
    print("  (scan time only: downloading adds checkpoint bytes / network bandwidth per node)")
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
