"""Effective robustness math, shipped testbed fits, class-subset shifts (issue 4)."""

from __future__ import annotations

import csv
import json
import math
import warnings

import numpy as np
import pytest

from probekit.errors import UserError
from probekit.robustness import (
    AccuracyClippedWarning,
    Baseline,
    clip_accuracy,
    effective_robustness,
    fit_baseline,
    inverse_transform,
    list_baselines,
    load_baseline,
    transform,
)
from probekit.robustness.shifts import check_label_space, evaluate_shift, predict_shift, shift_for
from probekit.robustness.testbeds import read_testbed_csv, shipped_path

IMAGENET = {"imagenet-imagenetv2": "imagenet_to_imagenetv2_testbed.csv", "imagenet-objectnet": "imagenet_to_objectnet_testbed.csv",
            "imagenet-imagenet-r": "imagenet_to_imagenet_r_testbed.csv"}


# --- transforms -------------------------------------------------------------------------------

def test_logit_and_probit_match_hand_values():
    assert transform(0.5) == 0.0
    assert transform(0.9) == pytest.approx(math.log(9))
    assert transform(0.25) == pytest.approx(-math.log(3))
    assert transform(0.975, "probit") == pytest.approx(1.959963985, abs=1e-8)
    assert transform(0.5, "probit") == 0.0
    assert inverse_transform(math.log(9)) == pytest.approx(0.9)
    assert inverse_transform(1.959963985, "probit") == pytest.approx(0.975, abs=1e-9)
    a = np.array([0.1, 0.37, 0.88])
    for kind in ("logit", "probit"):
        np.testing.assert_allclose(inverse_transform(transform(a, kind), kind), a)


def test_percentages_negatives_nan_refused():
    with pytest.raises(UserError, match="percentage.*divide by 100"):
        transform(76.1)
    with pytest.raises(UserError, match="percentage"):
        transform([0.5, 93.0])
    with pytest.raises(UserError, match="negative"):
        transform(-0.1)
    with pytest.raises(UserError, match="NaN"):
        transform(float("nan"))
    with pytest.raises(UserError, match="unknown accuracy transform"):
        transform(0.5, "arcsin")


def test_zero_and_one_clipped_only_with_n_and_reported():
    with pytest.raises(UserError, match="strictly between 0 and 1"):
        transform(1.0)
    with pytest.warns(AccuracyClippedWarning):
        assert transform(1.0, n=100) == pytest.approx(math.log(0.995 / 0.005))
    with pytest.warns(AccuracyClippedWarning):
        assert transform(0.0, n=50) == pytest.approx(math.log(0.01 / 0.99))
    clipped, mask = clip_accuracy([0.0, 0.5, 1.0], 10)
    np.testing.assert_allclose(clipped, [0.05, 0.5, 0.95])
    assert mask.tolist() == [True, False, True]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing clipped, nothing warned
        transform(0.3, n=10)


# --- fits and ER ------------------------------------------------------------------------------

def _line_points(slope=0.8, intercept=-0.4, kind="logit"):
    ids = np.array([0.3, 0.5, 0.62, 0.8, 0.9])
    oods = inverse_transform(slope * transform(ids, kind) + intercept, kind)
    return ids, oods


def test_fit_recovers_an_exact_line_and_er_of_points():
    ids, oods = _line_points()
    b = fit_baseline(ids, oods, names=list("abcde"))
    assert (b.slope, b.intercept, b.r, b.n) == (pytest.approx(0.8), pytest.approx(-0.4), pytest.approx(1.0), 5)
    # a point on the line has ER 0; above it positive, below negative, by the exact vertical gap
    assert effective_robustness(0.7, b.expected_ood(0.7), b) == pytest.approx(0.0, abs=1e-12)
    expected = inverse_transform(0.8 * math.log(0.7 / 0.3) - 0.4)  # hand-computed T^-1(b1 T(x) + b0)
    assert effective_robustness(0.7, expected + 0.03, b) == pytest.approx(0.03)
    assert effective_robustness(0.7, expected - 0.05, b) == pytest.approx(-0.05)


