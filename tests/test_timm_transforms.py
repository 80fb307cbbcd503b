"""timm backbones preprocess exactly as timm's own eval transform, for every crop mode.

`timm.data.create_transform(**resolve_data_config(model=model))` is the reference; the models are
random-init (a pretrained_cfg is metadata, nothing is downloaded). Images are non-square and
of both orientations, so squash (aspect not kept) and border (padding) differ from center.
"""

import numpy as np
import pytest
import torch
from PIL import Image

timm = pytest.importorskip("timm")

IMAGES = [(97, 61), (40, 130), (200, 200), (23, 31)]  # (width, height): wide, tall, square, smaller than the crop


def _image(size, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))


def _timm_reference(model):
    import timm.data

    return timm.data.create_transform(**timm.data.resolve_data_config(model=model), is_training=False)


@pytest.mark.parametrize("crop_mode", ["center", "squash", "border"])
@pytest.mark.parametrize("crop_pct,interpolation", [(0.9, "bicubic"), (1.0, "bilinear")])
def test_eval_transform_equals_timms(crop_mode, crop_pct, interpolation):
    from probekit.backbones.timm_family import _data_config

    model = timm.create_model("test_resnet.r160_in1k", pretrained=False, num_classes=0,
                              pretrained_cfg_overlay={"crop_mode": crop_mode, "crop_pct": crop_pct, "interpolation": interpolation,
                                                      "input_size": (3, 48, 48), "mean": (0.2, 0.5, 0.7), "std": (0.3, 0.25, 0.2)})
    ours, ref = _data_config(model, None), _timm_reference(model)
    assert ours.crop_mode == crop_mode and ours.crop == 48
    for i, size in enumerate(IMAGES):
        image = _image(size, i)
        a, b = ours(image), ref(image)
        assert a.shape == b.shape == (3, 48, 48)
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_crop_modes_differ_and_have_their_own_transform_id():
    from probekit.backbones.transforms import EvalTransform

    modes = [EvalTransform(54, 48, "bilinear", (0.5,) * 3, (0.5,) * 3, crop_mode=m) for m in ("center", "squash", "border")]
    image = _image((97, 61), 0)
    outs = [m(image) for m in modes]
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2]) and not torch.equal(outs[1], outs[2])
    ids = [m.transform_id for m in modes]
    assert len(set(ids)) == 3 and "crop_mode" not in ids[0]  # center keeps the id existing cache entries were made with


def test_published_squash_config_reaches_the_backbone():
    """A real timm name whose pretrained_cfg says squash (convnextv2_nano ..._384): create_backbone uses it."""
    from probekit.backbones import create_backbone

    name = "convnextv2_nano.fcmae_ft_in22k_in1k_384"
    bb = create_backbone(f"timm:{name}", weights="none")
    ref = _timm_reference(timm.create_model(name, pretrained=False, num_classes=0))
    assert bb.transform.crop_mode == "squash" and "crop_mode=squash" in bb.transform_id
    image = _image((300, 180), 3)
    torch.testing.assert_close(bb.transform(image), ref(image), atol=1e-6, rtol=0)
