"""Quality kept on benchmarks (paper App. D, Tables 6-7; Figure 2's ΔMMLU) with lm-eval-harness, in memory.

Every model is evaluated as it already sits in memory: lm-eval's Hugging Face wrapper takes the model instance
and its tokenizer (`HFLM(pretrained=model, tokenizer=...)`), so the shared recipient — which exists only as
aliases of the donor's storage — is never reloaded from disk, and runs on the device it was built on. The
tasks are loaded and configured once per run (`prepare`: the few-shot count and seed `simple_evaluate`
would set), their data checked to be local first (`io.task_data`), and each model is scored by lm-eval's
`evaluate` loop.

The paper's settings are the defaults: MMLU 5-shot with 30 examples per subject (§3.1, Figure 2), ARC-Challenge,
HellaSwag and WinoGrande with lm-eval's own settings (0-shot, every example). The score is `acc_norm` for
ARC-Challenge and HellaSwag and `acc` for the others (lm-eval's usual report; the paper names no metric, but
its Table 7 scores match these). Retained quality (Table 6) is shared / unshared per benchmark.
"""
from __future__ import annotations

import functools
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..io import task_data

__all__ = ["PAPER_BENCHMARKS", "PAPER_SETTINGS", "TUNER_TASK", "LmEvalMissing", "Suite", "Objective",
           "default_benchmarks", "default_tuner_task", "prepare", "evaluate", "evaluate_all",
           "retention",
           "capability_gain", "gain_table", "table6", "table7", "status"]

PAPER_BENCHMARKS = ("mmlu", "arc_challenge", "hellaswag", "winogrande")   # lm-eval v0.4 names (App. D)
PAPER_SETTINGS = {"mmlu": {"num_fewshot": 5, "limit": 30}}   # §3.1 / Figure 2: 5-shot, n = 30 per subject
TUNER_TASK = "piqa"   # App. E step 2: "the cheapest of the four held-out benchmarks"
METRIC = {"arc_challenge": "acc_norm", "hellaswag": "acc_norm"}   # else "acc"
PAPER_COLUMNS = {"mmlu": "mmlu", "arc_challenge": "arc", "hellaswag": "hellaswag", "winogrande": "winogrande"}
_SEED = 1234   # lm-eval's own default seeds, fixed so two models see the same few-shot examples


class LmEvalMissing(ImportError):
    """lm-eval-harness is not importable."""


def status() -> str:
    """Whether lm-eval can run here, and what else the paper's benchmarks need."""
    try:
        from importlib.metadata import version
        return f"lm-eval {version('lm-eval')}: the paper's benchmarks run when their datasets are cached locally"
    except Exception:
        return "lm-eval is not installed (pip install 'lm-eval>=0.4.13,<0.5'): no benchmark is run"


def default_benchmarks(embedded: bool) -> list[str]:
    """The benchmarks of a run: the paper's four, or the bundled offline tasks for a family embedded in the
    package (its checkpoints are tiny and its run must stay offline)."""
    return list(task_data.BUNDLED_TASKS) if embedded else list(PAPER_BENCHMARKS)


def default_tuner_task(embedded: bool) -> str:
    """App. E's tuner task: PIQA, or the bundled continuation task for an embedded family."""
    return task_data.BUNDLED_TASKS[0] if embedded else TUNER_TASK


def _lm_eval():
    try:
        import lm_eval
    except ImportError as e:
        raise LmEvalMissing(f"lm-eval-harness is needed for benchmarks ({e}); pip install 'lm-eval>=0.4.13,<0.5', "
                            f"or run with -p benchmarks '[]' to skip them.") from None
    for name in ("lm_eval", "lm-eval", "lm_eval.api.task", "lm_eval.evaluator", "lm_eval.models.huggingface"):
        logging.getLogger(name).setLevel(logging.ERROR)  # per-task notices would fill the notebook
    return lm_eval


@dataclass
class Suite:
    """Loaded lm-eval tasks, ready to evaluate any number of models.

    Attributes:
        names: the benchmarks (task or group names), in order.
        settings: name -> {num_fewshot, limit, metric} as run.
        datasets: name -> the datasets it reads (`task_data.task_datasets`).
        objects: name -> its `TaskManager.load` result (tasks configured with the shots and few-shot seed).
    """
    names: list[str]
    settings: dict[str, dict]
    datasets: dict[str, list[dict]]
    manager: object = field(repr=False)
    objects: dict = field(repr=False)


