"""lm-eval task data: the bundled offline tasks, and whether a task's dataset is on this machine.

Two small multiple-choice tasks ship with the package (`BUNDLED_DIR`: lm-eval task YAML over JSONL made from
the embedded corpus, `linker_nb.io.corpus`), so the embedded families' benchmarks run offline in seconds:

* `linker_pydoc_continuation`: the first words of a held-out pydoc passage; which of four continuations
  follows it (three distractors are continuations of other passages). No `tiny` variant saw these topics.
* `linker_builtin_docstring`: "Q: What does `len` do?\\nA:"; which of four builtin docstrings' first six words
  answer it. The `qa` post-training set is made of such pairs, so its variant has a capability to gain.
* `linker_bundled`: both, as a group scored like MMLU's (the mean over all items).

Every other lm-eval task reads a Hugging Face dataset. `require_local` checks, before anything is evaluated,
that each one is in the local datasets cache (nothing is downloaded here), and otherwise raises
`DatasetNotCached` naming the dataset and the command that caches it.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Iterable

from . import corpus as _corpus

__all__ = ["BUNDLED_DIR", "BUNDLED_TASKS", "BUNDLED_NAMES", "DatasetNotCached", "UnknownTask", "build_items",
           "load_items",
           "bundled_dataset", "write_bundled_items", "stale_bundled_items", "task_datasets", "is_cached",
           "require_local"]

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "_data" / "lmeval"
BUNDLED_TASKS = ("linker_pydoc_continuation", "linker_builtin_docstring")
BUNDLED_NAMES = (*BUNDLED_TASKS, "linker_bundled")   # the tasks and their group: all in BUNDLED_DIR
N_ITEMS = 48         # items per bundled task: a few seconds per model on 2 cores for the tiny family
N_CHOICES = 4
_CONTEXT_WORDS, _CONTINUATION_WORDS = 16, 8
_ANSWER_WORDS = 6
_DISTRACTOR_STRIDES = (7, 19, 31)   # item i's distractors come from items i+7, i+19, i+31 (mod n): fixed, no RNG
_LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow"}   # datasets' packaged builders over local files


class DatasetNotCached(RuntimeError):
    """A benchmark's dataset is not in the local cache; the message names it and how to cache it."""


