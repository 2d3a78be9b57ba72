"""`make bench`: the block-metrics scan and the lazy loader at real model sizes, against the raw read.

For each configuration (default: Qwen2.5-0.5B and Qwen2.5-1.5B, see configs.py) this
  1. writes a synthetic bf16 pair with the real tensor names, shapes and file layout into benchmarks/scratch/
     (once; reused while the configuration is unchanged);
  2. in a fresh worker process, with the page cache warm (every file read once first), times, interleaved
     `--repeats` times:
       raw/readinto   every byte of both checkpoints' files read once into a reused buffer (the floor);
       read stage     the scan's own read path alone (`Checkpoint.get`, mmap populate, xxh3 hash), to show
                      how much of the scan is reading and how much is arithmetic;
       scan           `linker_nb.analyses.scan.scan(base, variant)` (hashing on, as in the notebooks);
     and reports median throughput (GB/s of tensor bytes, 1 GB = 1e9 B) and the ratios scan/raw;
  3. samples RssAnon from /proc/self/status in a thread during each scan (page-cache pages of the mmapped
     checkpoint files are file-backed, so they do not count) and compares the peak with the baseline
     RssAnon of the same process after `import torch, linker_nb` plus 2 x the largest tensor in float32;
  4. measures the lazy loader when `linker_nb.linker` provides it: with the donor (base) loaded and resident,
     the time and RssAnon growth until every weight of the recipient (variant) is resident, for `Linker.add`
     with a cached share plan, with a cold plan (scan first), and for a naive `from_pretrained` (see
     `measure_loader`; thresholds LOADER_TAU make every block shareable).

Prints a table and writes benchmarks/results.json (machine description included).
Usage: python benchmarks/run.py [--configs qwen2.5-0.5b,qwen2.5-1.5b] [--repeats 3] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.configs import CONFIGS, DEFAULT_CONFIGS, write_pair  # noqa: E402

SCRATCH = ROOT / "benchmarks" / "scratch"
RESULTS = ROOT / "benchmarks" / "results.json"
READ_BUF = 64 << 20
TARGETS = {"scan_over_raw_min": 0.9, "peak_anon_max": "2 x largest float32 tensor + interpreter baseline",
           "cached_plan_time_over_naive_max": 0.5, "cached_plan_memory_over_unique_max": 1.05,
           "kernel_compile_cached_max_s": 10.0, "sweep_over_loop_max": 0.65}


# -- measurement primitives (run inside the worker process) ----------------------------------------------
def rss(field: str = "RssAnon") -> int:
    """Resident memory of this process in bytes from /proc/self/status: RssAnon (anonymous) or RssFile (mapped
    file pages, e.g. memory-mapped safetensors)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status (the memory benchmark needs Linux)")


def rss_anon() -> int:
    return rss("RssAnon")


class PeakSampler:
    """Samples RssAnon (and RssAnon + RssFile) every `interval` seconds in a daemon thread; `.peak` and
    `.peak_total` are the maxima seen."""

    def __init__(self, interval: float = 0.001):
        self.interval, self.peak, self.peak_total, self._stop = interval, 0, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        anon = rss_anon()
        self.peak = max(self.peak, anon)
        self.peak_total = max(self.peak_total, anon + rss("RssFile"))

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._sample()
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self._sample()


def weight_files(d: Path) -> list[Path]:
    return sorted(Path(d).glob("*.safetensors"))


def raw_readinto(dirs) -> int:
    """Read every byte of the weight files once into one reused buffer; return bytes read."""
    buf = bytearray(READ_BUF)
    mv, n = memoryview(buf), 0
    for d in dirs:
        for p in weight_files(d):
            with open(p, "rb", buffering=0) as f:
                while True:
                    k = f.readinto(mv)
                    if not k:
                        break
                    n += k
    return n


def read_stage(base: str, variant: str) -> int:
    """The scan's own read stage alone: every tensor pair through `Checkpoint.get` (safetensors, memory-mapped),
    mapped with MADV_POPULATE_READ and hashed, exactly as the scan's prefetch thread does; return bytes."""
    from linker_nb.io import pairing, stream
    from linker_nb.io.references import open_checkpoint
    b_ck, v_ck = open_checkpoint(base), open_checkpoint(variant)
    triples, _ = pairing.pair_names(b_ck, v_ck)
    n = 0
    for _, nb, nv in triples:
        x, y, _ = stream.read_pair(b_ck, v_ck, nb, nv, True)
        n += x.numel() * x.element_size() + y.numel() * y.element_size()
    return n


