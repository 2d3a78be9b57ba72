"""Unit and architecture tiers: lm-eval benchmarks on in-memory models (Tables 6-7, App. E tuner, ΔMMLU).

Offline on 2 cores: the tiny family on the bundled tasks, a few dozen items. The assertions hold whatever the
models' skill: shared == unshared when no block is shared, retention and gains computed from the scores, the
tuner's choice consistent with its curve, a missing dataset named with how to cache it.
"""
from __future__ import annotations

import dataclasses
import json
import sys

import pytest

from linker_nb.io import registry, task_data
from linker_nb.linker import benchmarks as bench
from linker_nb.linker import quality

pytest.importorskip("lm_eval")
pytestmark = pytest.mark.timeout(240)
LIMIT = 16   # items per bundled task here: ~0.3 s per model and task on the tiny family


@pytest.fixture(scope="module")
def tiny():
    import torch
    from linker_nb.io import models
    from linker_nb.linker import memory
    torch.set_num_threads(1)  # the fastest for a tiny model on a shared 2-core machine
    fam = registry.get("tiny")
    tok = models.load_tokenizer(fam.base)
    unshared = models.load_model(fam.variants["qa"].ref, device="cpu", dtype="float32")
    return fam, tok, unshared, memory


@pytest.fixture(scope="module")
def suite():
    return bench.prepare(task_data.BUNDLED_TASKS, limit=LIMIT)


def test_bundled_items_are_well_formed_multiple_choice():
    for task in task_data.BUNDLED_TASKS:
        items = task_data.load_items(task)
        assert len(items) == task_data.N_ITEMS
        assert [it["label"] for it in items] == [i % 4 for i in range(len(items))]  # answers spread over A-D
        for it in items:
            assert len(it["choices"]) == 4 and len(set(it["choices"])) == 4 and it["query"].strip()
        words = {len(c.split()) for it in items for c in it["choices"]}
        assert len(words) == 1  # equally long choices: summed log-likelihood compares content, not length
    meta = json.loads((task_data.BUNDLED_DIR / "meta.json").read_text())
    if meta["python"] == sys.version.split()[0]:  # the corpus is this Python's stdlib text
        assert task_data.stale_bundled_items() == []


def test_prepare_keeps_the_settings_and_an_empty_list_runs_nothing(suite):
    assert suite.names == list(task_data.BUNDLED_TASKS)
    assert all(s == {"num_fewshot": 0, "limit": LIMIT, "metric": "acc", "n_tasks": 1} for s in suite.settings.values())
    empty = bench.prepare([])
    assert empty.names == [] and bench.evaluate(None, None, empty) == {}
    with pytest.raises(ValueError, match="limit = 0"):
        bench.prepare(task_data.BUNDLED_TASKS, limit=0)


def test_a_group_scores_the_mean_over_its_tasks_items(tiny):
    """The path MMLU takes (a group of 57 subject tasks): one score per group, weighted by task size."""
    fam, tok, unshared, _ = tiny
    s = bench.prepare(["linker_bundled", *task_data.BUNDLED_TASKS], limit=LIMIT)
    assert s.settings["linker_bundled"]["n_tasks"] == 2 and len(s.datasets["linker_bundled"]) == 2
    score = bench.evaluate(unshared, tok, s)
    assert score["linker_bundled"] == pytest.approx(sum(score[t] for t in task_data.BUNDLED_TASKS) / 2)