class UnknownTask(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


# -- the bundled tasks ----------------------------------------------------------------------------------------
def _mc_item(query: str, answers: list[str], i: int) -> dict:
    """Item i of a multiple-choice set: its own answer and three others', the correct one at position i % 4."""
    n = len(answers)
    others = [answers[(i + s) % n] for s in _DISTRACTOR_STRIDES]
    label = i % N_CHOICES
    choices = others[:label] + [answers[i]] + others[label:]
    return {"query": query, "choices": choices, "label": label}


def _continuation_items() -> list[dict]:
    # Non-overlapping 24-word windows of the held-out pydoc paragraphs, in corpus order, spread over the set.
    # Choices are all 8 words long, so the summed log-likelihood compares content, not length.
    windows = []
    for key, text in _corpus.prose_topics().items():
        if _corpus.topic_split(key) != "heldout":
            continue
        for para in _corpus._paragraphs(text):
            words = para.split()
            step = _CONTEXT_WORDS + _CONTINUATION_WORDS
            windows += [(" ".join(words[s:s + _CONTEXT_WORDS]), " ".join(words[s + _CONTEXT_WORDS:s + step]))
                        for s in range(0, len(words) - step + 1, step)]
    windows = [windows[j * len(windows) // N_ITEMS] for j in range(N_ITEMS)] if len(windows) > N_ITEMS else windows
    answers = [c for _, c in windows]
    return [_mc_item(ctx, answers, i) for i, (ctx, _) in enumerate(windows)]


def _docstring_items() -> list[dict]:
    # The "qa" set's builtin docstrings whose first sentence has >= 6 words, spread over the set, each answer cut
    # to its first 6 words: equally long choices, so the summed log-likelihood does not just pick the shortest.
    pairs = [(q, a.split(". ")[0].split()) for q, a in _corpus.instruction_pairs("qa")]
    pairs = [(q, words) for q, words in pairs if len(words) >= _ANSWER_WORDS]
    pairs = [pairs[j * len(pairs) // N_ITEMS] for j in range(N_ITEMS)] if len(pairs) > N_ITEMS else pairs
    answers = [" ".join(words[:_ANSWER_WORDS]) for _, words in pairs]
    return [_mc_item(q.rstrip(), answers, i) for i, (q, _) in enumerate(pairs)]


_BUILDERS = {"linker_pydoc_continuation": _continuation_items, "linker_builtin_docstring": _docstring_items}


def build_items(task: str) -> list[dict]:
    """The items of a bundled task, built from the embedded corpus: [{query, choices [4], label}].

    Raises:
        UnknownTask: `task` is not one of `BUNDLED_TASKS`.
    """
    if task not in _BUILDERS:
        raise UnknownTask(f"{task!r} is not a bundled task; bundled: {', '.join(BUNDLED_TASKS)}")
    return _BUILDERS[task]()


def _items_path(task: str) -> Path:
    return BUNDLED_DIR / f"{task}.jsonl"


def load_items(task: str) -> list[dict]:
    """The committed items of a bundled task (its JSONL file)."""
    if task not in _BUILDERS:
        raise UnknownTask(f"{task!r} is not a bundled task; bundled: {', '.join(BUNDLED_TASKS)}")
    with open(_items_path(task), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def bundled_dataset(task: str, **_metadata):
    """The bundled task as a `datasets.DatasetDict` with one "test" split (lm-eval's `custom_dataset` hook,
    which passes the task's metadata as keyword arguments; they are ignored). Built in memory: no cache write."""
    import datasets
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(load_items(task))})


def write_bundled_items() -> list[Path]:
    """Rebuild every bundled task's JSONL from the corpus, and `meta.json` with the Python version used."""
    paths = []
    for task in BUNDLED_TASKS:
        path = _items_path(task)
        path.write_text("".join(json.dumps(it, ensure_ascii=False) + "\n" for it in build_items(task)),
                        encoding="utf-8")
        paths.append(path)
    meta = BUNDLED_DIR / "meta.json"
    meta.write_text(json.dumps({"python": sys.version.split()[0], "n_items": N_ITEMS,
                                "built_by": "scripts/make_lmeval_tasks.py"}, indent=1) + "\n")
    return paths + [meta]


def stale_bundled_items() -> list[str]:
    """Bundled tasks whose committed JSONL differs from what this Python builds from the corpus."""
    return [t for t in BUNDLED_TASKS if load_items(t) != build_items(t)]


# -- is a task's dataset here? --------------------------------------------------------------------------------
def _leaf_configs(manager, name: str, seen: set[str]) -> Iterable[dict]:
    """The raw YAML configs of the leaf tasks behind a task, group or tag name of lm-eval's index."""
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml
    entry = manager.task_index.get(name)
    if entry is None:
        raise UnknownTask(f"lm-eval has no task, group or tag named {name!r} (lm-eval {_lm_eval_version()}; "
                          f"bundled: {', '.join(BUNDLED_NAMES)}). List them with `lm-eval ls tasks`.")
    if name in seen:
        return
    seen.add(name)
    if entry.kind == Kind.TAG:
        for t in sorted(entry.tags):
            yield from _leaf_configs(manager, t, seen)
    elif entry.kind == Kind.GROUP:
        for member in (entry.cfg or {}).get("task", []):
            ref = member if isinstance(member, str) else member.get("task") or member.get("group")
            if isinstance(ref, str) and ref in manager.task_index:
                yield from _leaf_configs(manager, ref, seen)
            elif isinstance(member, dict):
                yield member  # an inline task: its own dataset fields
    elif entry.yaml_path is not None:
        yield load_yaml(entry.yaml_path, resolve_func=False)
    else:
        yield entry.cfg or {}


def _lm_eval_version() -> str:
    from importlib.metadata import version
    return version("lm-eval")


def task_datasets(manager, name: str) -> list[dict]:
    """The datasets a task (or group / tag) reads: [{path, name, local, data_files}], duplicates dropped.

    `local` is True for the bundled tasks (their `custom_dataset` reads package files) and for datasets'
    file builders (json, csv, ...); those are checked by file, the others against the Hugging Face cache.
    """
    out, keys = [], set()
    for cfg in _leaf_configs(manager, name, set()):
        kw = cfg.get("dataset_kwargs") or {}
        ds = {"path": cfg.get("dataset_path"), "name": cfg.get("dataset_name"),
              "local": "custom_dataset" in cfg or cfg.get("dataset_path") in _LOCAL_BUILDERS,
              "data_files": kw.get("data_files"), "task": cfg.get("task")}
        key = (ds["path"], ds["name"], json.dumps(ds["data_files"], sort_keys=True, default=str),
               ds["task"] if ds["path"] is None else None)  # tasks that read their own data are each one
        if key not in keys:
            keys.add(key)
            out.append(ds)
    return out


def _files(data_files) -> list[str]:
    if data_files is None:
        return []
    if isinstance(data_files, str):
        return [data_files]
    if isinstance(data_files, dict):
        return [f for v in data_files.values() for f in _files(v)]
    return [str(f) for f in data_files]


def is_cached(path: str, name: str | None = None) -> bool:
    """Whether a Hugging Face dataset (config `name`) is on this machine: prepared by `datasets` in
    HF_DATASETS_CACHE (what `load_dataset` reads offline), or its files in the hub cache (HF_HUB_CACHE), or
    `path` is a local directory."""
    import datasets.config
    import huggingface_hub.constants as hub
    if Path(path).expanduser().is_dir():
        return True
    # datasets' layout: <namespace>___<name>/<config id>/<version>/<hash>/*.arrow; the config id is the config
    # name, with a "-<hash>" suffix when the task passed extra config arguments
    root, config = Path(datasets.config.HF_DATASETS_CACHE) / path.replace("/", "___"), name or "default"
    for prepared in (root.iterdir() if root.is_dir() else ()):
        if (prepared.name == config or prepared.name.startswith(config + "-")) and any(prepared.rglob("*.arrow")):
            return True
    repo = Path(hub.HF_HUB_CACHE) / ("datasets--" + path.replace("/", "--"))
    return (repo / "snapshots").is_dir() and any((repo / "snapshots").iterdir())


def require_local(manager, names: Iterable[str]) -> dict[str, list[dict]]:
    """Check, before evaluating anything, that every task's data is on this machine.

    Args:
        manager: an `lm_eval.tasks.TaskManager` (with the bundled tasks on its include_path).
        names: lm-eval task, group or tag names.

    Returns:
        name -> `task_datasets(manager, name)`.

    Raises:
        UnknownTask: a name lm-eval does not know.
        DatasetNotCached: naming each missing dataset (path and config), the tasks that need it, and how to
            cache it on a machine with Hub access.
    """
    found, missing = {}, []
    for name in names:
        found[name] = task_datasets(manager, name)
        for ds in found[name]:
            if ds["local"]:
                gone = [f for f in _files(ds["data_files"]) if not Path(f).expanduser().exists()]
                if gone:
                    missing.append((name, ds, f"data file(s) {', '.join(gone)} not found"))
            elif not ds["path"]:
                continue  # a Python-defined task that names no dataset: lm-eval will load what it needs
            elif not is_cached(ds["path"], ds["name"]):
                missing.append((name, ds, None))
    if missing:
        offline = os.environ.get("HF_DATASETS_OFFLINE") or os.environ.get("HF_HUB_OFFLINE")
        lines = []
        for name, ds, why in missing[:8]:
            cfg = f", {ds['name']!r}" if ds["name"] else ""
            lines.append(f"  {name}: {why}" if why else
                         f"  {name}: dataset {ds['path']!r}{' config ' + repr(ds['name']) if ds['name'] else ''}"
                         f" -> python -c \"import datasets; datasets.load_dataset({ds['path']!r}{cfg})\"")
        more = f"\n  ... and {len(missing) - 8} more" if len(missing) > 8 else ""
        raise DatasetNotCached(
            f"{len(missing)} dataset(s) the benchmarks need are not in the local cache "
            f"(HF_DATASETS_CACHE={_datasets_cache()}{', offline mode' if offline else ''}):\n"
            + "\n".join(lines) + more +
            "\nCache them on a machine with Hugging Face Hub access (the commands above, or `lm-eval run --model "
            "dummy --tasks <task> --limit 1`) and copy ~/.cache/huggingface here (or point HF_DATASETS_CACHE / "
            "HF_HUB_CACHE at it); or drop the task from `benchmarks` (bundled offline tasks: "
            f"{', '.join(BUNDLED_NAMES)}).")
    return found


def _datasets_cache() -> str:
    import datasets.config
    return str(datasets.config.HF_DATASETS_CACHE)
