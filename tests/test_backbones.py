"""probekit.backbones: every family loads weights from a local file through the real loader.

Random-init weights are saved to a temporary file and loaded back with create_backbone(weights=path);
features must equal the original model's. EfficientNet-Lite0 uses its real bundled weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from probekit.backbones import create_backbone, create_classifier, list_backbones, resolve
from probekit.backbones import weights as W
from probekit.backbones.transforms import EvalTransform
from probekit.datasets.images import to_rgb
from probekit.errors import UserError

SIZE = 64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sha256(path) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def batch(n=2, size=SIZE, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def images():
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8), "RGB")
    return {
        "RGB": rgb,
        "L": rgb.convert("L"),
        "RGBA": rgb.convert("RGBA"),
        "CMYK": rgb.convert("CMYK"),
        "P": rgb.convert("P"),
        "LA": rgb.convert("LA"),
        "I;16": Image.fromarray(rng.integers(0, 65535, (40, 30), dtype=np.uint16)),
        "1": rgb.convert("1"),
    }


@torch.no_grad()
def assert_same_features(backbone, reference, x):
    got = backbone.model(x)
    want = reference(x)
    assert got.shape == (x.shape[0], backbone.feature_dim)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def assert_frozen(backbone):
    assert not backbone.model.training
    assert not any(p.requires_grad for p in backbone.model.parameters())


# --- registry ---------------------------------------------------------------------------------

def test_unknown_name_suggests_close_matches():
    with pytest.raises(UserError, match="did you mean 'resnet50'"):
        resolve("resnt50")
    with pytest.raises(UserError, match="clip-vit-b-32"):
        create_backbone("clip-vit-b32")
    with pytest.raises(UserError, match="unknown torchvision model"):
        resolve("torchvision:resnet51")


def test_names_resolve_to_their_family():
    assert resolve("resnet50") == ("torchvision", "resnet50")  # torchvision wins for shared names
    assert resolve("timm:resnet50") == ("timm", "resnet50")
    assert resolve("resnetv2_50x1_bit.goog_in21k")[0] == "timm"
    assert resolve("BiT-M-R50x1") == ("timm", "bit-m-r50x1")
    assert resolve("clip-vit-b-32")[0] == "open_clip"
    assert resolve("open_clip:ViT-B-32-quickgelu:openai")[0] == "open_clip"
    assert resolve("ViT-B-32-quickgelu") == ("open_clip", "open_clip:ViT-B-32-quickgelu")
    assert resolve("efficientnet_lite0")[0] == "efficientnet_lite0"
    names = list_backbones()
    for name in ("alexnet", "resnet18", "resnet50", "resnet152", "vgg11_bn", "wide_resnet50_2",
                 "resnetv2_50x1_bit.goog_in21k", "resnetv2_152x4_bit.goog_in21k_ft_in1k",
                 "clip-vit-b-32", "efficientnet_lite0", "bit-s-r50x1"):
        assert name in names


def test_bad_weights_and_sizes_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        create_backbone("resnet18", weights=tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(UserError, match="cannot load weights"):
        create_backbone("resnet18", weights=junk)
    pickled = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a whole module, not a state dict
    with pytest.raises(UserError, match="weights_only"):
        create_backbone("resnet18", weights=pickled)
    with pytest.raises(UserError, match="image size"):
        create_backbone("resnet18", weights="none", image_size=3)
    with pytest.raises(UserError, match="num_classes"):
        create_classifier("resnet18", 0, weights="none")


def test_hf_offline_flag_fails_before_any_network(monkeypatch):
    import socket

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("network touched"))
    with pytest.raises(UserError, match="HF_HUB_OFFLINE.*put the file at /x"):
        W.require_host("huggingface.co", "weights", "/x")


def test_sha256_is_cached_per_path_mtime_and_size(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    assert W.weight_id(f) == sha256(f)
    f.write_bytes(b"abcd")  # size changes -> recomputed
    assert W.weight_id(f) == sha256(f)


# --- transforms -------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", list(images()))
def test_any_image_mode_becomes_three_channels(mode):
    t = EvalTransform(36, 32, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    image = images()[mode]
    assert image.mode == mode
    out = t(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert to_rgb(image).mode == "RGB"


def test_rgba_transparency_is_composited_on_white():
    clear = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_rgb(clear).getpixel((0, 0)) == (255, 255, 255)


def test_transforms_match_the_libraries_own_eval_pipelines():
    import timm
    import timm.data
    import torchvision

    image = images()["RGB"].resize((300, 240))
    tv = create_backbone("resnet18", weights="none").transform
    torch.testing.assert_close(tv(image), torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()(image))
    assert (tv.resize, tv.crop) == (256, 224)
    small = create_backbone("resnet18", weights="none", image_size=112).transform
    assert (small.resize, small.crop) == (128, 112)

    bit = timm.create_model("resnetv2_50x1_bit.goog_in21k", pretrained=False, num_classes=0)
    ours = create_backbone("resnetv2_50x1_bit.goog_in21k", weights="none").transform
    theirs = timm.data.create_transform(**timm.data.resolve_model_data_config(bit))
    torch.testing.assert_close(ours(image), theirs(image), atol=1e-6, rtol=0)
    assert ours.mean == ours.std == (0.5, 0.5, 0.5)


# --- torchvision ------------------------------------------------------------------------------

@pytest.mark.parametrize("name,dim", [("resnet18", 512), pytest.param("alexnet", 4096, marks=pytest.mark.slow)])
def test_torchvision_local_weights_round_trip(tmp_path, name, dim):
    import torchvision

    torch.manual_seed(0)
    original = torchvision.models.get_model(name, weights=None).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(original.state_dict(), path)
    backbone = create_backbone(name, weights=path, image_size=SIZE)
    assert backbone.family == "torchvision" and backbone.feature_dim == dim
    assert backbone.weight_id == sha256(path)
    assert backbone.input_size == SIZE and backbone.feature_kind == "penultimate"
    assert_frozen(backbone)
    head = "fc" if name == "resnet18" else "classifier.6"
    original.set_submodule(head, torch.nn.Identity())
    assert_same_features(backbone, original, batch())

    # the feature extractor's own (headless) state dict loads too
    headless = tmp_path / f"{name}-headless.pth"
    torch.save(backbone.model.state_dict(), headless)
    again = create_backbone(name, weights=headless, image_size=SIZE)
    assert_same_features(again, original, batch())


def test_torchvision_weights_of_another_architecture_name_the_keys(tmp_path):
    import torchvision

    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(UserError) as err:
        create_backbone("resnet50", weights=path)
    msg = str(err.value)
    assert "another architecture" in msg and "missing keys" in msg and "shape mismatches" in msg
    assert "layer1.0.conv3.weight" in msg or "conv1.weight" in msg or "bn3" in msg


def test_torchvision_default_weights_come_from_the_hub_cache(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    calls = []

    def offline(url, dst, *a, **k):
        from urllib.error import URLError

        calls.append(url)
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError, match="offline.*resnet18-f37072fd.pth"):
        create_backbone("resnet18")
    assert calls == [torchvision.models.ResNet18_Weights.DEFAULT.url]

    # a truncated cached file is named, with the fix
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(UserError, match="unreadable.*delete the file"):
        create_backbone("resnet18")

    # once the file is in the cache it is used, never downloaded
    torch.manual_seed(1)
    original = torchvision.models.resnet18().eval()
    torch.save(original.state_dict(), cached)
    backbone = create_backbone("resnet18", image_size=SIZE)
    assert backbone.weight_id == sha256(cached) and len(calls) == 1
    original.fc = torch.nn.Identity()
    assert_same_features(backbone, original, batch())


def test_torchvision_feature_dims_of_the_paper_models():
    """The big ones are built on the meta device: shapes without memory or time."""
    import torchvision

    from probekit.backbones.torchvision_family import FEATURE_DIMS, last_linear_name

    expected = {"alexnet": 4096, "vgg11_bn": 4096, "resnet18": 512, "resnet50": 2048,
                "resnet152": 2048, "wide_resnet50_2": 2048}
    assert FEATURE_DIMS == expected
    with torch.device("meta"):
        for name, dim in expected.items():
            model = torchvision.models.get_model(name, weights=None)
            assert model.get_submodule(last_linear_name(model)).in_features == dim, name


def test_torchvision_generic_model_uses_its_last_linear():
    backbone = create_backbone("mobilenet_v3_small", weights="none", image_size=SIZE)
    assert backbone.feature_dim == 1024
    assert backbone.model(batch()).shape == (2, 1024)
    with pytest.raises(UserError, match="no final nn.Linear"):
        create_backbone("squeezenet1_0", weights="none")


def test_torchvision_densenet_legacy_keys_are_renamed_like_torchvision_does(tmp_path):
    import re

    import torchvision

    original = torchvision.models.densenet121().eval()
    legacy = {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v for k, v in original.state_dict().items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    path = tmp_path / "densenet121-legacy.pth"
    torch.save(legacy, path)
    backbone = create_backbone("densenet121", weights=path, image_size=32)
    original.classifier = torch.nn.Identity()
    assert_same_features(backbone, original, batch(size=32))


def test_torchvision_classifier_has_a_fresh_trainable_head(tmp_path):
    import torchvision

    torch.manual_seed(0)
    original = torchvision.models.resnet18()
    path = tmp_path / "r18.pth"
    torch.save(original.state_dict(), path)
    clf = create_classifier("resnet18", 10, weights=path, image_size=SIZE)
    assert clf.model.training and all(p.requires_grad for p in clf.model.parameters())
    assert [tuple(p.shape) for p in clf.head_parameters] == [(10, 512), (10,)]
    assert clf.model.fc.weight is clf.head_parameters[0]
    assert clf.weight_id == sha256(path) and clf.input_size == SIZE
    torch.testing.assert_close(clf.model.conv1.weight, original.conv1.weight)
    assert clf.model(batch()).shape == (2, 10)


# --- timm / BiT -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bit_model():
    import timm

    torch.manual_seed(0)
    return timm.create_model("resnetv2_50x1_bit", pretrained=False, num_classes=10).eval()


def test_bit_state_dict_round_trip(tmp_path, bit_model):
    import copy

    path = tmp_path / "bit.pth"
    torch.save(bit_model.state_dict(), path)  # with its 10-way head: dropped for features
    backbone = create_backbone("resnetv2_50x1_bit.goog_in21k", weights=path, image_size=SIZE)
    assert backbone.family == "timm" and backbone.feature_dim == 2048
    assert backbone.mean == backbone.std == (0.5, 0.5, 0.5)
    assert backbone.weight_id == sha256(path)
    assert_frozen(backbone)
    reference = copy.deepcopy(bit_model)
    reference.reset_classifier(0)
    assert_same_features(backbone, reference.eval(), batch())


def test_bit_safetensors_round_trip(tmp_path, bit_model):
    import copy

    from safetensors.torch import save_file

    reference = copy.deepcopy(bit_model)
    reference.reset_classifier(0)
    path = tmp_path / "bit.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    backbone = create_backbone("timm:resnetv2_50x1_bit", weights=path, image_size=SIZE)
    assert_same_features(backbone, reference.eval(), batch())


def to_google_bit_npz(model, path, num_classes=10):
    """Inverse of timm's resnetv2 npz loader: write a timm ResNetV2 in Google's BiT key layout."""

    def conv(w):  # OIHW -> HWIO
        return w.detach().permute(2, 3, 1, 0).numpy()

    p = "resnet/"
    out = {f"{p}root_block/standardized_conv2d/kernel": conv(model.stem.conv.weight),
           f"{p}group_norm/gamma": model.norm.weight.detach().numpy(),
           f"{p}group_norm/beta": model.norm.bias.detach().numpy(),
           f"{p}head/conv2d/kernel": np.zeros((1, 1, model.num_features, num_classes), np.float32),
           f"{p}head/conv2d/bias": np.zeros((num_classes,), np.float32)}
    for i, stage in enumerate(model.stages):
        for j, block in enumerate(stage.blocks):
            b = f"{p}block{i + 1}/unit{j + 1:02d}/"
            for letter, n in (("a", 1), ("b", 2), ("c", 3)):
                out[f"{b}{letter}/standardized_conv2d/kernel"] = conv(getattr(block, f"conv{n}").weight)
                out[f"{b}{letter}/group_norm/gamma"] = getattr(block, f"norm{n}").weight.detach().numpy()
                out[f"{b}{letter}/group_norm/beta"] = getattr(block, f"norm{n}").bias.detach().numpy()
            if block.downsample is not None:
                out[f"{b}a/proj/standardized_conv2d/kernel"] = conv(block.downsample.conv.weight)
    np.savez(path, **out)
    return out


def test_bit_google_npz_round_trip(tmp_path, bit_model):
    import copy

    path = tmp_path / "BiT-M-R50x1.npz"
    arrays = to_google_bit_npz(bit_model, path)
    backbone = create_backbone("bit-m-r50x1", weights=path, image_size=SIZE)
    assert backbone.family == "bit-npz" and backbone.feature_dim == 2048
    assert backbone.weight_id == sha256(path)
    reference = copy.deepcopy(bit_model)
    reference.reset_classifier(0)
    assert_same_features(backbone, reference.eval(), batch())

    # a key missing, or a checkpoint of another BiT size: named, not silently half-loaded
    broken = tmp_path / "broken.npz"
    partial = {k: v for k, v in arrays.items() if k != "resnet/block2/unit03/b/standardized_conv2d/kernel"}
    partial["resnet/block4/unit04/a/group_norm/gamma"] = np.zeros(3, np.float32)
    np.savez(broken, **partial)
    with pytest.raises(UserError, match="block2/unit03/b/standardized_conv2d/kernel.*block4/unit04"):
        create_backbone("resnetv2_50x1_bit", weights=broken)
    with pytest.raises(UserError, match="not a timm ResNetV2"):
        create_backbone("timm:resnet18", weights=path)
    with pytest.raises(UserError, match="loads only into a BiT model"):
        create_backbone("resnet18", weights=path)


def test_timm_weights_of_another_architecture_name_the_keys(tmp_path):
    import torchvision

    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(UserError, match="missing keys: stem.conv.weight.*unexpected keys: conv1.weight.*another architecture"):
        create_backbone("resnetv2_50x1_bit.goog_in21k", weights=path)


def test_timm_default_weights_from_the_hf_cache(monkeypatch, tmp_path, bit_model):
    import copy

    import huggingface_hub
    from safetensors.torch import save_file

    cached = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in bit_model.state_dict().items()}, str(cached))
    asked = []

    def cache_lookup(repo_id, filename, **kwargs):
        asked.append((repo_id, filename))
        return str(cached) if filename == "model.safetensors" else None

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", cache_lookup)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda **k: pytest.fail("must not download"))
    backbone = create_backbone("resnetv2_50x1_bit.goog_in21k", image_size=SIZE)
    assert asked[0] == ("timm/resnetv2_50x1_bit.goog_in21k", "model.safetensors")
    assert backbone.weight_id == sha256(cached)
    reference = copy.deepcopy(bit_model)
    reference.reset_classifier(0)
    assert_same_features(backbone, reference.eval(), batch())


def test_timm_default_weights_offline_is_a_user_error(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda **k: None)

    def offline(**kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    monkeypatch.setattr(W, "require_host", lambda *a, **k: None)  # no network probe in tests
    with pytest.raises(UserError, match="cannot download timm weights.*--weights PATH"):
        create_backbone("resnetv2_50x1_bit.goog_in21k")
    with pytest.raises(UserError, match="BiT-S"):
        create_backbone("bit-s-r50x1")


def test_timm_classifier(tmp_path, bit_model):
    path = tmp_path / "bit.pth"
    torch.save(bit_model.state_dict(), path)
    clf = create_classifier("resnetv2_50x1_bit", 7, weights=path, image_size=SIZE)
    assert clf.model(batch()).shape == (2, 7)
    assert sum(p.numel() for p in clf.head_parameters) == 2048 * 7 + 7
    torch.testing.assert_close(clf.model.stem.conv.weight, bit_model.stem.conv.weight)


# --- EfficientNet-Lite0 (real bundled weights) ------------------------------------------------

def test_efficientnet_lite0_bundled_weights():
    from probekit.backbones.efficientnet_lite0 import bundled_weights_path

    backbone = create_backbone("efficientnet_lite0", image_size=SIZE)
    assert backbone.family == "efficientnet_lite0" and backbone.feature_dim == 1280
    assert backbone.weight_id == sha256(bundled_weights_path())
    assert backbone.mean == backbone.std == (0.5, 0.5, 0.5)
    assert_frozen(backbone)
    image = images()["L"]
    with torch.no_grad():
        feats = backbone.model(backbone.transform(image)[None])
    assert feats.shape == (1, 1280) and torch.isfinite(feats).all() and feats.abs().sum() > 0


def test_efficientnet_lite0_key_renaming_gives_sane_imagenet_predictions():
    """Renamed keys load strictly AND mean something: a daisy is classified as a daisy."""
    from sklearn.datasets import load_sample_image

    from probekit.backbones.efficientnet_lite0 import pretrained_imagenet_classifier

    model = pretrained_imagenet_classifier()
    transform = create_backbone("efficientnet_lite0").transform
    with torch.no_grad():
        flower = model(transform(Image.fromarray(load_sample_image("flower.jpg")))[None]).softmax(-1)[0]
        china = model(transform(Image.fromarray(load_sample_image("china.jpg")))[None]).softmax(-1)[0]
        import matplotlib.cbook

        hopper = model(transform(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")))[None])[0]
    assert 652 in hopper.topk(5).indices.tolist()  # military uniform
    assert int(flower.argmax()) == 985  # daisy
    assert int(china.argmax()) in (698, 442, 663, 483, 975)  # palace / bell cote / monastery / castle / lakeside
    assert float(flower.max()) > 0.2


def test_efficientnet_lite0_local_weights_in_both_layouts(tmp_path):
    import copy

    import timm

    from probekit.backbones.efficientnet_lite0 import TIMM_ARCH

    torch.manual_seed(0)
    original = timm.create_model(TIMM_ARCH, num_classes=1000).eval()
    path = tmp_path / "lite0-timm.pth"
    torch.save(original.state_dict(), path)
    backbone = create_backbone("efficientnet_lite0", weights=path, image_size=SIZE)
    reference = copy.deepcopy(original)
    reference.reset_classifier(0)
    assert_same_features(backbone, reference.eval(), batch())
    assert backbone.weight_id == sha256(path)

    other = tmp_path / "r18.pth"
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), other)
    with pytest.raises(UserError, match="efficientnet_lite0.*another architecture"):
        create_backbone("efficientnet_lite0", weights=other)


def test_efficientnet_lite0_classifier_keeps_pretrained_trunk():
    clf = create_classifier("efficientnet_lite0", 10, image_size=SIZE)
    backbone = create_backbone("efficientnet_lite0", image_size=SIZE)
    torch.testing.assert_close(clf.model.conv_stem.weight, backbone.model.conv_stem.weight)
    assert [tuple(p.shape) for p in clf.head_parameters] == [(10, 1280), (10,)]
    assert clf.model.training and clf.model(batch()).shape == (2, 10)


# --- CLIP (open_clip) -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None, force_image_size=SIZE).eval()
    path = tmp_path_factory.mktemp("clip") / "vit-b-32.pt"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def clip_backbone(clip_file):
    return create_backbone("clip-vit-b-32", weights=clip_file[1], image_size=SIZE)


@pytest.mark.slow
def test_clip_image_embedding_round_trip(clip_file, clip_backbone):
    model, path = clip_file
    backbone = clip_backbone
    assert backbone.family == "open_clip" and backbone.feature_kind == "clip-image-embed"
    assert backbone.feature_dim == 512 and backbone.weight_id == sha256(path)
    assert_frozen(backbone)
    assert_same_features(backbone, lambda x: model.encode_image(x, normalize=True), batch())
    assert backbone.extra["clip_model"].visual is backbone.model.visual
    assert backbone.extra["tokenizer_name"] == "ViT-B-32-quickgelu"
    assert backbone.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))


@pytest.mark.slow
def test_clip_pre_projection_token_from_the_hf_cache(clip_file, monkeypatch):
    import huggingface_hub

    model, path = clip_file
    asked = []

    def cache_lookup(repo_id, filename, **kwargs):
        asked.append((repo_id, filename))
        return str(path) if filename == "open_clip_pytorch_model.bin" else None

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", cache_lookup)
    pre = create_backbone("open_clip:ViT-B-32-quickgelu", image_size=SIZE, feature="pre-projection")
    assert ("timm/vit_base_patch32_clip_224.openai", "open_clip_pytorch_model.bin") in asked
    assert pre.weight_id == sha256(path)
    assert pre.feature_kind == "clip-pre-projection" and pre.feature_dim == 768
    x = batch()
    with torch.no_grad():
        tokens = pre.model(x)
        projected = model.encode_image(x)
    assert tokens.shape == (2, 768)
    torch.testing.assert_close(tokens @ model.visual.proj, projected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_clip_transform_matches_open_clip_preprocess(clip_file, clip_backbone):
    import open_clip

    model, path = clip_file
    backbone = clip_backbone
    theirs = open_clip.image_transform(SIZE, is_train=False, mean=model.visual.preprocess_cfg["mean"],
                                       std=model.visual.preprocess_cfg["std"], interpolation="bicubic")
    image = images()["RGB"]
    torch.testing.assert_close(backbone.transform(image), theirs(image))
    assert backbone.transform(images()["CMYK"]).shape == (3, SIZE, SIZE)


@pytest.mark.slow
def test_clip_classifier(clip_file):
    model, path = clip_file
    clf = create_classifier("clip-vit-b-32", 5, weights=path, image_size=SIZE)
    assert clf.model(batch()).shape == (2, 5)
    assert [tuple(p.shape) for p in clf.head_parameters] == [(5, 512), (5,)]


def test_clip_wrong_weights_and_offline(tmp_path, monkeypatch):
    import open_clip
    import torchvision

    from probekit.backbones import clip_family

    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(UserError, match="missing keys: positional_embedding.*unexpected keys: conv1.weight.*another architecture"):
        create_backbone("clip-vit-b-32", weights=path, image_size=SIZE)

    monkeypatch.setattr(clip_family, "_cached_pretrained", lambda arch, tag: None)

    def offline(cfg, *a, **k):
        raise FileNotFoundError("Failed to download file (offline)")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", offline)
    monkeypatch.setattr(W, "require_host", lambda *a, **k: None)
    with pytest.raises(UserError, match="cannot download open_clip weights ViT-B-32-quickgelu:openai"):
        create_backbone("clip-vit-b-32", image_size=SIZE)
    with pytest.raises(UserError, match="unknown CLIP feature"):
        create_backbone("clip-vit-b-32", weights="none", feature="logits")
    with pytest.raises(UserError, match="unknown open_clip architecture"):
        create_backbone("open_clip:ViT-B-33", weights="none")
