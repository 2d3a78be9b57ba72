"""What every notebook does around its science: validate parameters, pick the renderer, write results.

papermill injects its cell after the `parameters` cell, so notebooks call `validate` in the next cell: a wrong
type or an out-of-range threshold fails there with the parameter's name, not deep inside a scan.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import platform
from pathlib import Path
from typing import Any

__all__ = ["setup_plotly", "validate", "check_thresholds", "write_results", "jsonable", "environment"]


def setup_plotly(renderer: str = "plotly_mimetype") -> None:
    """Pick the plotly renderer explicitly. "plotly_mimetype" stores only the figure JSON in the notebook
    (JupyterLab renders it natively); "notebook" would embed ~3 MB of plotly.js in every saved notebook."""
    import plotly.io as pio
    pio.renderers.default = renderer


def validate(params: dict[str, Any], spec: dict[str, type | tuple[type, ...]]) -> None:
    """Type-check notebook parameters (papermill passes `-p` values through YAML, so `-p tau 1` is an int).

    Args:
        params: name -> value, typically `{k: globals()[k] for k in spec}`.
        spec: name -> accepted type(s); `float` also accepts ints, `type(None)` allows None.

    Raises:
        TypeError: naming the parameter, its value and the expected type.
    """
    for name, types in spec.items():
        types = types if isinstance(types, tuple) else (types,)
        if float in types:
            types = types + (int,)
        value = params.get(name)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join("None" if t is type(None) else t.__name__ for t in types if t is not int or
                                float not in types)
            raise TypeError(f"parameter {name!r} = {value!r} ({type(value).__name__}); expected {names}. "
                            f"With papermill: -p {name} <value>.")


def check_thresholds(tau_cos: float, tau_frob: float) -> None:
    """Eq. (3) thresholds must be a cosine in [-1, 1] and a non-negative ratio."""
    if not -1.0 <= tau_cos <= 1.0:
        raise ValueError(f"tau_cos = {tau_cos} is not a cosine; use a value in [-1, 1] (paper: 0.999).")
    if not tau_frob >= 0.0:
        raise ValueError(f"tau_frob = {tau_frob} must be >= 0 (paper Table 8: 0.05-0.20).")


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
    from . import __version__
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