def test_er_is_vectorised_over_heads_and_clips_with_n_id():
    ids, oods = _line_points()
    b = fit_baseline(ids, oods)
    acc_id = np.array([0.4, 0.7, 0.95])
    acc_ood = np.array([0.3, 0.6, 0.9])
    er = effective_robustness(acc_id, acc_ood, b)
    assert er.shape == (3,)
    np.testing.assert_allclose(er, [effective_robustness(a, o, b) for a, o in zip(acc_id, acc_ood)])
    er2, clipped = effective_robustness(np.array([1.0, 0.5]), np.array([0.9, 0.4]), b, n_id=1000, return_clipped=True)
    assert clipped.tolist() == [True, False]
    assert er2[0] == pytest.approx(0.9 - inverse_transform(0.8 * math.log(0.9995 / 0.0005) - 0.4))
    with pytest.raises(UserError, match="strictly between 0 and 1"):
        effective_robustness(1.0, 0.9, b)
    with pytest.raises(UserError, match="percentage"):
        effective_robustness(0.5, 45.0, b)


def test_er_accepts_torch_accuracies():
    torch = pytest.importorskip("torch")
    ids, oods = _line_points()
    b = fit_baseline(ids, oods)
    er = effective_robustness(torch.tensor([0.4, 0.7]), torch.tensor([0.3, 0.6]), b)
    np.testing.assert_allclose(er, effective_robustness(np.array([0.4, 0.7]), np.array([0.3, 0.6]), b), atol=1e-7)  # float32 inputs


def test_fit_refuses_bad_testbeds():
    with pytest.raises(UserError, match="at least 3"):
        fit_baseline([0.5, 0.6], [0.4, 0.5])
    with pytest.raises(UserError, match="more than once"):
        fit_baseline([0.5, 0.6, 0.7], [0.4, 0.5, 0.6], names=["a", "b", "a"])
    with pytest.raises(UserError, match="percentage"):
        fit_baseline([50, 60, 70], [40, 50, 60])
    with pytest.raises(UserError, match="3 ID accuracies but 2"):
        fit_baseline([0.5, 0.6, 0.7], [0.4, 0.5])
    with pytest.raises(UserError, match="same ID accuracy"):
        fit_baseline([0.5, 0.5, 0.5], [0.4, 0.5, 0.6])


def test_bootstrap_interval_brackets_the_fit_and_is_seeded():
    rng = np.random.default_rng(0)
    ids = rng.uniform(0.3, 0.9, 40)
    oods = inverse_transform(0.9 * transform(ids) - 0.5 + rng.normal(0, 0.05, 40))
    b = fit_baseline(ids, oods, bootstrap=500, seed=3)
    assert b.slope_ci[0] < b.slope < b.slope_ci[1]
    assert b.intercept_ci[0] < b.intercept < b.intercept_ci[1]
    assert b.slope_ci[1] - b.slope_ci[0] < 0.3
    assert fit_baseline(ids, oods, bootstrap=500, seed=3).slope_ci == b.slope_ci


