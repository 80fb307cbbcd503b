"""`probekit demo --quick`: the whole pipeline end to end on bundled data, and its reuse on a rerun."""

import json

import pytest

from probekit.cli import main
from probekit.runlog import is_complete

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    out, cache = root / "demo", root / "cache"
    assert main(["demo", "--quick", "--out", str(out), "--cache-dir", str(cache)]) == 0
    return out, cache


def test_demo_writes_runs_figures_and_summary(demo):
    out, _ = demo
    for run in ("heads-sgd", "heads-lbfgs", "finetune"):
        assert is_complete(out / run), run
    for figure in ("id_vs_ood.png", "id_vs_ood.svg", "er_curves.png", "er_curves.svg"):
        assert (out / figure).stat().st_size > 1000, figure
    summary = json.loads((out / "summary.json").read_text())
    b = summary["baseline"]
    assert b["transform"] == "logit" and b["n"] >= 10 and b["r"] >= 0.9  # a line worth measuring against, even in --quick
    ids = [p["id"] for p in b["points"]]
    assert min(ids) < 0.5 and max(ids) > 0.85  # spread over the ID range
    assert f"Pearson r = {b['r']:.3f} (n = {b['n']})" in (out / "summary.md").read_text()
    runs = {row["run"] for row in summary["rows"]}
    assert runs == {"heads-sgd", "heads-lbfgs", "finetune"}
    for row in summary["rows"]:
        assert 0 <= row["acc_id"] <= 1 and 0 <= row["acc_ood"] <= 1
        assert row["er_final"] is not None and row["er_peak"] >= row["er_final"] - 1e-12
    sgd = [r for r in summary["rows"] if r["run"] == "heads-sgd"]
    assert min(r["acc_id"] for r in sgd) > 0.8  # pretrained features separate digits well
    assert "| run | head |" in (out / "summary.md").read_text()
    for figure in ("ablation.png", "ablation.svg"):
        assert (out / figure).stat().st_size > 1000, figure
    cells = {r["cell"]: r for r in summary["ablation"]}
    assert len(cells) == 12 and all(r["complete"] for r in cells.values())  # 3 sizes + 3 difficulties, 2 seeds each
    assert cells["size=5,seed=0,lr=0.1"]["n_train"] == 50 and cells["difficulty=hardest,seed=1,lr=0.1"]["n_train"] == 200
    assert all(r["er:mnist5k:test"] is not None for r in cells.values())
    assert "## Data ablations" in (out / "summary.md").read_text()
    testbed = (out / "testbed.csv").read_text().splitlines()
    assert testbed[0] == "model,id,ood" and len(testbed) == 1 + summary["baseline"]["n"]


def test_second_run_reuses_complete_stages(demo, capsys):
    out, cache = demo
    before = (out / "heads-sgd" / "log.jsonl").stat().st_mtime_ns
    assert main(["demo", "--quick", "--out", str(out), "--cache-dir", str(cache)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("reusing") >= 6  # testbed runs, both head runs, the ablation and the fine-tuning run
    assert (out / "heads-sgd" / "log.jsonl").stat().st_mtime_ns == before