def prepare(names: Sequence[str], *, num_fewshot: int | None = None, limit: int | None = None) -> Suite:
    """Check every benchmark's data is local, then load the tasks once.

    Args:
        names: lm-eval task or group names (e.g. `PAPER_BENCHMARKS`, `task_data.BUNDLED_TASKS`); empty: an empty
            suite (every model then scores nothing).
        num_fewshot: shots for every benchmark; None: the paper's (MMLU 5) or the task's own (0 for the others).
        limit: examples per task (per subject for MMLU); None: the paper's (MMLU 30) or every example.

    Raises:
        LmEvalMissing, task_data.UnknownTask, task_data.DatasetNotCached (naming the dataset and how to cache it).
    """
    names = list(dict.fromkeys(names))
    if not names:  # -p benchmarks '[]': nothing to run, and lm-eval is not needed
        return Suite(names=[], settings={}, datasets={}, manager=None, objects={})
    _lm_eval()
    from lm_eval.api.group import Group
    from lm_eval.tasks import TaskManager
    if num_fewshot is not None and num_fewshot < 0 or limit is not None and limit < 1:
        raise ValueError(f"num_fewshot = {num_fewshot} must be >= 0 and limit = {limit} >= 1")
    # lm-eval's own ~10k task files take ~15 s to index on 2 cores: skip them when only bundled tasks run
    builtin = any(n not in task_data.BUNDLED_NAMES for n in names)
    manager = TaskManager(include_path=str(task_data.BUNDLED_DIR), include_defaults=builtin)
    datasets = task_data.require_local(manager, names)
    objects, settings = {}, {}
    for name in names:
        loaded = manager.load([name])
        obj = loaded["groups"].get(name) or loaded["tasks"].get(name)
        if obj is None:  # a tag: lm-eval reports its tasks one by one, with no score of the tag itself
            raise ValueError(f"{name!r} is an lm-eval tag of {len(loaded['tasks'])} tasks, which has no score of its "
                             f"own; list its tasks instead: {sorted(loaded['tasks'])[:6]}")
        paper = PAPER_SETTINGS.get(name, {})
        shots = num_fewshot if num_fewshot is not None else paper.get("num_fewshot")
        leaves = obj.get_all_tasks() if isinstance(obj, Group) else [obj]
        for task in leaves:  # what simple_evaluate does to each task, done once here for every model
            if shots is not None:
                task.set_config(key="num_fewshot", value=shots)
            elif task.get_config("num_fewshot") is None:
                task.set_config(key="num_fewshot", value=0)
            task.set_fewshot_seed(seed=_SEED)  # every model sees the same few-shot examples
        objects[name] = loaded
        settings[name] = {"num_fewshot": leaves[0].get_config("num_fewshot"),
                          "limit": limit if limit is not None else paper.get("limit"),
                          "metric": METRIC.get(name, "acc"), "n_tasks": len(leaves)}
    return Suite(names=names, settings=settings, datasets=datasets, manager=manager, objects=objects)


def evaluate(model, tokenizer, suite: Suite, *, batch_size: int = 8) -> dict[str, float]:
    """Score one in-memory model on every benchmark of `suite`: name -> score in [0, 1].

    Args:
        model: a `transformers` causal LM instance (a shared recipient, an unshared variant, the donor), on the
            device it will run on.
        tokenizer: its tokenizer.
        batch_size: lm-eval's batch size.
    """
    if not suite.names:
        return {}
    _lm_eval()
    from lm_eval.evaluator import evaluate as lm_evaluate
    lm = _quiet_hflm()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    out = {}
    for name in suite.names:
        s = suite.settings[name]
        # `evaluate` is simple_evaluate's loop without its per-call environment report (a `pip list` subprocess,
        # ~1.3 s a call: most of a tiny model's evaluation); the tasks were configured once by `prepare`
        with _no_request_bars():
            res = lm_evaluate(lm=lm, task_dict=suite.objects[name], limit=s["limit"], log_samples=False,
                              bootstrap_iters=0)
        key = f"{s['metric']},none"
        if key not in res["results"].get(name, {}):
            raise ValueError(f"lm-eval reported no {s['metric']!r} for {name!r} (it reported "
                           f"{sorted(res['results'].get(name, {}))}); pick a multiple-choice task.")
        out[name] = float(res["results"][name][key])
    return out


def _quiet_hflm():
    """lm-eval's HFLM with its per-request progress bars off (one per model and task would flood a notebook)."""
    from lm_eval.models.huggingface import HFLM

    class QuietHFLM(HFLM):
        def loglikelihood(self, requests, disable_tqdm: bool = True):
            return super().loglikelihood(requests, disable_tqdm=True)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = True):
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm: bool = True):
            return super().generate_until(requests, disable_tqdm=True)
    return QuietHFLM


@contextmanager
def _no_request_bars():
    """Silence the progress bar `Task.build_all_requests` draws (it has no switch) for the duration."""
    import lm_eval.api.task as task_module
    bar = task_module.tqdm
    task_module.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        task_module.tqdm = bar


@dataclass
class Objective:
    """What the App. E tuner keeps within budget: a score of a model and whether higher is better."""
    name: str
    score: Callable
    higher_is_better: bool = True