def test_baseline_json_round_trip_and_wrong_schema(tmp_path):
    ids, oods = _line_points()
    b = fit_baseline(ids, oods, "probit", names=list("abcde"), bootstrap=50, name="mine", ood_set="x:test")
    path = b.save(tmp_path / "b.json")
    back = load_baseline(path, transform="probit")
    assert back == b and load_baseline(path) == b  # a file keeps its own transform by default
    as_logit = load_baseline(path, transform="logit")  # asked for another transform: refitted from the stored points
    assert as_logit.transform == "logit" and as_logit.slope == pytest.approx(fit_baseline(ids, oods).slope)
    (tmp_path / "bad.json").write_text(json.dumps({"slope": 1.0, "intercept": 0.0}))
    with pytest.raises(UserError, match="not a probekit baseline file"):
        load_baseline(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text(json.dumps({"schema": "probekit-baseline", "version": 1, "slope": "x"}))
    with pytest.raises(UserError, match="damaged"):
        load_baseline(tmp_path / "bad2.json")
    (tmp_path / "notjson.json").write_text("slope,intercept\n")
    with pytest.raises(UserError, match="not JSON"):
        Baseline.load(tmp_path / "notjson.json")
    with pytest.raises(UserError, match="does not exist"):
        load_baseline(tmp_path / "missing.json")


# --- shipped ImageNet testbeds ----------------------------------------------------------------

@pytest.mark.parametrize("name", IMAGENET)
@pytest.mark.parametrize("kind", ["logit", "probit"])
def test_named_imagenet_fits_match_the_shipped_reference(name, kind):
    ref = json.loads(shipped_path("imagenet_baseline_fits_computed.json").read_text())["fits"][IMAGENET[name]]
    b = load_baseline(name, transform=kind)
    assert b.n == ref["n_fit_models"]
    assert b.slope == pytest.approx(ref[kind]["slope"], abs=6e-6)
    assert b.intercept == pytest.approx(ref[kind]["intercept"], abs=6e-6)
    assert b.r == pytest.approx(ref[kind]["r"], abs=6e-6)
    assert "taori_line_fit" in b.source
    assert set(IMAGENET) <= set(list_baselines())


def _testbed_row(csv_name, model):
    with open(shipped_path(csv_name), newline="") as f:
        return next(r for r in csv.DictReader(f) if r["model"] == model)


def test_er_of_published_models_from_the_shipped_testbed():
    """ER of testbed models outside the fit, by hand from the reference slope/intercept (percent columns)."""
    ref = json.loads(shipped_path("imagenet_baseline_fits_computed.json").read_text())["fits"]
    for name, model in [("imagenet-imagenetv2", "vit_b_32_clip_zeroshot"), ("imagenet-objectnet", "FixResNeXt101_32x48d_v2"),
                        ("imagenet-imagenet-r", "efficientnet-l2-noisystudent")]:
        row = _testbed_row(IMAGENET[name], model)
        assert row["taori_line_fit"] == "0"
        x, y = float(row["id_top1"]) / 100, float(row["ood_top1"]) / 100
        fit = ref[IMAGENET[name]]["logit"]
        z = fit["slope"] * math.log(x / (1 - x)) + fit["intercept"]
        by_hand = y - 1 / (1 + math.exp(-z))
        assert effective_robustness(x, y, load_baseline(name)) == pytest.approx(by_hand, abs=2e-5)
    # CLIP ViT-B/32 zero-shot on ImageNetV2: the best-known large-ER model (issue 8: about +5.6 points)
    er = effective_robustness(0.633020, 0.557700, load_baseline("imagenet-imagenetv2"))
    assert er == pytest.approx(0.0563, abs=5e-4)


def test_line_fit_models_sit_near_the_line():
    b = load_baseline("imagenet-imagenetv2")
    rows = [r for r in read_testbed_csv(shipped_path(IMAGENET["imagenet-imagenetv2"])) if r.line_fit]
    er = effective_robustness(np.array([r.id for r in rows]), np.array([r.ood for r in rows]), b)
    assert abs(er.mean()) < 0.002 and np.abs(er).max() < 0.02


def test_unknown_named_baseline_suggests():
    with pytest.raises(UserError, match="unknown baseline 'imagenet-objnet'.*did you mean 'imagenet-objectnet'"):
        load_baseline("imagenet-objnet")


def test_cifar_baseline_missing_says_how_to_build(tmp_path):
    with pytest.raises(UserError, match="probekit baseline build cifar10-cifar10.1"):
        load_baseline("cifar10-cifar10.1", cache_dir=tmp_path)


# --- class-subset shifts ----------------------------------------------------------------------

def test_shift_lookup():
    assert shift_for("imagenetv2") is None and shift_for("cifar10.1:test") is None
    r, o = shift_for("imagenet-r:test"), shift_for("objectnet")
    assert (r.num_classes, r.reduce, r.id_eval) == (200, "select", "val-on-imagenet-r-classes")
    assert (o.num_classes, o.reduce, o.id_eval) == (113, "max", "val-on-objectnet-classes")
    assert len(o.all_imagenet_indices) == 125 and list(o.classes) == sorted(o.classes)
    assert o.classes[0] == "Alarm clock" and o.imagenet_indices[0] == (409, 530)


def test_objectnet_max_pooling_on_crafted_logits():
    o = shift_for("objectnet")
    alarm, chair = o.classes.index("Alarm clock"), o.classes.index("Chair")
    logits = np.zeros((3, 1000))
    logits[0, 530] = 5.0           # digital clock -> Alarm clock
    logits[1, 765] = 4.0           # rocking chair -> Chair
    logits[1, 409] = 3.0           # analog clock: lower than the chair logit
    logits[2, 0] = 100.0           # tench: not an ObjectNet class, must not win
    logits[2, 559] = 1.0           # folding chair
    restricted = o.restrict_logits(logits)
    assert restricted.shape == (3, 113)
    assert restricted[0, alarm] == 5.0 and restricted[1, chair] == 4.0 and restricted[1, alarm] == 3.0
    assert predict_shift(logits, o).tolist() == [alarm, chair, chair]
    assert evaluate_shift(logits, np.array([alarm, chair, alarm]), o) == pytest.approx(2 / 3)
    torch = pytest.importorskip("torch")
    t = torch.tensor(logits, dtype=torch.float32)
    assert torch.equal(o.restrict_logits(t), torch.tensor(restricted, dtype=torch.float32))
    assert evaluate_shift(t, torch.tensor([alarm, chair, alarm]), o) == pytest.approx(2 / 3)


def test_imagenet_r_selection_id_mask_and_label_map():
    r = shift_for("imagenet-r")
    logits = np.full((2, 2, 1000), -1.0)  # [H=2, N=2, C]
    logits[:, 0, 1] = 2.0                  # goldfish (ImageNet 1) = ImageNet-R class 0
    logits[:, 1, 0] = 9.0                  # tench (not in ImageNet-R) is ignored ...
    logits[:, 1, 2] = 1.0                  # ... so great white shark (ImageNet 2) = class 1 wins
    logits[1, 0, 4] = 3.0                  # head 1: hammerhead (class 2) beats goldfish on row 0
    acc = evaluate_shift(logits, np.array([0, 1]), r)
    np.testing.assert_allclose(acc, [1.0, 0.5])
    labels = np.array([0, 1, 2, 3, 4])
    assert r.id_mask(labels).tolist() == [False, True, True, False, True]
    assert r.map_id_labels(labels).tolist() == [-1, 0, 1, -1, 2]
    # ID accuracy on ImageNet val restricted to the ImageNet-R classes (val-on-imagenet-r-classes)
    val = np.full((5, 1000), -1.0)
    val[np.arange(5), labels] = 1.0      # right on every row ...
    val[4, 1] = 5.0                       # ... except row 4 (hammerhead predicted as goldfish)
    assert evaluate_shift(val, labels, r, on="id") == pytest.approx(2 / 3)


def test_objectnet_id_labels_map_many_to_one():
    o = shift_for("objectnet")
    alarm = o.classes.index("Alarm clock")
    assert o.map_id_labels(np.array([409, 530, 0])).tolist() == [alarm, alarm, -1]


def test_check_label_space():
    # label spaces as probekit.datasets names them
    assert check_label_space("imagenet1k", 1000, "objectnet:test", "objectnet113", 113) is shift_for("objectnet")
    assert check_label_space("imagenet1k", 1000, "imagenet-r:test", "imagenet-r200", 200) is shift_for("imagenet-r")
    assert check_label_space("imagenet1k", 1000, "imagenetv2:test", "imagenet1k", 1000) is None
    assert check_label_space("cifar10", 10, "cifar10.1:test", "cifar10", 10) is None
    assert check_label_space("imagenet-r200", 200, "imagenet-r:test", "imagenet-r200", 200) is None
    with pytest.raises(UserError, match="has 100 classes but objectnet has 113"):
        check_label_space("imagenet1k", 1000, "objectnet:test", "objectnet113", 100)
    with pytest.raises(UserError, match="10 classes of cifar10 but OOD set mnist5k:test has 10 classes of digits"):
        check_label_space("cifar10", 10, "mnist5k:test", "digits", 10)
    with pytest.raises(UserError, match="100 classes"):
        check_label_space("cifar100", 100, "objectnet", "objectnet", 113)
    with pytest.raises(UserError, match="1000-class ImageNet head"):
        shift_for("imagenet-r").restrict_logits(np.zeros((2, 10)))


def test_class_order_agrees_with_the_datasets_registry():
    """The objectnet / imagenet-r datasets label their images in the order the shifts assume."""
    imagenet = pytest.importorskip("probekit.datasets.imagenet")
    o, r = shift_for("objectnet"), shift_for("imagenet-r")
    assert list(o.classes) == imagenet.objectnet_labels()
    assert [sorted(i) for i in o.imagenet_indices] == imagenet.objectnet_imagenet_indices()
    assert [i[0] for i in r.imagenet_indices] == imagenet.imagenet_r_indices()


@pytest.mark.gpu
def test_evaluate_shift_on_cuda_tensors():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    o = shift_for("objectnet")
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 64, 1000, generator=g)
    labels = torch.randint(0, 113, (64,), generator=g)
    on_cpu = evaluate_shift(logits, labels, o)
    on_gpu = evaluate_shift(logits.cuda(), labels.cuda(), o)
    np.testing.assert_allclose(on_gpu, on_cpu)
    er = effective_robustness(torch.tensor(on_gpu).cuda(), torch.full((3,), 0.5).cuda(), load_baseline("imagenet-objectnet"), n_id=64)
    assert er.shape == (3,)
