"""Unit tier: the notebooks' contract without papermill — parameters validated from the `parameters` cell's
annotations, family defaults, custom pairs, and each study's results schema built by the package."""
from __future__ import annotations

import json

import pytest

from linker_nb.io import registry
from linker_nb.nb import params, schemas
from linker_nb.nb.params import ParameterError


def ns(**values):
    """A kernel namespace as the parameters cell + papermill's injected cell leave it."""
    ann = {"model": str, "base": "Optional[str]", "variant": "Optional[str]", "tau_cos": "Optional[float]",
           "tau_frob": "Optional[float]", "alphas": list, "seed": int, "progress": bool, "results_json": str}
    base = dict(model="tiny", base=None, variant=None, tau_cos=None, tau_frob=None, alphas=[0.0, 0.5, 1.0],
                seed=0, progress=True, results_json="")
    return {"__annotations__": {k: ann[k] for k in ann}, **base, **values}


def test_parse_annotation_forms():
    assert params.parse_annotation(str) == (str, False)
    assert params.parse_annotation("Optional[float]") == (float, True)
    assert params.parse_annotation("list") == (list, False)
    with pytest.raises(ParameterError, match="unsupported"):
        params.parse_annotation("str | None")


def test_validate_types_and_coercions():
    p = params.validate(ns(tau_cos=1, alphas="[0, 0.25, 1]"))  # papermill: -p tau_cos 1, -p alphas '[...]'
    assert p["tau_cos"] == 1.0 and isinstance(p["tau_cos"], float)
    assert p["alphas"] == [0.0, 0.25, 1.0]
    with pytest.raises(ParameterError, match="'seed' = 'x'"):
        params.validate(ns(seed="x"))
    with pytest.raises(ParameterError, match="'progress'"):
        params.validate(ns(progress=1))  # an int is not a bool
    with pytest.raises(ParameterError, match="'model' is None"):
        params.validate(ns(model=None))
    with pytest.raises(ParameterError, match="tau_cos = 2.0"):
        params.validate(ns(tau_cos=2.0, tau_frob=0.1))
    with pytest.raises(ValueError, match="start at 0.0"):
        params.validate(ns(alphas=[0.5, 1.0]))
    with pytest.raises(ParameterError, match="no annotated"):
        params.validate({"model": "tiny"})


def test_setup_fills_family_defaults_and_writes_back():
    g = ns()
    run = params.setup(g)
    fam = registry.get("tiny")
    assert run.model == "tiny" and run.family is fam and run.spec is fam.variant
    assert run.thresholds == (fam.tau_cos, fam.tau_frob) and g["tau_cos"] == fam.tau_cos
    assert run.defaults == {"tau_cos": "family tiny", "tau_frob": "family tiny"}
    assert run.eval_seq_len == fam.eval_seq_len
    assert run.base_ref == fam.base and run.variant_ref == fam.variant.ref
    assert params.setup(ns(variant="coder")).variant_ref == fam.variants["coder"].ref  # a name is not custom


def test_custom_pair_takes_no_family_default(tmp_path):
    """Overrides say so: model null, the references recorded, thresholds from App. E's conservative tier (never the
    family's), no paper figures."""
    fam = registry.get("tiny")
    run = params.setup(ns(base=fam.variants["chat"].ref, variant=fam.variants["qa"].ref))
    assert run.model is None and run.family is None and run.spec is None and run.paper("table13") is None
    assert run.thresholds == registry.CONSERVATIVE != (fam.tau_cos, fam.tau_frob)
    assert "conservative" in run.defaults["tau_cos"]
    head = run.header()
    assert head["model"] is None and head["custom"] and head["references"]["variant"] == fam.variants["qa"].ref
    explicit = params.setup(ns(base=fam.variants["chat"].ref, variant=fam.variants["qa"].ref, tau_cos=0.9,
                               tau_frob=0.3))
    assert explicit.thresholds == (0.9, 0.3) and explicit.defaults == {}


def test_unknown_key_and_bad_values_fail_early():
    with pytest.raises(registry.UnknownModel, match="Known keys"):
        params.setup(ns(model="nope"))
    g = ns()
    g["__annotations__"]["device"] = str
    g["device"] = "cuda:7" if not __import__("torch").cuda.is_available() else "meta-gpu"
    with pytest.raises((RuntimeError, ValueError)):
        params.setup(g)


def test_schema_built_and_written_without_papermill(tmp_path, tiny_pairs):
    from linker_nb.analyses import granularity
    from linker_nb.analyses.scan import scan
    b, v = tiny_pairs("llama", layers=2)
    out = tmp_path / "r.json"
    run = params.setup(ns(base=str(b), variant=str(v), results_json=str(out)))
    result = scan(b, v)
    gap = granularity.granularity_gap(result, *run.thresholds)
    doc = run.write(schemas.granularity_gap(run, result, gap, granularity.aggregation_stats(result)))
    back = json.loads(out.read_text())
    assert back["schema_version"] == schemas.SCHEMA_VERSION and back["study"] == "01_granularity_gap"
    assert back["model"] is None and back["tau_cos"] == registry.CONSERVATIVE[0]
    assert back["n_blocks"] == 2 == len(back["blocks"]) and back["mean_frob"] == pytest.approx(result.mean_frob)
    assert [x["shareable"] for x in back["blocks"]] == result.share_mask(*run.thresholds)
    assert back["n_tensors"] == result.n_tensors and "environment" in back and doc["variant"] == str(v)
