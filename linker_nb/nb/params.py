"""The notebooks' parameters: validation and the plotly renderer.

papermill injects its cell after the `parameters` cell, so notebooks validate in the next cell: a wrong
type or an out-of-range threshold fails there with the parameter's name, not deep inside a scan.
"""
from __future__ import annotations

from typing import Any

__all__ = ["setup_plotly", "validate", "check_thresholds"]


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
