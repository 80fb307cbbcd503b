"""Zero-shot CLIP heads: class lists, text-embedding cache, head, `probekit zero-shot`, zero-shot init.

A tiny open_clip architecture (registered from a JSON config, 3.4 M parameters, random init) is
saved to a file and loaded back through probekit's real CLIP loader, so no weights are
downloaded. Image features are written through the feature store's own writer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from _clip import ARCH, MODEL, save_tiny_clip  # noqa: E402
from _clip import matching_features as _matching_features  # noqa: E402
from _features import write_feature_entry  # noqa: E402
from probekit import features
from probekit import cache  # noqa: E402
from probekit.cli import main  # noqa: E402
from probekit.errors import UserError  # noqa: E402
from probekit.runlog import read_run  # noqa: E402
from probekit.zeroshot import (  # noqa: E402
    CIFAR10_CLASSNAMES,
    CIFAR10_TEMPLATES,
    load_classes,
    text_cache_path,
    zero_shot_head,
    zero_shot_init,
)

NAMES = ("red apple", "blue whale", "steam locomotive")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A random-init tiny CLIP saved as a state dict: (weights path, the model itself)."""
    return save_tiny_clip(tmp_path_factory.mktemp("tinyclip"))


@pytest.fixture()
def class_file(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("# three classes\n" + "\n".join(NAMES) + "\n\n")
    return path


def _write_features(folder: Path, X: np.ndarray, y: np.ndarray, *, weights: Path, dataset: str, split: str = "test",
                    backbone: str = MODEL, weight_id: str | None = None, feature_kind: str = "clip-image-embed",
                    classes=NAMES, label_space: str = "synth3") -> Path:
    """A complete feature-store entry written with the cache's own writer, as `extract` names it."""
    from probekit.backbones.weights import weight_id as file_weight_id

    wid = weight_id or file_weight_id(weights)
    return write_feature_entry(folder, dataset, split, X, y, backbone=backbone, weight_id=wid, classes=classes,
                               label_space=label_space, feature_kind=feature_kind, weights=str(weights))


def _reference_weights(model, names, templates, arch: str = ARCH) -> np.ndarray:
    """open_clip's own zero-shot weights for the in-memory model (no probekit code involved)."""
    tok = open_clip.get_tokenizer(arch)
    with torch.no_grad():
        return open_clip.build_zero_shot_classifier(model, tok, list(names), list(templates), device="cpu").numpy()


# ------------------------------------------------------------------ class names and templates


def test_builtin_class_lists():
    imagenet = load_classes("imagenet")
    assert len(imagenet) == 1000 and len(imagenet.templates) == 80 and imagenet.label_space == "imagenet1k"
    assert imagenet.names[0] == "tench" and "a bad photo of a {}." in imagenet.templates
    cifar = load_classes("CIFAR10")
    assert cifar.names == CIFAR10_CLASSNAMES and cifar.templates == CIFAR10_TEMPLATES and len(cifar.templates) == 18
    assert cifar.label_space == "cifar10"


def test_class_and_template_files(tmp_path, class_file):
    got = load_classes(str(class_file))
    assert got.names == NAMES and got.templates == ("a photo of a {}.",) and got.label_space is None
    tpl = tmp_path / "templates.txt"
    tpl.write_text("a photo of a {}.\nan origami {}.\n")
    assert load_classes(str(class_file), tpl).templates == ("a photo of a {}.", "an origami {}.")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(UserError, match="empty"):
        load_classes(str(tmp_path / "empty.txt"))
    tpl.write_text("a photo without a slot\n")
    with pytest.raises(UserError, match="exactly one"):
        load_classes(str(class_file), tpl)
    with pytest.raises(UserError, match="neither a built-in list"):
        load_classes(str(tmp_path / "missing.txt"))


# ------------------------------------------------------------------ the head and the text cache


def test_head_matches_open_clip_and_is_deterministic(tmp_path, clip, class_file):
    weights, model = clip
    head = zero_shot_head(MODEL, str(class_file), weights=weights, cache_dir=tmp_path, use_cache=False)
    assert head.W.shape == (32, 3) and head.W.dtype == np.float32 and head.num_classes == 3
    np.testing.assert_allclose(np.linalg.norm(head.W, axis=0), 1.0, atol=1e-5)
    assert head.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()))
    np.testing.assert_allclose(head.W, _reference_weights(model, NAMES, head.classes.templates), atol=1e-5)
    again = zero_shot_head(MODEL, str(class_file), weights=weights, cache_dir=tmp_path, use_cache=False)
    np.testing.assert_array_equal(head.W, again.W)
    W, b = head.linear_init()  # the estimators' init layout: coef [C, D], intercept [C]
    np.testing.assert_allclose(W, head.logit_scale * head.W.T, rtol=1e-6)
    assert b.shape == (3,) and not b.any()
    X, _ = _matching_features(head.W, 4, 0.0, 0)
    np.testing.assert_allclose(head.logits(X), head.logit_scale * X @ head.W, rtol=1e-5, atol=1e-5)


