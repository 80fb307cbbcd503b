"""Figures: ID-vs-OOD on logit axes, ER curves, sweeps; written as PNG + SVG (issue 4)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from probekit.cli import main
from probekit.errors import UserError
from probekit.plots import RunData, plot_er_curves, plot_id_vs_ood, plot_sweep, subset_of, sweep_table
from probekit.robustness import effective_robustness, fit_baseline, inverse_transform, load_baseline, load_testbed_points, transform
from probekit.runlog import RunWriter

OOD = "cifar10.1:test"


@pytest.fixture(scope="module")
def baseline():
    ids = np.linspace(0.5, 0.95, 8)
    return fit_baseline(ids, inverse_transform(0.8 * transform(ids) - 0.4), names=[f"m{i}" for i in range(8)], name="toy", ood_set=OOD)


def _write_run(path, baseline, *, heads=2, bonus=0.03, subset=None, steps=(1, 10, 100, 1000)):
    """Heads whose OOD accuracy sits `bonus` above the baseline early and on it at the end (ER vanishing)."""
    config = {"mode": "sgd", "id": "cifar10:test", "baseline": "toy"}
    if subset:
        config["subset"] = subset
    with RunWriter(path, config) as w:
        for h in range(heads):
            for i, step in enumerate(steps):
                acc_id = 0.5 + 0.4 * (i + 1) / len(steps) - 0.02 * h
                ood = float(baseline.expected_ood(acc_id)) + bonus * (1 - i / (len(steps) - 1))
                er = effective_robustness(acc_id, ood, baseline)
                w.log({"step": step, "epoch": step / 100, "head": f"lr=0.1,seed={h}", "loss": 1 / step, "acc_id": acc_id,
                       "acc_ood": {OOD: ood}, "er": {OOD: er}})
        w.finish({})
    return path


def _check_images(paths):
    assert {p.suffix for p in paths} == {".png", ".svg"}
    for p in paths:
        assert p.exists() and p.stat().st_size > 1000
    png = next(p for p in paths if p.suffix == ".png")
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.size[0] > 400 and im.size[1] > 300
    assert "<svg" in next(p for p in paths if p.suffix == ".svg").read_text()[:2000]


def test_id_vs_ood_and_er_curves(tmp_path, baseline):
    a = _write_run(tmp_path / "run-a", baseline)
    b = _write_run(tmp_path / "run-b", baseline, bonus=0.06)
    paths = plot_id_vs_ood([a, b], baseline, baseline.points, tmp_path / "fig" / "id_vs_ood")
    _check_images(paths)
    svg = paths[1].read_text()
    assert "OOD vs ID accuracy" in svg and "run-a" in svg and "training progress" in svg and "90%" in svg
    _check_images(plot_er_curves([a, b], tmp_path / "fig" / "er.png", x="epoch"))
    # the same figure from plain data (what the demo passes), probit axes, no baseline
    recs = [{"step": s, "head": "h", "acc_id": 0.6 + 0.01 * s, "acc_ood": {OOD: 0.5 + 0.01 * s}} for s in range(5)]
    _check_images(plot_id_vs_ood([RunData("demo", recs)], None, [("x", 0.5, 0.4), ("y", 0.7, 0.6)], tmp_path / "plain"))
    with pytest.raises(UserError, match="no ER"):
        plot_er_curves([RunData("demo", recs)], tmp_path / "er2")
    # ER recomputed from the baseline when the records have none
    _check_images(plot_er_curves([RunData("demo", recs)], tmp_path / "er3", baseline=baseline))


def test_id_vs_ood_with_shipped_imagenet_testbed_and_subset_id(tmp_path):
    b = load_baseline("imagenet-objectnet")
    recs = [{"step": s, "head": "h0", "acc_id": 0.6 + 0.03 * s, "acc_ood": {"objectnet:test": 0.3 + 0.03 * s},
             "acc_id_subset": {"objectnet:test": 0.7 + 0.03 * s}, "id_eval": {"objectnet:test": "val-on-objectnet-classes"}}
            for s in range(5)]
    paths = plot_id_vs_ood([RunData("objnet", recs)], b, load_testbed_points("imagenet-objectnet"), tmp_path / "o", formats=("png",))
    assert [p.suffix for p in paths] == [".png"]
    with pytest.warns(UserWarning, match="lack acc_id_subset"):
        plot_id_vs_ood([RunData("full-id", [{k: v for k, v in r.items() if k != "acc_id_subset"} for r in recs])], b, [],
                       tmp_path / "o2", formats=("png",))
    rows = sweep_table([RunData("objnet", recs, {"subset": "classes=50"})], baseline=b)
    # ER uses the ID accuracy on the ObjectNet classes, not the full val accuracy
    assert rows[0]["final_er"] == pytest.approx(effective_robustness(0.82, 0.42, b))


def test_sweep_table_and_plot(tmp_path, baseline):
    runs = [_write_run(tmp_path / f"pc{n}", baseline, subset=f"per-class={n}", bonus=0.01 * i) for i, n in enumerate((10, 100, 1000))]
    runs += [_write_run(tmp_path / f"k{k}", baseline, subset=f"classes={k}") for k in (2, 5)]
    runs += [_write_run(tmp_path / f"c{kind}", baseline, subset=f"cscore={kind}:500") for kind in ("hardest", "easiest", "random")]
    runs.append(_write_run(tmp_path / "full", baseline))  # no subset: not in the sweep
    rows = sweep_table(runs)
    assert len(rows) == 8
    pc = [r for r in rows if r["sweep"] == "size"]
    assert [r["value"] for r in pc] == [10, 100, 1000]
    # final ER: the last step sits on the baseline; peak ER: the first step, `bonus` above it
    assert all(abs(r["final_er"]) < 1e-9 for r in pc)
    assert [r["peak_er"] for r in pc] == [pytest.approx(0.0), pytest.approx(0.01), pytest.approx(0.02)]
    _check_images(plot_sweep(runs, tmp_path / "sweep"))
    _check_images(plot_sweep(runs, tmp_path / "sweep_cscore", by="cscore"))
    with pytest.raises(UserError, match="no run has"):
        plot_sweep(runs[-1:], tmp_path / "none")
    assert subset_of({"subset": "cscore=easiest:5000"}) == ("cscore", "easiest:5000")
    assert subset_of({"subset": "per-class=20"}) == ("size", 20) and subset_of({}) is None


def test_plot_cli(tmp_path, baseline, capsys):
    a = _write_run(tmp_path / "a", baseline, subset="per-class=10")
    b = _write_run(tmp_path / "b", baseline, subset="per-class=100")
    fit = baseline.save(tmp_path / "toy.json")
    out = tmp_path / "figs"
    rc = main(["plot", str(a), str(b), "--out", str(out), "--baseline", str(fit)])
    assert rc == 0, capsys.readouterr()
    for stem in ("id_vs_ood", "er_vs_step", "sweep"):
        _check_images([out / f"{stem}.png", out / f"{stem}.svg"])
    # bad input: one line, exit 2
    rc = main(["plot", str(a), "--baseline", "imagenet-imagenetv3"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "did you mean 'imagenet-imagenetv2'" in err
    rc = main(["plot", str(tmp_path / "nope")])
    assert rc == 2 and "not a probekit run folder" in capsys.readouterr().err
    rc = main(["plot", str(a), "--ood-set", "imagenet-r:test", "--baseline", str(fit)])
    assert rc == 2 and "not in the runs" in capsys.readouterr().err
    # without --baseline: the runs' config names "toy", which does not resolve; ID-vs-OOD is still drawn, ER from the records
    rc = main(["plot", str(a), "--out", str(tmp_path / "nobase"), "--format", "png"])
    out = capsys.readouterr().out
    assert rc == 0 and "cannot be loaded" in out
    assert (tmp_path / "nobase" / "id_vs_ood.png").exists() and (tmp_path / "nobase" / "er_vs_step.png").exists()
    assert not (tmp_path / "nobase" / "id_vs_ood.svg").exists()