def test_shared_equals_unshared_when_no_block_is_shared(tiny, suite, tmp_path):
    fam, tok, unshared, memory = tiny
    linker = memory.Linker(fam.base, tau_cos=fam.tau_cos, tau_frob=fam.tau_frob, device="cpu", dtype="float32",
                           plan_cache=str(tmp_path))
    none = linker.add("none", fam.variants["qa"].ref, shared=())
    full = linker.add("all", fam.variants["qa"].ref)
    assert linker.reports["none"].shared == [] and len(linker.reports["all"].shared) == 8
    scores = bench.evaluate_all(suite, tok, {"none": unshared, "all": unshared}, {"none": none, "all": full},
                                base=linker.donor)
    assert scores["shared"]["none"] == scores["unshared"]["none"]  # exactly: the same weights, the same tokens
    ret = bench.retention(scores)
    for b in suite.names:
        assert all(0 <= scores[m][v][b] <= 1 for m in ("unshared", "shared") for v in ("none", "all"))
        assert ret["none"][b] == (1.0 if scores["unshared"]["none"][b] > 0 else None)
        u = scores["unshared"]["all"][b]
        assert ret["all"][b] == (scores["shared"]["all"][b] / u if u > 0 else None)
        # sharing all 8 blocks is the base's blocks under the variant's embeddings: not the base model itself
        gain = bench.capability_gain(scores, b)
        assert gain["all"] == pytest.approx(100 * (u - scores["base"][b]))
    assert linker.check_integrity() == 8 * 9  # lm-eval wrote nothing into the donor's storage


def test_retention_gain_and_tables_follow_from_the_scores():
    scores = {"benchmarks": ["mmlu", "arc_challenge"], "settings": {},
              "base": {"mmlu": 0.40, "arc_challenge": 0.30},
              "unshared": {"instruct": {"mmlu": 0.50, "arc_challenge": 0.0}},
              "shared": {"instruct": {"mmlu": 0.45, "arc_challenge": 0.1}}}
    assert bench.retention(scores) == {"instruct": {"mmlu": pytest.approx(0.9), "arc_challenge": None}}
    assert bench.capability_gain(scores) == {"instruct": pytest.approx(10.0)}  # ΔMMLU, points
    assert bench.capability_gain({**scores, "base": None}) is None
    assert bench.capability_gain(scores, "hellaswag") is None
    fam = registry.get("qwen05b")
    paper = fam.variants["instruct"].paper
    t6 = bench.table6(scores, {"instruct": 0.36}, {"instruct": paper["table6"]})
    assert t6.loc[("instruct", "measured"), "MMLU"] == pytest.approx(90.0)
    assert t6.loc[("instruct", "paper"), "MMLU"] == 102 and t6.loc[("instruct", "paper"), "ARC"] == 95
    t7 = bench.table7(scores, {"instruct": paper["table7"]})
    assert t7.loc[("(base)", "base"), "MMLU"] == pytest.approx(40.0)
    assert t7.loc[("instruct", "shared"), "ARC"] == pytest.approx(10.0)
    assert t7.loc[("instruct", "paper instruct"), "MMLU"] == 45.8
    assert t7.loc[("instruct", "paper shared"), "ARC"] == 32.3


def test_registry_table7_matches_table6_where_both_are_given():
    """Table 6 is Table 7's shared / instruct, rounded (the paper's own two tables, transcribed separately)."""
    n = 0
    for fam in registry.REGISTRY.values():
        for v in fam.variants.values():
            t6, t7 = v.paper.get("table6"), v.paper.get("table7")
            if t6 and t7:
                n += 1
                for k in ("mmlu", "arc", "hellaswag", "winogrande"):
                    assert abs(100 * t7["shared"][k] / t7["instruct"][k] - t6[k]) <= 1.5, (fam.key, k)
    assert n == 8


