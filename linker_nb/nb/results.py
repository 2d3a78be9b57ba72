"""Each notebook's results JSON: plain-JSON conversion, the environment stamp, and the atomic write."""
from __future__ import annotations

import datetime as _dt
import json
import math
import platform
from pathlib import Path
from typing import Any

__all__ = ["write_results", "jsonable", "environment"]


def jsonable(obj: Any) -> Any:
    """Plain-JSON copy: numpy/torch scalars to Python numbers, tuples to lists, NaN/Inf to None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy / torch
        return jsonable(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def environment() -> dict[str, str]:
    import torch
    import transformers
    from .. import __version__
    return {"linker_nb": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "machine": f"{platform.machine()} {platform.system()}",
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
            "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def write_results(path: str | Path | None, results: dict[str, Any]) -> dict[str, Any]:
    """Write a notebook's headline numbers as JSON (with an `environment` entry); returns what was written.

    `path` None or "" writes nothing (interactive use)."""
    out = jsonable({**results, "environment": environment()})
    if path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(out, indent=2, allow_nan=False) + "\n")
    return out
