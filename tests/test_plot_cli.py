"""`probekit plot` finds a run's baseline from the fit logged in its config."""

from probekit.cli import main
from probekit.robustness import fit_baseline
from probekit.runlog import RunWriter


def _run(folder, fit):
    with RunWriter(folder, {"baseline": str(folder / "gone.json"), "baseline_fit": fit.to_json()}) as w:
        for step, (a, b) in enumerate([(0.5, 0.3), (0.7, 0.5), (0.9, 0.6)]):
            w.log({"step": step, "epoch": step, "head": "lr=0.1,seed=0", "acc_id": a, "acc_ood": {"m:test": b},
                   "er": {"m:test": fit.expected_ood(a) - b}})
        w.finish({})


def test_plot_uses_the_logged_fit_when_the_file_is_gone(tmp_path, capsys):
    fit = fit_baseline([0.4, 0.6, 0.8, 0.9], [0.2, 0.35, 0.6, 0.75], names=list("abcd"), name="mine", ood_set="m:test")
    _run(tmp_path / "run", fit)
    assert main(["plot", str(tmp_path / "run"), "--format", "png"]) == 0
    out = capsys.readouterr().out
    assert "plotting without it" not in out
    assert (tmp_path / "run" / "id_vs_ood.png").stat().st_size > 0