def test_benchmark_tuner_choice_is_consistent_with_its_curve(tiny, tmp_path):
    fam, tok, unshared, memory = tiny
    linker = memory.Linker(fam.base, tau_cos=fam.tau_cos, tau_frob=fam.tau_frob, device="cpu", dtype="float32",
                           plan_cache=str(tmp_path))
    linker.add("qa", fam.variants["qa"].ref)
    plan = linker.plans["qa"][0]
    objective = bench.task_objective("linker_pydoc_continuation", tok, limit=LIMIT)
    t = quality.tune_threshold(linker, fam.variants["qa"].ref, plan, None, 0.05, unshared=unshared,
                               objective=objective, grid=quality.tuner_grid(plan)[::2])
    assert t.objective == "linker_pydoc_continuation" and 0 <= t.reference <= 1
    first = t.curve[0]
    assert first["blocks_shared"] == 0 and first["score"] == t.reference and first["rel_drop"] == 0
    assert [r["blocks_shared"] for r in t.curve] == sorted(r["blocks_shared"] for r in t.curve)
    for r in t.curve:
        assert r["rel_drop"] == pytest.approx((t.reference - r["score"]) / t.reference)
        assert r["within_budget"] == (r["rel_drop"] <= 0.05)
    ok = [r for r in t.curve if r["within_budget"]]
    assert t.tau_frob == ok[-1]["tau_frob"] and t.blocks_shared == ok[-1]["blocks_shared"]
    assert set(linker.recipients) == {"qa"}  # the tuner's temporary recipients are gone

    # App. E step 3 on the same choice: tiny's eps-bar (~0.05) keeps it; tripled (> 0.10) it is a boundary case
    (keep,) = quality.boundary_rule(plan, t)
    assert not keep["boundary"] and keep["tau_frob"] == t.tau_frob and keep["blocks_shared"] == t.blocks_shared
    far = dataclasses.replace(plan, blocks=[{**b, "frob": 3 * b["frob"], "frob_max": 3 * b["frob_max"]}
                                            for b in plan.blocks])
    (stay,) = quality.boundary_rule(far, t)
    assert stay["boundary"] and stay["eps_mean"] > quality.BOUNDARY_EPS
    assert (stay["tau_cos"], stay["tau_frob"]) == registry.CONSERVATIVE
    assert stay["blocks_shared"] == sum(far.mask(*registry.CONSERVATIVE))


def _manager(tmp_path, yaml_text: str):
    from lm_eval.tasks import TaskManager
    (tmp_path / "t.yaml").write_text(yaml_text)
    return TaskManager(include_path=str(tmp_path), include_defaults=False)


_TASK = """task: cached_or_not
dataset_path: nobody/not-cached-here
dataset_name: cfg
output_type: multiple_choice
test_split: test
doc_to_text: "{{q}}"
doc_to_choice: "{{c}}"
doc_to_target: 0
"""


def test_missing_dataset_is_named_with_how_to_cache_it(tmp_path, monkeypatch):
    import datasets.config
    import huggingface_hub.constants as hub
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "ds")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    tm = _manager(tmp_path, _TASK)
    with pytest.raises(task_data.DatasetNotCached, match="nobody/not-cached-here") as e:
        task_data.require_local(tm, ["cached_or_not"])
    assert "load_dataset('nobody/not-cached-here', 'cfg')" in str(e.value) and "cached_or_not" in str(e.value)
    # prepared by `datasets` in its cache's layout: found, and nothing is downloaded
    prepared = tmp_path / "ds" / "nobody___not-cached-here" / "cfg" / "0.0.0" / "abc"
    prepared.mkdir(parents=True)
    (prepared / "not-cached-here-test.arrow").write_bytes(b"")
    assert task_data.require_local(tm, ["cached_or_not"])["cached_or_not"][0]["path"] == "nobody/not-cached-here"


def test_missing_local_data_file_is_named(tmp_path):
    tm = _manager(tmp_path, _TASK.replace("dataset_path: nobody/not-cached-here\ndataset_name: cfg",
                                          "dataset_path: json\ndataset_kwargs:\n  data_files: /nowhere/items.jsonl"))
    with pytest.raises(task_data.DatasetNotCached, match="/nowhere/items.jsonl"):
        task_data.require_local(tm, ["cached_or_not"])


