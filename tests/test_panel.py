"""The panel on Dask: pair lists, the store, header-only checks, bad pairs, resume, and a worker killed mid-scan.

Unit tests run in-process; the others use one `LocalCluster` of 2 worker processes per module (started in
~7-15 s on the 2-core machine, closed by the fixture) and tiny checkpoints (`linker_nb.testing.make_pair`).
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from linker_nb.analyses import panel
from linker_nb.analyses import panel_tables as tables
from linker_nb.analyses.panel_store import Store, entry_key
from linker_nb.analyses.scan import scan
from linker_nb.io import registry
from linker_nb.io.checkpoint import Checkpoint

pytestmark = pytest.mark.timeout(180)


# -- pairs -----------------------------------------------------------------------------------------------------
NEW_LAYOUTS = ["tiny-moe", "tiny-olmo2", "tiny-phi3"]     # MoE, post-norm, fused projections (registry order)


def test_default_panel_is_every_embedded_family():
    assert panel.embedded_families() == ["tiny", *NEW_LAYOUTS]
    pairs = panel.panel_pairs()
    assert [p.label for p in pairs[:6]] == ["tiny base → instruct", "tiny base → chat", "tiny base → qa",
                                            "tiny base → coder", "tiny base → scratch", "tiny instruct → coder"]
    assert [p.label for p in pairs[6:]] == [f"{k} {pair}" for k in NEW_LAYOUTS for pair in
                                            ("base → instruct", "base → coder", "instruct → coder")]
    assert [p.default for p in pairs] == [True] + [False] * 5 + [True, False, False] * 3
    assert pairs[5].kind == pairs[-1].kind == "cross-variant" and pairs[0].base_ref == registry.get("tiny").base
    assert panel.family_list(None, "qwen7b") == ["qwen7b"]
    assert panel.family_list(None, "tiny") == panel.family_list(None, "tiny-moe") == ["tiny", *NEW_LAYOUTS]


def test_paper_panel_and_vintage_pairs():
    pairs = panel.panel_pairs(["paper"])
    keys = {p.family for p in pairs}
    assert "tiny" not in keys and {"qwen7b", "llama1b", "gemma2b", "llama2-7b"} <= keys
    assert len(pairs) == len({(p.base_ref, p.variant_ref) for p in pairs}) == 18
    t1 = [p for p in pairs if p.paper.get("table1")]
    assert len(t1) == 8 and all(p.default for p in t1)  # Table 1's eight families
    # the families added since the paper (no transcribed figure) are their own group, never in the paper's panel
    recent = panel.recent_families()
    assert {"qwen3-4b", "qwen3-30b-a3b", "mixtral-8x7b", "olmo2-7b", "phi4"} <= set(recent)
    assert not set(recent) & keys and not set(recent) & set(panel.embedded_families())
    assert panel.family_list(["recent", "qwen7b"]) == recent + ["qwen7b"]
    # a family with an older release brings that release's pair along (Table 10)
    assert [p.family for p in panel.panel_pairs(["llama8b"])] == ["llama8b", "llama2-7b"]


def test_bad_pair_lists_fail_with_the_fix():
    with pytest.raises(ValueError, match=r"pairs\[1\].*\[base, variant\]"):
        panel.panel_pairs(pairs=[["a", "b"], ["only-one"]])
    with pytest.raises(registry.UnknownModel, match="Known keys"):
        panel.panel_pairs(["no-such-family"])
    with pytest.raises(ValueError, match="no pairs"):
        panel.panel_pairs(pairs=[])


# -- store -----------------------------------------------------------------------------------------------------
def test_store_round_trip_and_exactly_once(tmp_path, tiny_pairs):
    b, v = tiny_pairs("qwen2", tied=True)
    res = scan(b, v, progress=False)
    st = Store(tmp_path / "s")
    fb, fv = Checkpoint(b).fingerprint(), Checkpoint(v).fingerprint()
    assert st.has(fb, fv) is None
    key, written = st.write(res, fb, fv, {"label": "x"})
    assert written and key == entry_key(fb, fv) and st.has(fb, fv) == key and st.has(fv, fb) is None
    back = st.load(key)
    assert back.blocks == res.blocks and back.summary() == res.summary()
    assert [t.name for t in back.tensors] == [t.name for t in res.tensors]
    assert back.tensors[3] == res.tensors[3] and back.tensors[0].shape == res.tensors[0].shape
    # a second writer of the same pair (a task re-run after its worker was presumed dead) changes nothing
    before = (st.path(key) / "summary.json").stat().st_mtime_ns
    assert st.write(res, fb, fv) == (key, False)
    assert st.keys() == [key] and (st.path(key) / "summary.json").stat().st_mtime_ns == before
    assert not list((st.root / "tmp").iterdir())
    assert len(st.blocks(key)) == len(res.blocks)


# -- header-only checks ----------------------------------------------------------------------------------------
class _T:
    def __init__(self, shape, dtype="BF16"):
        self.shape, self.dtype = shape, dtype


class _Meta:
    def __init__(self, width):
        self.files_metadata = {"model.safetensors": type("F", (), {"tensors": {
            "model.embed_tokens.weight": _T([96, width]), "model.layers.0.mlp.up_proj.weight": _T([48, width])}})()}


def test_incompatible_hub_pair_fails_on_headers_before_any_download(monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    widths = {"org/small": 32, "org/large": 64}
    cfg = tmp_path / "config.json"
    cfg.write_text('{"model_type": "llama"}')

    def snapshot_download(repo, local_files_only=False, **kw):
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        raise AssertionError(f"downloaded {repo}")  # the header check must fail first
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", lambda repo, revision=None: _Meta(widths[repo]))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name, revision=None: str(cfg))
    pair = panel.PanelPair(None, "small", "large", "org/small", "org/large", "given")
    t0 = time.perf_counter()
    out = panel.scan_pair(pair, str(tmp_path / "store"))
    assert out["status"] == "failed" and time.perf_counter() - t0 < 5
    assert "ScanMismatch" in out["error"] and "org/small" in out["error"] and "org/large" in out["error"]
    assert Store(tmp_path / "store").failures()[0]["error"] == out["error"]


def test_offline_hub_id_is_a_recorded_failure_naming_it(tmp_path):
    pair = panel.PanelPair(None, "a", "b", "org/not-cached", "org/other", "given")  # HF_HUB_OFFLINE=1 (conftest)
    out = panel.scan_pair(pair, str(tmp_path / "store"))
    assert out["status"] == "failed" and "CheckpointNotFound" in out["error"] and "org/not-cached" in out["error"]


# -- on a Dask cluster -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    c = panel.connect(n_workers=2, dashboard_address=":0")
    c.wait_for_workers(2, timeout=60)
    yield c
    c.close(timeout=30)


def _bad_pairs(root: Path, tiny_pairs):
    """Two good pairs and three bad ones: a missing directory, a truncated file, a different architecture."""
    import shutil
    b, v = tiny_pairs("llama")
    qb, _ = tiny_pairs("qwen2")
    trunc = root / "truncated"
    shutil.copytree(v, trunc)
    f = trunc / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    tiny = registry.get("tiny")
    return [[tiny.base, tiny.variant.ref], [str(b), str(v)], [str(b), str(root / "missing")], [str(b), str(trunc)],
            [str(b), str(qb)]], trunc, qb


def test_bad_pairs_are_recorded_and_the_rest_completes(client, tmp_path, tiny_pairs):
    refs, trunc, qb = _bad_pairs(tmp_path, tiny_pairs)
    lines: list[str] = []
    run = panel.run_panel(client, panel.panel_pairs(pairs=refs), tmp_path / "store", echo=lines.append)
    assert [o["status"] for o in run.outcomes] == ["scanned", "scanned", "failed", "failed", "failed"]
    errors = [f["error"] for f in run.failures]
    assert "CheckpointNotFound" in errors[0] and str(tmp_path / "missing") in errors[0]
    assert "CheckpointCorrupt" in errors[1] and str(trunc) in errors[1] and "truncated" in errors[1]
    assert "ScanMismatch" in errors[2] and "model_type" in errors[2] and str(qb) in errors[2]
    assert len(lines) == 5 and sum("FAILED" in ln for ln in lines) == 3
    assert len(run.store.keys()) == 2 and len(run.store.failures()) == 3
    # the good pairs' numbers are the in-process scan's
    for p, o in zip(run.pairs[:2], run.outcomes[:2]):
        assert run.store.load(o["key"]).blocks == scan(p.base_ref, p.variant_ref, progress=False).blocks


def test_resume_scans_only_the_pairs_not_stored(tmp_path):
    pairs, store = panel.panel_pairs(), Store(tmp_path / "store")
    k = 2
    c = panel.connect(n_workers=2, dashboard_address=":0")

    def slow_down():  # in each worker: every scan takes 1.5 s longer, so pairs are still queued at the stop
        import linker_nb.analyses.panel as m
        real = m.scan
        m.scan = lambda b, v, **kw: (time.sleep(1.5), real(b, v, **kw))[1]
    try:
        c.run(slow_down)
        futures = panel.submit(c, pairs, store)
        got = []
        for o in panel.outcomes(futures, pairs, store, echo=None):
            got.append(o)
            if len(got) == k:
                break  # the run is stopped: the cluster goes away with pairs in flight
    finally:
        c.close(timeout=30)
    stored = {key: (store.path(key) / "summary.json").stat().st_mtime_ns for key in store.keys()}
    assert k <= len(stored) <= k + 2 < len(pairs)  # at most the two pairs in flight finished after the stop
    c = panel.connect(n_workers=2, dashboard_address=":0")
    try:
        run = panel.run_panel(c, pairs, store, echo=None)
    finally:
        c.close(timeout=30)
    assert len(run.status("scanned")) == len(pairs) - len(stored) and len(run.status("stored")) == len(stored)
    assert {o["key"] for o in run.status("stored")} == set(stored)
    assert {key: (store.path(key) / "summary.json").stat().st_mtime_ns for key in stored} == stored  # untouched
    assert len(store.keys()) == len(pairs)


def test_a_worker_killed_mid_scan_is_retried_elsewhere_and_stored_once(client, tmp_path):
    pairs, store = panel.panel_pairs(), Store(tmp_path / "store")
    marker = tmp_path / "slow-scan-started"

    def slow_down():  # runs in each worker process: the chat pair's first scan announces itself and hangs
        import linker_nb.analyses.panel as m
        real = getattr(m, "_real_scan", m.scan)

        def slow(b, v, **kw):
            if str(v.ref).endswith("chat") and not marker.exists():
                marker.write_text(str(os.getpid()))
                time.sleep(600)
            return real(b, v, **kw)
        m._real_scan, m.scan = real, slow

    client.run(slow_down)
    try:
        futures = panel.submit(client, pairs, store)
        deadline = time.time() + 60
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.2)
        victim = int(marker.read_text())
        assert victim in client.run(os.getpid).values()
        os.kill(victim, signal.SIGKILL)  # without the kill the pair would hang past the test's timeout
        outs = list(panel.outcomes(futures, pairs, store, echo=None))
    finally:
        client.run(lambda: setattr(__import__("linker_nb.analyses.panel", fromlist=["x"]), "scan",
                                   __import__("linker_nb.analyses.scan", fromlist=["x"]).scan))
    assert all(o["status"] in ("scanned", "stored") for o in outs), [o["error"] for o in outs]
    chat = next(o for o in outs if o["pair"]["variant"] == "chat")
    assert chat["status"] == "scanned" and chat["pid"] != victim
    assert len(store.keys()) == len(pairs)  # every pair exactly once
    assert sorted(store.summary(k)["pair"]["label"] for k in store.keys()) == sorted(p.label for p in pairs)


# -- aggregates ------------------------------------------------------------------------------------------------
class _Scan:  # what the aggregates read of a ScanResult, for registry families nobody downloads in tests
    def __init__(self, eps):
        self.mean_frob = eps


def _default(key, eps):
    fam = registry.get(key)
    return panel.PanelPair(key, "base", fam.default_variant, fam.base, fam.variant.ref, fam.variant.kind, True,
                           fam.variant.paper), _Scan(eps)


def test_figure2_uses_measured_gains_before_transcribed_ones():
    entries = [_default("qwen3b", 0.01), _default("llama1b", 0.15), _default("gemma2b", 0.05)]
    fig = tables.figure2(entries)
    assert fig["points"] == [] and fig["without_gain"] == ["qwen3b", "llama1b", "gemma2b"]  # none transcribed
    fig = tables.figure2(entries, {"qwen3b": -1.0, "llama1b": 8.0, "gemma2b": 5.0})
    assert fig["n"] == 3 and {q["source"] for q in fig["points"]} == {"measured"}
    assert fig["pearson"] == pytest.approx(0.6 / (0.0104 * 42) ** 0.5)  # by hand and fig["paper"] == {"pearson": 0.819, "n": 8}


def test_figure2_reads_transcribed_gains_from_the_registry(monkeypatch):
    import dataclasses
    fam = registry.get("qwen3b")
    v = dataclasses.replace(fam.variant, paper={**fam.variant.paper, "figure2": {"delta_mmlu": -0.5}})
    monkeypatch.setitem(registry.REGISTRY, "qwen3b", dataclasses.replace(fam, variants={**fam.variants, "instruct": v}))
    fig = tables.figure2([_default("qwen3b", 0.01), _default("llama1b", 0.15)], {"llama1b": 8.0})
    assert [(q["family"], q["gain"], q["source"]) for q in fig["points"]] == [("qwen3b", -0.5, "transcribed"),
                                                                             ("llama1b", 8.0, "measured")]
    assert fig["pearson"] is None  # two points: no correlation


def test_table10_measures_the_tightening_of_each_vintage_pair():
    entries = [_default("mistral7b", 0.006), _default("mistral7b-v01", 0.14), _default("llama8b", 0.045),
               _default("llama2-7b", 0.052), _default("qwen3b", 0.011)]
    t = tables.table10(entries)
    assert list(t.index) == ["Mistral-7B-v0.1 (Sep '23)", "Llama-2-7B (Jul '23)"]
    assert t["measured tightening"].tolist() == pytest.approx([0.14 / 0.006, 0.052 / 0.045])
    assert t["paper tightening"].tolist() == [23.3, 1.15]
    assert tables.table10(entries[-1:]) is None


def test_aggregates_of_a_panel_where_every_pair_failed_are_empty():
    assert tables.table1([]).empty and tables.table2([]).empty and tables.depth_profiles([]) == {}
    assert tables.table10([]) is None and tables.figure2([])["n"] == 0
    assert list(tables.table2([]).columns)[:4] == ["kind", "mean cos", "mean ε", "region"]


def test_bench_projection_arithmetic():
    """benchmarks/panel.py's projection: total bytes over the workers' throughput, never below the largest pair."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.panel import PARAMS_B, project
    p = project(1.0, 0.0)
    sizes = [4 * PARAMS_B[q.family] for q in panel.panel_pairs(["paper"])]
    assert p["paper"]["pairs"] == 18 and p["paper"]["gb"] == pytest.approx(sum(sizes))
    assert p["paper"]["hours"][1] == pytest.approx(sum(sizes) / 3600)
    assert p["paper"]["hours"][8] == pytest.approx(max(sum(sizes) / 8, max(sizes)) / 3600)
    assert p["lineage"]["hours"][32] == pytest.approx(500 * 4 * 7.62 / 32 / 3600)


