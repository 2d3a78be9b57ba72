"""Build the bundled offline lm-eval tasks (linker_nb/_data/lmeval/*.jsonl) from the embedded corpus.

    python scripts/make_lmeval_tasks.py            # rewrite the JSONL files
    python scripts/make_lmeval_tasks.py --check    # exit 1 if the files differ from what this Python builds

The items come from `linker_nb.io.corpus`, whose text depends on the Python version (pydoc topics, builtin
docstrings), so the files record the version that built them (`meta.json`); `--check` is only meaningful on
that version. See `linker_nb.io.task_data.build_items` for what each task asks.
"""
from __future__ import annotations

import argparse
import sys

from linker_nb.io import task_data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    args = ap.parse_args()
    if args.check:
        stale = task_data.stale_bundled_items()
        for name in stale:
            print(f"{name}: differs from what Python {sys.version.split()[0]} builds from the corpus")
        return 1 if stale else 0
    for path in task_data.write_bundled_items():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
