"""Shared fixtures. Test tiers are described in tests/README.md."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
KERNEL = "linker-nb"

os.environ.setdefault("HF_HUB_OFFLINE", "1")      # tests never download
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _kernel_name() -> str:
    """The venv's kernel when installed (make env does), else the current interpreter's python3."""
    from jupyter_client.kernelspec import KernelSpecManager
    return KERNEL if KERNEL in KernelSpecManager().find_kernel_specs() else "python3"


def run_notebook(name: str, out_dir: Path, timeout: int = 300, **params) -> dict:
    """Execute notebooks/<name>.ipynb with papermill and return its results JSON."""
    import papermill as pm
    src = ROOT / "notebooks" / f"{name}.ipynb"
    out_dir.mkdir(parents=True, exist_ok=True)
    results = out_dir / f"{name}.json"
    pm.execute_notebook(str(src), str(out_dir / f"{name}.ipynb"), parameters={"results_json": str(results),
                        **params}, kernel_name=_kernel_name(), execution_timeout=timeout, progress_bar=False,
                        cwd=str(ROOT / "notebooks"))
    return json.loads(results.read_text())


@pytest.fixture(scope="session")
def notebook_runner(tmp_path_factory):
    """Run a notebook once per (name, params) in this session; later calls reuse the results."""
    cache: dict = {}
    out = tmp_path_factory.mktemp("notebooks")

    def run(name: str, timeout: int = 300, **params) -> dict:
        key = (name, json.dumps(params, sort_keys=True))
        if key not in cache:
            cache[key] = run_notebook(name, out / f"run{len(cache)}", timeout=timeout, **params)
        return cache[key]
    return run


@pytest.fixture(scope="session")
def tiny_pairs(tmp_path_factory):
    """Factory for tiny random-init (base, variant) checkpoints of a family (see linker_nb.testing)."""
    from linker_nb.testing import make_pair
    root = tmp_path_factory.mktemp("ckpt")
    made: dict = {}

    def make(family: str = "llama", **kw):
        key = (family, json.dumps(kw, sort_keys=True, default=str))
        if key not in made:
            made[key] = make_pair(root / f"p{len(made)}", family, **kw)
        return made[key]
    return make


def count_live_tensors(monkeypatch, cls) -> list[int]:
    """Wrap `cls.get` so every tensor it hands out is counted while alive; returns [peak], read after the run."""
    import weakref
    live, peak = [0], [0]
    orig = cls.get

    def get(self, name):
        t = orig(self, name)
        live[0] += 1
        peak[0] = max(peak[0], live[0])
        weakref.finalize(t, lambda: live.__setitem__(0, live[0] - 1))
        return t
    monkeypatch.setattr(cls, "get", get)
    return peak