def arith_stage(pairs, workers: int) -> None:
    """The scan's arithmetic alone: the fused kernel (`tensor_stats`) over already-read, already-mapped pairs on
    `workers` threads, as the scan runs it."""
    from linker_nb.analyses import kernel
    for x, y in pairs:
        kernel.tensor_stats(x, y, kernel.CHUNK_ELEMS, workers)


def measure_pair(base: str, variant: str, repeats: int = 3) -> dict:
    """Raw-read floors, scan throughput and scan peak anonymous memory of one pair (this process)."""
    import gc

    import torch  # (part of the baseline footprint)

    from linker_nb.io.references import open_checkpoint
    from linker_nb.analyses.scan import scan
    gc.collect()
    baseline = rss_anon()
    dirs = [Path(base), Path(variant)]
    b_ck, v_ck = open_checkpoint(base), open_checkpoint(variant)
    tensor_bytes = b_ck.nbytes + v_ck.nbytes
    largest = max((i for ck in (b_ck, v_ck) for i in (ck.info(n) for n in ck.names)), key=lambda i: i.numel)
    t0 = time.perf_counter()
    file_bytes = raw_readinto(dirs)  # warm the page cache
    warm_s = time.perf_counter() - t0
    times: dict[str, list[float]] = {"readinto": [], "read_stage": [], "arith_stage": [], "scan": []}
    from linker_nb.io import pairing, stream
    triples, _ = pairing.pair_names(b_ck, v_ck)
    mapped = [stream.read_pair(b_ck, v_ck, nb, nv, False)[:2] for _, nb, nv in triples]
    peaks, summary = [], None
    for _ in range(repeats):  # interleaved, so a noisy neighbour slows all three alike
        t0 = time.perf_counter()
        raw_readinto(dirs)
        times["readinto"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        read_stage(base, variant)
        times["read_stage"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        arith_stage(mapped, torch.get_num_threads())
        times["arith_stage"].append(time.perf_counter() - t0)
        gc.collect()
        with PeakSampler() as ps:
            t0 = time.perf_counter()
            r = scan(base, variant, progress=False)
            times["scan"].append(time.perf_counter() - t0)
        peaks.append(ps.peak)
        summary = {k: r.summary()[k] for k in ("n_blocks", "n_tensors", "mean_cos", "mean_frob", "bytes_read")}
        del r
    del mapped
    med = {k: statistics.median(v) for k, v in times.items()}
    gbps = {k: tensor_bytes / v / 1e9 for k, v in med.items()}
    largest_f32 = largest.numel * 4
    peak = max(peaks)
    return {
        "tensor_bytes": tensor_bytes, "file_bytes": file_bytes, "warm_read_s": warm_s, "repeats": repeats,
        "times_s": times, "median_s": med, "gbps": gbps,
        "scan_over_readinto": gbps["scan"] / gbps["readinto"],
        "scan_over_read_stage": gbps["scan"] / gbps["read_stage"],
        "torch_threads": torch.get_num_threads(),
        "largest_tensor": {"name": largest.name, "shape": list(largest.shape), "dtype": largest.dtype,
                           "float32_bytes": largest_f32},
        "baseline_anon_bytes": baseline, "scan_peak_anon_bytes": peak, "scan_peak_anon_all": peaks,
        "scan_peak_over_baseline_bytes": peak - baseline,
        "peak_budget_bytes": 2 * largest_f32 + baseline,
        "peak_over_largest_f32": (peak - baseline) / largest_f32,
        "scan_summary": summary,
    }


# -- lazy loader (needs linker_nb.linker) --------------------------------------------------------------
# Thresholds under which every block of the synthetic variant (eps ~ 0.047, cos ~ 0.9988) is shareable: the
# target is about a recipient whose blocks are all shareable.
LOADER_TAU = {"tau_cos": 0.99, "tau_frob": 0.1}


def loader_available() -> bool:
    try:
        from linker_nb.linker.memory import Linker  # noqa: F401
    except ImportError:
        return False
    return True


def materialize(model, keep=()) -> int:
    """Copy every parameter not backed by a storage in `keep` into anonymous memory; return bytes copied.

    Both `from_pretrained` and the lazy loader hand back CPU tensors that still point into the mmapped
    checkpoint (nothing is read until first use), so "loaded" means different things for them. Copying makes
    both end where a model on an accelerator ends: every weight resident. The donor's storages are kept.
    """
    n = 0
    for p in model.parameters():
        if p.untyped_storage().data_ptr() in keep:
            continue
        p.data = p.data.clone()
        n += p.numel() * p.element_size()
    return n


def measure_loader(phase: str, base: str, variant: str, plan_cache: str) -> dict:
    """One lazy-loader phase in this process, with the donor (base, bf16, CPU) loaded and resident.

    phase: "cold" (no plan: scan, then load; writes the plan), "cached" (plan from the cache), "naive"
    (`from_pretrained` of the recipient, what the loader replaces), or "cached_no_guard" (diagnostic: cached,
    with `aliasing`'s alias-time integrity checksum replaced by a no-op, to size what that step costs). Timed twice: the call as it returns
    (`lazy_s`: tensors may still point into the mmapped file) and until every recipient weight is resident
    (`time_s`, the figure compared). Memory is the growth of RssAnon over the bring-up (page-cache pages of
    the checkpoint files are not counted; the donor is already resident in anonymous memory).
    """
    if phase == "cached_no_guard":  # diagnostic only: the alias-time integrity checksum skipped
        from unittest import mock

        from linker_nb.linker import alias
        with mock.patch.object(alias, "_checksum", lambda t: (0, 0)):
            return measure_loader("cached", base, variant, plan_cache) | {"phase": phase}
    import gc

    from linker_nb.linker.memory import Linker, storage_bytes
    from linker_nb.io.models import load_model
    linker = Linker(base, device="cpu", dtype="bfloat16", plan_cache=plan_cache, **LOADER_TAU)
    materialize(linker.donor)  # resident, as on the accelerator the paper's donor sits on
    donor_storages = {p.untyped_storage().data_ptr() for p in linker.donor.parameters()}
    gc.collect()
    anon0 = rss_anon()
    out: dict = {"phase": phase, "donor_load_s": linker.donor_load_s}
    with PeakSampler() as ps:
        t0 = time.perf_counter()
        if phase == "naive":
            model = load_model(variant, device="cpu", dtype="bfloat16")
        else:
            model = linker.add("recipient", variant, refresh_plan=(phase == "cold"))
        out["lazy_s"] = time.perf_counter() - t0
        out["materialized_bytes"] = materialize(model, keep=donor_storages)
        out["time_s"] = time.perf_counter() - t0
    gc.collect()
    out |= {"held_anon_bytes": rss_anon() - anon0, "peak_anon_bytes": ps.peak - anon0,
            "recipient_storage_bytes": storage_bytes(model),
            "recipient_distinct_bytes": storage_bytes(linker.donor, model) - storage_bytes(linker.donor)}
    if phase != "naive":
        plan, status = linker.plans["recipient"]
        rep = linker.reports["recipient"]
        out |= {"plan_status": status, "n_shared": len(plan.shared), "n_blocks": plan.n_blocks,
                "unique_bytes": rep.bytes_read, "scan_s": plan.scan_s if phase == "cold" else 0.0,
                "build_s": rep.build_s, "alias_s": rep.alias_s, "load_unique_s": rep.load_unique_s}
    return out


def loader_summary(phases: dict) -> dict:
    cold, cached, naive = phases["cold"], phases["cached"], phases["naive"]
    unique = cached["unique_bytes"]
    out = {"phases": phases, "tau": LOADER_TAU, "all_blocks_shared": cached["n_shared"] == cached["n_blocks"],
            "cached_over_naive_time": cached["time_s"] / naive["time_s"],
            "cold_over_naive_time": cold["time_s"] / naive["time_s"],
            "unique_bytes": unique,
            "cached_held_over_unique": cached["held_anon_bytes"] / unique,
            "cached_peak_over_unique": cached["peak_anon_bytes"] / unique,
            "cached_distinct_over_unique": cached["recipient_distinct_bytes"] / unique,
            "naive_held_over_unique": naive["held_anon_bytes"] / unique}
    if "cached_no_guard" in phases:
        out["cached_no_guard_over_naive_time"] = phases["cached_no_guard"]["time_s"] / naive["time_s"]
    return out


# -- driver -------------------------------------------------------------------------------------------
def measure_compile() -> dict:
    """Seconds to compile (or load from numba's on-disk cache) the scan kernel of every stored dtype, in this
    process; `run_compile` calls it in two fresh processes sharing an empty cache directory (cold, then cached)."""
    t0 = time.perf_counter()
    from linker_nb.analyses import kernel
    import_s = time.perf_counter() - t0
    return {"import_s": import_s, "compile_s": kernel.compile_kernels(),
            "cache_dir": os.environ.get("NUMBA_CACHE_DIR", "beside linker_nb/analyses/kernel.py")}


def run_compile(scratch: Path) -> dict:
    import shutil
    cache = Path(scratch) / "numba-cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = {"NUMBA_CACHE_DIR": str(cache)}
    cold = run_worker("compile", Path("."), Path("."), extra_env=env)
    cached = run_worker("compile", Path("."), Path("."), extra_env=env)
    return {"cold": cold, "cached": cached}


def _worker(args) -> None:
    if args.worker == "scan":
        out = measure_pair(args.base, args.variant, args.repeats)
    elif args.worker == "compile":
        out = measure_compile()
    elif args.worker == "sweep":
        from benchmarks.sweep import measure_sweep
        out = measure_sweep(Path(args.base), Path(args.variant), args.sweep_blocks)
    else:
        out = measure_loader(args.worker, args.base, args.variant, args.plan_cache)
    print("@@RESULT@@" + json.dumps(out))


def run_worker(kind: str, base: Path, variant: Path, repeats: int = 1, plan_cache: str = "",
               timeout: float = 3600, extra_env: dict | None = None, sweep_blocks: str = "") -> dict:
    """Run one measurement in a fresh interpreter (clean baseline, no allocator state carried over)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--base", str(base),
           "--variant", str(variant), "--repeats", str(repeats), "--plan-cache", plan_cache]
    if sweep_blocks:
        cmd += ["--sweep-blocks", sweep_blocks]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               **(extra_env or {}))
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("@@RESULT@@")]
    if p.returncode or not lines:
        raise RuntimeError(f"benchmark worker {kind!r} on {base} failed (exit {p.returncode}):\n"
                           f"{p.stderr[-3000:]}")
    return json.loads(lines[-1][len("@@RESULT@@"):])


def machine() -> dict:
    import torch
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    mem = next((int(ln.split()[1]) * 1024 for ln in open("/proc/meminfo") if ln.startswith("MemTotal")), None)
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "mem_bytes": mem,
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "loadavg_start": os.getloadavg()}


def _fmt_gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def table(results: dict) -> str:
    rows = [("config", "GB", "readinto GB/s", "read stage GB/s", "arith GB/s", "scan GB/s", "scan/readinto",
             "peak-base GiB", "2xf32 GiB", "peak-base / f32")]
    for name, r in results["configs"].items():
        g = r["gbps"]
        rows.append((name, f"{r['tensor_bytes'] / 1e9:.2f}", f"{g['readinto']:.2f}", f"{g['read_stage']:.2f}",
                     f"{g['arith_stage']:.2f}", f"{g['scan']:.2f}", f"{r['scan_over_readinto']:.2f}",
                     _fmt_gib(r["scan_peak_over_baseline_bytes"]),
                     _fmt_gib(2 * r["largest_tensor"]["float32_bytes"]), f"{r['peak_over_largest_f32']:.2f}"))
    out = _align(rows)
    rows = [("config", "naive s", "cached-plan s", "cold-plan s", "cached/naive", "no-guard/naive", "unique MiB",
             "cached held/unique", "cached peak/unique", "naive held/unique", "shared")]
    for name, r in results["configs"].items():
        ld = r.get("loader", {})
        if "phases" not in ld:
            rows.append((name, ld.get("status", "not measured"), *[""] * 9))
            continue
        ph = ld["phases"]
        rows.append((name, f"{ph['naive']['time_s']:.2f}", f"{ph['cached']['time_s']:.2f}",
                     f"{ph['cold']['time_s']:.2f}", f"{ld['cached_over_naive_time']:.2f}",
                     f"{ld.get('cached_no_guard_over_naive_time', float('nan')):.2f}",
                     f"{ld['unique_bytes'] / 2**20:.0f}", f"{ld['cached_held_over_unique']:.2f}",
                     f"{ld['cached_peak_over_unique']:.2f}", f"{ld['naive_held_over_unique']:.2f}",
                     f"{ph['cached']['n_shared']}/{ph['cached']['n_blocks']}"))
    out += "\n\n" + _align(rows)
    if "compile" in results:
        c = results["compile"]
        out += (f"\n\nscan kernel compile: {c['cold']['compile_s']:.2f} s cold, {c['cached']['compile_s']:.2f} s "
                f"cached (new process)")
    if "sweep" in results:
        w = results["sweep"]
        out += (f"\nper-block sweep, blocks {w['blocks']} of {w['n_blocks']}, {len(w['alphas'])} alphas on "
                f"{w['tokens'][0]} x {w['tokens'][1]} tokens: loop {w['loop_s']:.1f} s, sweep {w['sweep_s']:.1f} s, "
                f"sweep/loop {w['sweep_over_loop']:.3f}, max |diff| {w['max_abs_diff_nats']:.2e} nats")
    return out


def _align(rows) -> str:
    w = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w[i]) for i, c in enumerate(row)) for row in rows)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                    help=f"comma-separated, from {sorted(CONFIGS)}")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scratch", default=str(SCRATCH))
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--base", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--plan-cache", default="", help=argparse.SUPPRESS)
    ap.add_argument("--no-loader", action="store_true", help="skip the lazy-loader measurements")
    ap.add_argument("--sweep-blocks", default="7,22",
                    help="blocks of the sweep benchmark: 'all', 'start::step' or a list (default 7,22; see sweep.py)")
    ap.add_argument("--no-sweep", action="store_true", help="skip the interpolation sweep benchmark")
    args = ap.parse_args(argv)
    if args.worker:
        return _worker(args)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        ap.error(f"unknown configuration(s) {unknown}; choose from {sorted(CONFIGS)}")
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    t_all = time.perf_counter()
    results = {"command": "make bench  (python benchmarks/run.py " + " ".join(argv or sys.argv[1:]) + ")",
               "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": machine(), "targets": TARGETS,
               "configs": {}}
    print("== scan kernel compile time (cold, then cached, in fresh processes) ...", flush=True)
    results["compile"] = run_compile(Path(args.scratch))
    for name in names:
        t0 = time.perf_counter()
        base, var = write_pair(name, args.scratch)
        write_s = time.perf_counter() - t0
        print(f"== {name}: pair ready in {write_s:.1f} s; measuring ...", flush=True)
        r = run_worker("scan", base, var, args.repeats)
        r["write_s"] = write_s
        r["repo"] = CONFIGS[name]["repo"]
        if args.no_loader or not loader_available():
            r["loader"] = {"status": "not measured" + (": linker_nb.linker is not available"
                                                       if not args.no_loader else " (--no-loader)")}
        else:
            print("   lazy loader: cold plan, cached plan, naive from_pretrained ...", flush=True)
            cache = Path(args.scratch) / name / "plans"
            if cache.exists():
                for old in cache.glob("plan-*.json"):
                    old.unlink()  # the cold phase must scan
            phases = {ph: run_worker(ph, base, var, plan_cache=str(cache))
                      for ph in ("cold", "cached", "naive", "cached_no_guard")}
            r["loader"] = loader_summary(phases)
        results["configs"][name] = r
    if not args.no_sweep:
        from benchmarks import sweep
        b, v = sweep.write_pair(Path(args.scratch))
        print(f"== per-block sweep vs loop, SmolLM2-135M shape, blocks {args.sweep_blocks} ...", flush=True)
        results["sweep"] = run_worker("sweep", b, v, sweep_blocks=args.sweep_blocks)
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["total_s"] = time.perf_counter() - t_all
    print(table(results))
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out} in {results['total_s']:.0f} s")
    return results


if __name__ == "__main__":
    main()