def test_text_cache_hit_miss_and_damage(tmp_path, clip, class_file):
    weights, _ = clip
    first = zero_shot_head(MODEL, str(class_file), weights=weights, cache_dir=tmp_path)
    path = text_cache_path(MODEL, first.embeddings.key, tmp_path)
    assert not first.cache_hit and path.is_file()
    second = zero_shot_head(MODEL, str(class_file), weights=weights, cache_dir=tmp_path)
    assert second.cache_hit
    np.testing.assert_array_equal(first.W, second.W)
    assert second.logit_scale == first.logit_scale
    tpl = tmp_path / "t.txt"
    tpl.write_text("an origami {}.\n")
    other = zero_shot_head(MODEL, str(class_file), weights=weights, templates=tpl, cache_dir=tmp_path)
    assert not other.cache_hit and other.embeddings.key != first.embeddings.key
    assert not np.allclose(other.W, first.W)
    path.write_bytes(b"not an npz")  # a damaged entry is rebuilt, never trusted
    rebuilt = zero_shot_head(MODEL, str(class_file), weights=weights, cache_dir=tmp_path)
    assert not rebuilt.cache_hit
    np.testing.assert_array_equal(rebuilt.W, first.W)
    assert zero_shot_head(MODEL, str(class_file), weights=weights, cache_dir=tmp_path).cache_hit


# ------------------------------------------------------------------ the command


def _baseline_file(tmp_path: Path, ood_set: str | None = None) -> Path:
    from probekit.robustness import fit_baseline

    fit = fit_baseline([0.5, 0.6, 0.7, 0.8], [0.4, 0.45, 0.6, 0.7], name="synthetic", source="test", ood_set=ood_set)
    return fit.save(tmp_path / "baseline.json")


