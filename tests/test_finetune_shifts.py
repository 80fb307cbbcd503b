"""Fine-tuning an ImageNet-1k network, scored on a class-subset shift (ImageNet-R) the testbed's way."""

import numpy as np
import pytest
import torch

from probekit.finetune.data import ImageEvalSet
from probekit.finetune.ddp import Dist
from probekit.finetune.loop import _Evaluator
from probekit.records import EvalPlan, OODView, evaluation_records
from probekit.robustness import effective_robustness, fit_baseline
from probekit.robustness.shifts import shift_for


class Coded(torch.utils.data.Dataset):
    """Images that encode the ImageNet class the fake network will predict (two uint8 pixels)."""

    def __init__(self, predicted, targets):
        self.predicted, self.targets = np.asarray(predicted), np.asarray(targets)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        v = int(self.predicted[i])
        return torch.tensor([[[v // 256]], [[v % 256]], [[0]]], dtype=torch.uint8), int(self.targets[i])


class OneHot(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.one_hot((x[:, 0, 0, 0] * 256 + x[:, 1, 0, 0]).long(), 1000).float()


def test_imagenet_r_is_scored_on_its_200_classes_and_er_uses_the_subset_id_accuracy():
    shift = shift_for("imagenet-r:test")
    sub = [int(np.ravel(idx)[0]) for idx in shift.imagenet_indices]  # one ImageNet index per ImageNet-R class
    outside = sorted(set(range(1000)) - set(sub))
    # ImageNet val: 40 rows of subset classes (30 right), 20 rows of other classes (all right).
    val_targets = np.array(sub[:40] + outside[:20])
    val_pred = val_targets.copy()
    val_pred[30:40] = sub[50]  # wrong, but inside the subset
    # ImageNet-R: 100 images, the network names the right ImageNet class for the first 60.
    r_targets = np.arange(100) % 200
    r_pred = np.array([sub[k] if i < 60 else sub[(k + 1) % 200] for i, k in enumerate(r_targets)])

    id_set = ImageEvalSet("imagenet:val", Coded(val_pred, val_targets), np.arange(60))
    ood = ImageEvalSet("imagenet-r:test", Coded(r_pred, r_targets), np.arange(100))
    id_sub = ImageEvalSet("imagenet:val[r]", Coded(val_pred, val_targets), np.flatnonzero(shift.id_mask(val_targets)))
    baseline = fit_baseline([0.5, 0.7, 0.8, 0.9], [0.2, 0.4, 0.5, 0.7], names=list("abcd"), ood_set="imagenet-r")
    evaluate = _Evaluator({"imagenet:val": id_set, "imagenet-r:test": ood, "imagenet-r:test__id": id_sub},
                          {"imagenet-r:test": (shift, "ood"), "imagenet-r:test__id": (shift, "id")},
                          lambda x: x, Dist(), torch.device("cpu"), None)
    plan = EvalPlan("imagenet:val", 60, (OODView("imagenet-r:test", 100, shift, 40, baseline),))
    record = evaluation_records(plan, evaluate(OneHot()), step=0, epoch=0.0, heads=[{"head": "h"}], mode="finetune")[0]

    assert record["acc_id"] == pytest.approx(50 / 60)
    assert record["acc_id_subset"]["imagenet-r:test"] == pytest.approx(30 / 40)
    assert record["id_eval"]["imagenet-r:test"] == shift.id_eval
    assert record["acc_ood"]["imagenet-r:test"] == pytest.approx(0.6)
    assert record["er"]["imagenet-r:test"] == pytest.approx(effective_robustness(0.75, 0.6, baseline))

    # the predictions an evaluation keeps (--save-predictions every-eval) are the shift's: ImageNet-R labels 0..199
    keeping = _Evaluator(evaluate.sets, evaluate.shifts, lambda x: x, Dist(), torch.device("cpu"), None, keep=["imagenet-r:test"])
    keeping(OneHot())
    assert set(keeping.kept) == {"imagenet-r:test"}  # not the ID views
    kept = keeping.predictions(OneHot(), ["imagenet-r:test"])["imagenet-r:test"]
    assert np.array_equal(kept, evaluate.predict(OneHot(), ["imagenet-r:test"])["imagenet-r:test"])
    assert (kept == r_targets).mean() == pytest.approx(0.6) and kept.max() < 200