def task_objective(task: str, tokenizer, *, batch_size: int = 8, num_fewshot: int | None = None,
                   limit: int | None = None) -> Objective:
    """An lm-eval task's score as a tuner objective (its data checked and its task loaded once, here)."""
    try:
        suite = prepare([task], num_fewshot=num_fewshot, limit=limit)
    except task_data.DatasetNotCached as e:
        raise task_data.DatasetNotCached(f"{e}\nThis is the App. E tuner's task ({task!r}); or give it another, "
                                         f"cached task: -p tuner_task <name>.") from None
    return Objective(task, lambda m: evaluate(m, tokenizer, suite, batch_size=batch_size)[task])


__all__ += ["task_objective"]


def evaluate_all(suite: Suite, tokenizer, unshared: dict, shared: dict, base=None, *,
                 batch_size: int = 8) -> dict:
    """Tables 6-7's measurements: every recipient shared and unshared, and the base (for ΔMMLU) when given.

    Args:
        unshared, shared: variant name -> the model loaded normally / with blocks aliased to the donor.
        base: the donor (the family's base), or None.

    Returns:
        {"benchmarks", "settings", "base": {bench: score} or None, "unshared": {variant: {bench: score}},
        "shared": {variant: {bench: score}}}, scores in [0, 1].
    """
    return {"benchmarks": list(suite.names), "settings": suite.settings,
            "base": None if base is None else evaluate(base, tokenizer, suite, batch_size=batch_size),
            "unshared": {v: evaluate(m, tokenizer, suite, batch_size=batch_size) for v, m in unshared.items()},
            "shared": {v: evaluate(shared[v], tokenizer, suite, batch_size=batch_size) for v in unshared}}


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None   # a zero unshared score leaves retention undefined


def retention(scores: dict) -> dict[str, dict[str, float | None]]:
    """Table 6: shared / unshared per variant and benchmark (None where the unshared score is 0)."""
    return {v: {b: _ratio(scores["shared"][v][b], u[b]) for b in scores["benchmarks"]}
            for v, u in scores["unshared"].items()}


def capability_gain(scores: dict, benchmark: str = "mmlu") -> dict[str, float] | None:
    """Figure 2's gain: score(variant, unshared) - score(base), in points, per variant; None when the base or
    the benchmark was not evaluated."""
    if scores.get("base") is None or benchmark not in scores["benchmarks"]:
        return None
    return {v: 100 * (u[benchmark] - scores["base"][benchmark]) for v, u in scores["unshared"].items()}


def gain_table(scores: dict):
    """Capability gain of each variant over the base (points), per benchmark: Figure 2's ΔMMLU where MMLU ran
    (DataFrame; empty when the base was not evaluated)."""
    import pandas as pd
    if scores.get("base") is None:
        return pd.DataFrame()
    return pd.DataFrame({_label(b): capability_gain(scores, b) for b in scores["benchmarks"]})


def _label(b: str) -> str:
    return {"mmlu": "MMLU", "arc_challenge": "ARC", "hellaswag": "Hella", "winogrande": "Wino"}.get(b, b)


def table6(scores: dict, saved: dict[str, float] | None = None, paper: dict[str, dict] | None = None):
    """Table 6's layout: % retained (shared / unshared) per benchmark, one row per variant, and the paper's row
    below it where the registry has one (`paper.table6`).

    Args:
        scores: `evaluate_all(...)`.
        saved: variant -> memory saved (fraction, Table 4's pair saving), shown as "Saved".
        paper: variant -> the registry's `paper["table6"]` dict (or None).
    """
    import pandas as pd
    ret, rows = retention(scores), []
    for v in scores["unshared"]:
        rows.append({"variant": v, "row": "measured", "Saved %": None if saved is None else 100 * saved[v],
                     **{_label(b): None if ret[v][b] is None else 100 * ret[v][b] for b in scores["benchmarks"]}})
        p = (paper or {}).get(v)
        if p:
            rows.append({"variant": v, "row": "paper", "Saved %": 100 * p["saved"],
                         **{_label(b): p[PAPER_COLUMNS[b]] for b in scores["benchmarks"] if b in PAPER_COLUMNS}})
    return pd.DataFrame(rows).set_index(["variant", "row"])


def table7(scores: dict, paper: dict[str, dict] | None = None):
    """Table 7's layout: absolute scores (%) of each variant unshared and shared (and the base when evaluated),
    with the paper's two rows beside where the registry has them (`paper.table7`)."""
    import pandas as pd
    bs = scores["benchmarks"]
    rows = []
    if scores.get("base") is not None:
        rows.append({"variant": "(base)", "mode": "base", **{_label(b): 100 * scores["base"][b] for b in bs}})
    for v in scores["unshared"]:
        for mode in ("unshared", "shared"):
            rows.append({"variant": v, "mode": mode, **{_label(b): 100 * scores[mode][v][b] for b in bs}})
        p = (paper or {}).get(v)
        for mode, key in (("paper instruct", "instruct"), ("paper shared", "shared")):
            if p and key in p:
                rows.append({"variant": v, "mode": mode,
                             **{_label(b): p[key][PAPER_COLUMNS[b]] for b in bs if b in PAPER_COLUMNS}})
    return pd.DataFrame(rows).set_index(["variant", "mode"])