def test_zero_shot_command_writes_a_run(tmp_path, clip, class_file, capsys):
    weights, _ = clip
    store = tmp_path / "cache"
    head = zero_shot_head(MODEL, str(class_file), weights=weights, cache_dir=store)
    X, y = _matching_features(head.W, 20, 0.005, 1)
    _write_features(store, X, y, weights=weights, dataset="synth-id")
    Xo, yo = _matching_features(head.W, 10, 0.005, 2)
    yo = yo.copy()
    yo[::2] = (yo[::2] + 1) % 3  # every other OOD label is wrong: accuracy exactly 0.5
    ood_path = _write_features(store, Xo, yo, weights=weights, dataset="synth-ood")
    out = tmp_path / "run"
    code = main(["zero-shot", "--model", MODEL, "--weights", str(weights), "--classes", str(class_file),
                 "--id", "synth-id:test", "--ood", str(ood_path), "--baseline", str(_baseline_file(tmp_path)),
                 "--out", str(out), "--cache-dir", str(store)])
    assert code == 0, capsys.readouterr().err
    run = read_run(out)
    assert run.complete and run.heads == ["zero-shot"] and len(run.records) == 1
    rec = run.records[0]
    assert rec["step"] == 0 and rec["head"] == "zero-shot" and rec["id_set"] == "synth-id:test"
    assert rec["acc_id"] == 1.0
    assert rec["acc_ood"] == {"synth-ood:test": 0.5}
    from probekit.robustness import effective_robustness, load_baseline

    want = effective_robustness(1.0, 0.5, load_baseline(str(tmp_path / "baseline.json")), n_id=60, return_clipped=True)[0]
    assert rec["er"]["synth-ood:test"] == pytest.approx(want)
    assert rec.get("clipped") is True  # acc_id of exactly 1 was clipped for the logit
    assert run.summary["heads"]["zero-shot"]["final"]["acc_id"] == 1.0 and run.summary["text_cache_hit"] is True
    assert run.config["model"] == MODEL and run.config["num_classes"] == 3
    preds = np.load(out / "predictions.npz")
    assert preds["synth-ood:test"].shape == (1, 1, 30)
    np.testing.assert_array_equal(preds["synth-ood:test"][0, 0], np.repeat(np.arange(3), 10))
    table = capsys.readouterr().out  # accuracies in %, ER in points
    assert "ID acc %" in table and " 100.00 " in table and f"{100 * want:+.2f}" in table


def test_class_subset_shift_goes_through_robustness(tmp_path, clip):
    """A 1000-class ImageNet head on ImageNet-R: OOD logits restricted to the 200 classes, ID on those classes."""
    from probekit.robustness.shifts import shift_for

    weights, _ = clip
    store = tmp_path / "cache"
    names = tuple(f"object number {i}" for i in range(1000))
    (tmp_path / "in1k.txt").write_text("\n".join(names))
    head = zero_shot_head(MODEL, str(tmp_path / "in1k.txt"), weights=weights, cache_dir=store)
    X, y = _matching_features(head.W, 1, 0.0, 0)
    id_path = _write_features(store, X, y, weights=weights, dataset="imagenet", split="val", classes=names, label_space="imagenet1k")
    shift = shift_for("imagenet-r")
    sub = np.array([i[0] for i in shift.imagenet_indices])
    Xr = head.W.T[sub]
    yr = np.arange(200)
    r_path = _write_features(store, Xr, yr, weights=weights, dataset="imagenet-r", classes=shift.classes, label_space="imagenet-r")
    out = tmp_path / "run"
    assert main(["zero-shot", "--model", MODEL, "--weights", str(weights), "--classes", str(tmp_path / "in1k.txt"),
                 "--id", str(id_path), "--ood", str(r_path), "--out", str(out), "--cache-dir", str(store)]) == 0
    rec = read_run(out).records[0]
    full = float((head.logits(X).argmax(1) == y).mean())
    assert rec["acc_id"] == pytest.approx(full)
    assert rec["acc_ood"]["imagenet-r:test"] == 1.0
    assert rec["id_eval"]["imagenet-r:test"] == "val-on-imagenet-r-classes"
    assert rec["acc_id_subset"]["imagenet-r:test"] == 1.0


