"""Notebook tier: 07_panel on the embedded families (tiny: base against instruct/chat/qa/coder/scratch, plus
instruct -> coder; tiny-moe, tiny-olmo2, tiny-phi3: base against instruct/coder, plus instruct -> coder) on a
LocalCluster of 2 worker processes; the aggregates are checked against single-pair scans (the `scan` that
notebook 01 runs), in this process."""
from __future__ import annotations

import pytest

from linker_nb.analyses.scan import scan
from linker_nb.io import registry

pytestmark = [pytest.mark.notebook, pytest.mark.timeout(240)]  # 54 s on 2 loaded cores (kernel, cluster, 15 scans)

NEW = ["tiny-moe", "tiny-olmo2", "tiny-phi3"]   # the other layouts' embedded families, in registry order


@pytest.fixture(scope="module")
def panel_run(notebook_runner, tmp_path_factory):
    store = tmp_path_factory.mktemp("panel") / "store"
    return notebook_runner("07_panel", timeout=200, model="tiny", store=str(store), n_workers=2,
                           gains={"tiny": 2.5})


def test_every_pair_scanned_once_on_two_workers(panel_run):
    r = panel_run
    assert r["study"] == "07_panel" and r["models"] == ["tiny", *NEW] and r["n_workers"] == 2
    assert r["counts"] == {"scanned": 15, "stored": 0, "failed": 0} and r["failures"] == []
    assert len({p["key"] for p in r["pairs"]}) == 15 and r["tau_cos"] is None  # each family's own thresholds
    assert all(p["worker"].startswith("tcp://127.0.0.1:") for p in r["pairs"])  # ran on the cluster's workers
    assert r["scheduler"].startswith("tcp://127.0.0.1:")


def test_aggregates_match_single_pair_scans(panel_run):
    r = panel_run
    by_label = {p["label"]: p for p in r["pairs"]}
    t1 = {row["pair"]: row for row in r["table1"]}
    assert list(t1) == sorted(t1, key=lambda k: t1[k]["ε̄"])  # ordered by eps-bar
    assert set(t1) == {"tiny base → instruct", "tiny base → chat", "tiny base → qa",
                       *(f"{k} base → instruct" for k in NEW)}
    t2 = {row["pair"]: row for row in r["table2"]}
    for label, p in by_label.items():
        s = scan(p["base_ref"], p["variant_ref"], progress=False)
        assert p["mean_frob"] == pytest.approx(s.mean_frob, rel=1e-12) and p["n_blocks"] == len(s.blocks) == 8
        assert t2[label]["mean cos"] == pytest.approx(s.mean_cos, rel=1e-12)
        fam = registry.get(label.split(" ")[0])     # each family's registry thresholds
        assert p["n_shareable"] == sum(s.share_mask(fam.tau_cos, fam.tau_frob))
        if label in t1:
            row, frobs, coss = t1[label], [b.frob for b in s.blocks], [b.cos for b in s.blocks]
            assert (row["ε min"], row["ε max"], row["cos min"], row["cos max"]) == pytest.approx(
                (min(frobs), max(frobs), min(coss), max(coss)), rel=1e-12)
            assert r["figure1"][label]["eps"] == pytest.approx(frobs, rel=1e-12)
            assert r["figure1"][label]["depth"] == pytest.approx([i / 7 for i in range(8)])
    regions = {k: v["region"] for k, v in t2.items()}
    assert [regions[f"tiny base → {v}"] for v in ("instruct", "chat", "qa")] == ["aligned"] * 3
    assert [regions[k] for k in ("tiny base → coder", "tiny base → scratch", "tiny instruct → coder")] == ["outside"] * 3
    for k in NEW:   # every layout: SFT inside the aligned region, continued pre-training and the cross pair outside
        assert [regions[f"{k} {pair}"] for pair in ("base → instruct", "base → coder", "instruct → coder")] == \
            ["aligned", "outside", "outside"]
    assert r["table10"] is None  # no older release of the embedded family
    fig2 = r["figure2"]
    assert fig2["points"] == [{"family": "tiny", "label": fig2["points"][0]["label"], "source": "measured", "gain": 2.5,
                               "eps_mean": pytest.approx(by_label["tiny base → instruct"]["mean_frob"])}]
    assert fig2["pearson"] is None and fig2["paper"]["pearson"] == 0.819