def test_panel_results_document_without_papermill(tmp_path):
    """schemas.panel on a panel run in-process (scan_pair called directly): the documented keys, the failure,
    per-family thresholds, and a document that is plain JSON."""
    import json
    from linker_nb.nb import params, schemas
    from linker_nb.nb.results import write_results
    ns = {"__annotations__": {"model": str, "tau_cos": "Optional[float]", "tau_frob": "Optional[float]",
                              "results_json": str}, "model": "tiny", "tau_cos": None, "tau_frob": None,
          "results_json": ""}
    run = params.setup(ns)
    tiny = registry.get("tiny")
    pairs = panel.panel_pairs(pairs=[[tiny.base, tiny.variant.ref], [tiny.base, str(tmp_path / "missing")]])
    st = Store(tmp_path / "store")
    result = panel.PanelRun(pairs, [panel.scan_pair(p, str(st.root)) for p in pairs], st, 1.0, "", 0)
    doc = schemas.panel(run, result, tables.load(result))
    assert doc["schema_version"] == schemas.SCHEMA_VERSION and doc["study"] == "07_panel"
    assert doc["tau_cos"] is None and doc["counts"] == {"scanned": 1, "stored": 0, "failed": 1}
    ok, bad = doc["pairs"]
    assert ok["mean_frob"] == pytest.approx(scan(tiny.base, tiny.variant.ref, progress=False).mean_frob)
    assert (ok["tau_cos"], ok["tau_frob"]) == registry.CONSERVATIVE  # an explicit pair: App. E's tier
    assert bad["status"] == "failed" and str(tmp_path / "missing") in doc["failures"][0]["error"]
    assert [r["pair"] for r in doc["table1"]] == ["base → instruct"]  # explicit pairs are Table 1 rows too
    assert doc["table10"] is None and len(doc["table2"]) == 1 and list(doc["figure1"]) == ["base → instruct"]
    back = json.loads((write_results(tmp_path / "r.json", doc), (tmp_path / "r.json").read_text())[1])
    assert back["pairs"][0]["key"] == ok["key"]