@pytest.mark.parametrize("case", ["pre-projection", "other-backbone", "other-weights", "empty-classes", "class-count", "label-space"])
def test_bad_inputs_exit_2_with_one_line(tmp_path, clip, class_file, capsys, case):
    weights, _ = clip
    store = tmp_path / "cache"
    head = zero_shot_head(MODEL, str(class_file), weights=weights, cache_dir=store)
    X, y = _matching_features(head.W, 3, 0.005, 0)
    kw = {}
    classes = str(class_file)
    if case == "pre-projection":
        kw = {"feature_kind": "clip-pre-projection"}
    elif case == "other-backbone":
        kw = {"backbone": "clip-vit-b-32"}
    elif case == "other-weights":
        kw = {"weight_id": "sha256:" + "0" * 64}
    elif case == "empty-classes":
        (tmp_path / "none.txt").write_text("\n")
        classes = str(tmp_path / "none.txt")
    elif case == "class-count":
        (tmp_path / "four.txt").write_text("\n".join(NAMES + ("violin",)))
        classes = str(tmp_path / "four.txt")
    elif case == "label-space":
        classes = "cifar10"
        kw = {"classes": CIFAR10_CLASSNAMES, "label_space": "digits"}
    path = _write_features(store, X, y, weights=weights, dataset="synth-id", **kw)
    capsys.readouterr()
    code = main(["zero-shot", "--model", MODEL, "--weights", str(weights), "--classes", classes, "--id", str(path),
                 "--out", str(tmp_path / "run"), "--cache-dir", str(store)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("probekit: error: ") and err.count("\n") == 1, err
    expected = {"pre-projection": "clip-pre-projection", "other-backbone": "same CLIP model", "other-weights": "same CLIP model",
                "empty-classes": "empty", "class-count": "4", "label-space": "label space"}[case]
    assert expected in err
    assert not (tmp_path / "run" / "summary.json").exists()


def test_baseline_for_another_ood_set_is_refused(tmp_path, clip, class_file, capsys):
    weights, _ = clip
    store = tmp_path / "cache"
    head = zero_shot_head(MODEL, str(class_file), weights=weights, cache_dir=store)
    X, y = _matching_features(head.W, 3, 0.005, 0)
    id_path = _write_features(store, X, y, weights=weights, dataset="synth-id")
    ood_path = _write_features(store, X, y, weights=weights, dataset="synth-ood")
    code = main(["zero-shot", "--model", MODEL, "--weights", str(weights), "--classes", str(class_file), "--id", str(id_path),
                 "--ood", str(ood_path), "--baseline", str(_baseline_file(tmp_path, ood_set="imagenetv2")),
                 "--out", str(tmp_path / "run"), "--cache-dir", str(store)])
    err = capsys.readouterr().err
    assert code == 2 and "imagenetv2" in err and err.count("\n") == 1


# ------------------------------------------------------------------ zero-shot init


def test_zero_shot_init_reproduces_the_zero_shot_evaluation(tmp_path, clip, class_file):
    from probekit.heads.evaluation import EvalSet, evaluate_all
    from probekit.zeroshot import evaluate_zero_shot

    weights, _ = clip
    store = tmp_path / "cache"
    head = zero_shot_head(MODEL, str(class_file), weights=weights, cache_dir=store)
    X, y = _matching_features(head.W, 10, 0.1, 3)  # noisy enough that accuracy is between 0 and 1
    fs = cache.load_features(_write_features(store, X, y, weights=weights, dataset="synth-train"))
    W, b = zero_shot_init(MODEL, str(class_file), fs, weights=weights, cache_dir=store)
    np.testing.assert_allclose(W, head.logit_scale * head.W.T, rtol=1e-6)
    zs = evaluate_zero_shot(head, fs).record["acc_id"]
    assert 0.0 < zs < 1.0
    acc = evaluate_all([EvalSet("t", torch.from_numpy(fs.features), torch.from_numpy(fs.labels))],
                       torch.from_numpy(W.T.copy())[None], torch.from_numpy(b)[None])["t"][0]
    assert acc == pytest.approx(zs)
    bad = cache.load_features(_write_features(store, X, y, weights=weights, dataset="synth-pre", feature_kind="clip-pre-projection"))
    with pytest.raises(UserError, match="pre-projection"):
        zero_shot_init(MODEL, str(class_file), bad, weights=weights, cache_dir=store)


def test_estimators_started_from_zero_shot_begin_at_the_zero_shot_point(tmp_path, clip, class_file):
    """SGD heads and the L-BFGS sweep with ``init=zero_shot_init(...)``: their step-0 accuracies are the zero-shot ones."""
    from probekit.heads.lbfgs import LBFGSLogistic
    from probekit.heads.sgd import SGDHeads
    from probekit.zeroshot import evaluate_zero_shot

    weights, _ = clip
    store = tmp_path / "cache"
    head = zero_shot_head(MODEL, str(class_file), weights=weights, cache_dir=store)
    X, y = _matching_features(head.W, 10, 0.1, 4)
    Xo, yo = _matching_features(head.W, 10, 0.1, 5)
    train = cache.load_features(_write_features(store, X, y, weights=weights, dataset="synth-train"))
    ood = cache.load_features(_write_features(store, Xo, yo, weights=weights, dataset="synth-ood"))
    zs = evaluate_zero_shot(head, train, [ood]).record
    assert 0.0 < zs["acc_id"] < 1.0 and 0.0 < zs["acc_ood"]["synth-ood:test"] < 1.0
    init = zero_shot_init(MODEL, str(class_file), train, head=head)
    sets = {"id": (train.features, train.labels), "ood": (ood.features, ood.labels)}

    sgd_points = []
    SGDHeads(lrs=[0.1, 0.01], seeds=[0], batch_size=8, epochs=1, init=init, device="cpu").fit(
        train.features, train.labels, eval_sets=sets, callback=sgd_points.append)
    assert sgd_points[0].step == 0
    np.testing.assert_allclose(sgd_points[0].acc["id"], [zs["acc_id"]] * 2)
    np.testing.assert_allclose(sgd_points[0].acc["ood"], [zs["acc_ood"]["synth-ood:test"]] * 2)

    lbfgs_points = []
    LBFGSLogistic(l2_grid=[1.0], max_iter=3, init=init, device="cpu").fit(
        train.features, train.labels, eval_sets=sets, callback=lbfgs_points.append)
    assert lbfgs_points[0].step == 0
    assert lbfgs_points[0].acc["id"][0] == pytest.approx(zs["acc_id"])
    assert lbfgs_points[0].acc["ood"][0] == pytest.approx(zs["acc_ood"]["synth-ood:test"])


@pytest.mark.parametrize("solver", ["sgd", "lbfgs"])
def test_train_head_init_zero_shot_starts_at_the_zero_shot_record(tmp_path, clip, class_file, solver, capsys):
    """`probekit train-head --init zero-shot`: every head's step-0 record equals the `probekit zero-shot` record."""
    weights, _ = clip
    store = tmp_path / "cache"
    head = zero_shot_head(MODEL, str(class_file), weights=weights, cache_dir=store)
    X, y = _matching_features(head.W, 10, 0.1, 6)
    _write_features(store, X, y, weights=weights, dataset="synth", split="train")
    Xt, yt = _matching_features(head.W, 10, 0.1, 7)
    id_path = _write_features(store, Xt, yt, weights=weights, dataset="synth", split="test")
    Xo, yo = _matching_features(head.W, 10, 0.12, 8)
    ood_path = _write_features(store, Xo, yo, weights=weights, dataset="synth-ood")
    baseline = _baseline_file(tmp_path)
    common = ["--model", MODEL, "--weights", str(weights), "--id", str(id_path), "--ood", str(ood_path),
              "--baseline", str(baseline), "--cache-dir", str(store)]
    assert main(["zero-shot", "--classes", str(class_file), "--out", str(tmp_path / "zs"), *common]) == 0
    zs = read_run(tmp_path / "zs").records[0]
    assert 0.0 < zs["acc_id"] < 1.0 and 0.0 < zs["acc_ood"]["synth-ood:test"] < 1.0

    extra = (["--lr", "0.1", "0.01", "--seeds", "0", "1", "--batch-size", "8", "--epochs", "1"] if solver == "sgd"
             else ["--l2-grid", "1.0", "--max-iter", "3"])
    code = main(["train-head", "--init", "zero-shot", "--classes", str(class_file), "--train", "synth:train", "--solver", solver,
                 "--out", str(tmp_path / solver), "--device", "cpu", "--no-progress", *common, *extra])
    assert code == 0, capsys.readouterr().err
    run = read_run(tmp_path / solver)
    assert run.config["init"] == "zero-shot" and run.config["zero_shot"]["num_templates"] == 1
    firsts = [run.head_records(h)[0] for h in run.heads]
    assert len(firsts) == (4 if solver == "sgd" else 1)
    for rec in firsts:
        assert rec["step"] == 0
        assert rec["acc_id"] == pytest.approx(zs["acc_id"])
        assert rec["acc_ood"] == pytest.approx(zs["acc_ood"])
        assert rec["er"] == pytest.approx(zs["er"])
    assert any(r["acc_id"] != zs["acc_id"] or r["acc_ood"] != zs["acc_ood"] for r in run.records)  # training moved on


@pytest.mark.parametrize("flags, expected", [(["--classes", "cifar10"], "only apply with --init zero-shot"),
                                             (["--init", "zero-shot"], "needs --classes")])
def test_train_head_init_flags_need_each_other(tmp_path, flags, expected, capsys):
    code = main(["train-head", "--train", "x.h5", "--id", "y.h5", "--out", str(tmp_path / "run"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and err.count("\n") == 1


@pytest.mark.slow
def test_clip_vit_b_32_registry_name_with_a_local_checkpoint(tmp_path, class_file):
    """The paper's `clip-vit-b-32` (ViT-B-32-quickgelu) through --weights PATH: a 512-d head, CLIP's 1/0.07 scale."""
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval()
    path = tmp_path / "vit-b-32.pt"
    torch.save(model.state_dict(), path)
    tpl = tmp_path / "t.txt"
    tpl.write_text("a photo of a {}.\n")
    head = zero_shot_head("clip-vit-b-32", str(class_file), weights=path, templates=tpl, cache_dir=tmp_path)
    assert head.W.shape == (512, 3) and head.model == "clip-vit-b-32"
    assert head.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)
    np.testing.assert_allclose(head.W, _reference_weights(model, NAMES, head.classes.templates, "ViT-B-32-quickgelu"), atol=1e-5)


def test_end_to_end_with_features_from_extract(tmp_path, clip, capsys):
    """Real stage 1 (`extract` of bundled digits through the tiny CLIP) then `probekit zero-shot` by dataset:split."""
    from probekit.extract import extract

    weights, _ = clip
    store = tmp_path / "cache"
    for feature in (None, "pre-projection"):
        extract(MODEL, "digits", "test", weights=str(weights), cache_dir=store, device="cpu", workers=0,
                batch_size=256, feature=feature, progress=False, quiet=True)
    names = tmp_path / "digits.txt"
    names.write_text("\n".join(f"the number {w}" for w in
                               ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")))
    out = tmp_path / "run"
    assert main(["zero-shot", "--model", MODEL, "--weights", str(weights), "--classes", str(names), "--id", "digits:test",
                 "--out", str(out), "--cache-dir", str(store)]) == 0
    rec = read_run(out).records[0]
    fs = features.resolve_features("digits:test", model=MODEL, cache_dir=store, weights=str(weights))
    head = zero_shot_head(MODEL, str(names), weights=weights, cache_dir=store)
    assert rec["acc_id"] == pytest.approx(float((head.logits(fs.features).argmax(1) == fs.labels).mean()))
    np.testing.assert_allclose(np.linalg.norm(fs.features, axis=1), 1.0, atol=1e-4)  # extract stores the normalised embedding
    pre = next(p for p in store.glob("*.h5") if cache.read_attrs(p)["feature_kind"] == "clip-pre-projection")
    capsys.readouterr()
    assert main(["zero-shot", "--model", MODEL, "--weights", str(weights), "--classes", str(names), "--id", str(pre),
                 "--out", str(tmp_path / "bad"), "--cache-dir", str(store)]) == 2
    assert "clip-pre-projection" in capsys.readouterr().err
