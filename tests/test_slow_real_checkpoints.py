"""Slow tier: real Hugging Face checkpoints (not in `make test`; run `make test-all` where the Hub or a local
cache is available). Each test skips, naming the id, when its pair cannot be resolved offline."""
from __future__ import annotations

import pytest

from linker_nb.analyses import granularity, kernel, records  # noqa: F401
from linker_nb.analyses.scan import scan
from linker_nb.io import pairing, registry, stream  # noqa: F401
from linker_nb.io.checkpoint import CheckpointNotFound
from linker_nb.io.references import open_checkpoint

pytestmark = pytest.mark.slow


def _open_or_skip(ref):
    try:
        return open_checkpoint(ref)
    except CheckpointNotFound as exc:
        pytest.skip(str(exc))


@pytest.mark.timeout(1800)  # Qwen2.5-0.5B pair: ~2 GB read; minutes on a laptop
@pytest.mark.parametrize("key", ["qwen05b"])
def test_table1_row_for_a_real_pair(key):
    fam = registry.get(key)
    base, var = _open_or_skip(fam.base), _open_or_skip(fam.variant.ref)
    r = scan(base, var, progress=True)
    t1 = fam.variant.paper["table1"]
    assert len(r.blocks) == t1["blocks"]
    assert r.mean_cos > 0.99
    # the paper's eps-bar within a factor of two (its aggregation details are not all specified)
    assert t1["eps_mean"] / 2 < r.mean_frob < t1["eps_mean"] * 2