def test_the_paper_tasks_name_their_datasets_when_not_cached(tmp_path, monkeypatch):
    """lm-eval's own task index (~15 s to build on 2 cores): the paper's benchmarks and PIQA, not cached here."""
    import datasets.config
    import huggingface_hub.constants as hub
    from lm_eval.tasks import TaskManager
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "ds")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    tm = TaskManager(include_path=str(task_data.BUNDLED_DIR))
    found = {n: task_data.task_datasets(tm, n) for n in (*bench.PAPER_BENCHMARKS, bench.TUNER_TASK)}
    assert len(found["mmlu"]) == 57 and {d["path"] for d in found["mmlu"]} == {"cais/mmlu"}  # one per subject
    assert found["arc_challenge"][0]["name"] == "ARC-Challenge"
    for name in found:
        with pytest.raises(task_data.DatasetNotCached, match=found[name][0]["path"]):
            task_data.require_local(tm, [name])
    assert task_data.require_local(tm, task_data.BUNDLED_TASKS)  # the bundled ones need no cache
    with pytest.raises(task_data.UnknownTask, match="no_such_task"):
        task_data.require_local(tm, ["linker_pydoc_continuation", "no_such_task"])


def test_defaults_follow_the_family():
    assert registry.is_embedded(registry.get("tiny").base) and not registry.is_embedded(registry.get("qwen05b").base)
    assert bench.default_benchmarks(False) == ["mmlu", "arc_challenge", "hellaswag", "winogrande"]
    assert bench.default_tuner_task(False) == "piqa"
    assert bench.default_benchmarks(True) == list(task_data.BUNDLED_TASKS)
    assert bench.PAPER_SETTINGS["mmlu"] == {"num_fewshot": 5, "limit": 30}


def test_setup_fills_benchmark_defaults_and_says_where_from():
    from linker_nb.nb import params
    ann = {"model": str, "variants": "Optional[list]", "benchmarks": "Optional[list]", "tuner_task": "Optional[str]",
           "num_fewshot": "Optional[int]", "benchmark_limit": "Optional[int]", "results_json": str}
    defaults = dict(model="tiny", variants=None, benchmarks=None, tuner_task=None, num_fewshot=None,
                    benchmark_limit=None, results_json="")
    ns = lambda **kw: {"__annotations__": ann, **defaults, **kw}  # noqa: E731
    run = params.setup(ns())
    assert run.benchmarks == list(task_data.BUNDLED_TASKS) and run.tuner_task == task_data.BUNDLED_TASKS[0]
    assert "embedded" in run.defaults["benchmarks"]
    run = params.setup(ns(model="qwen05b"))
    assert run.benchmarks == list(bench.PAPER_BENCHMARKS) and run.tuner_task == "piqa"
    assert params.setup(ns(benchmarks="[]")).benchmarks == []  # papermill's -p benchmarks '[]': skip them
    for bad, match in ((dict(benchmarks=[1]), "benchmarks"), (dict(benchmark_limit=0), "benchmark_limit"),
                       (dict(num_fewshot=-1), "num_fewshot")):
        with pytest.raises(params.ParameterError, match=match):
            params.setup(ns(**bad))


def test_figure2_gains_come_from_05_results(tmp_path):
    from linker_nb.analyses import panel_tables
    doc = {"study": "05_linker_memory", "model": "qwen05b",
           "benchmarks": {"capability_gain": {"mmlu": {"instruct": 1.5}, "arc_challenge": {"instruct": -2.0}}}}
    path = tmp_path / "r.json"
    path.write_text(json.dumps({**doc, "model": "llama1b", "benchmarks": {"capability_gain": {"mmlu": {
        "instruct": 8.0}}}}))
    custom = {**doc, "model": None}
    assert panel_tables.gains_from_results([doc, path, custom]) == {"qwen05b": 1.5, "llama1b": 8.0}
    assert panel_tables.gains_from_results([doc], "arc_challenge") == {"qwen05b": -2.0}
    with pytest.raises(ValueError, match="05_linker_memory"):
        panel_tables.gains_from_results([{"study": "07_panel"}])


def test_an_uncached_tuner_task_says_which_parameter_to_change(monkeypatch):
    def missing(manager, names):
        raise task_data.DatasetNotCached(f"dataset 'baber/piqa' of {list(names)} is not cached")
    monkeypatch.setattr(task_data, "require_local", missing)
    with pytest.raises(task_data.DatasetNotCached, match="(?s)baber/piqa.*-p tuner_task"):
        bench.task_objective("linker_pydoc_continuation", None)
