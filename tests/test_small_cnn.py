"""`small_cnn`: the from-scratch testbed network, through the real registry and loader."""

import pytest
import torch

from probekit.backbones import create_backbone, create_classifier
from probekit.errors import UserError


def test_small_cnn_round_trips_through_a_weights_file(tmp_path):
    torch.manual_seed(0)
    trained = create_classifier("small_cnn", 10, "none", image_size=28)
    path = tmp_path / "small.pt"
    torch.save(trained.model.state_dict(), path)

    backbone = create_backbone("small_cnn", str(path), image_size=28)
    assert backbone.feature_dim == 128 and backbone.weight_id.startswith("sha256:")
    x = torch.randn(3, 3, 28, 28)
    trained.model.eval()
    expected = trained.model[:-1](x)
    assert torch.allclose(backbone.model(x), expected, atol=1e-6)

    again = create_classifier("small_cnn", 10, str(path))
    assert again.model(x).shape == (3, 10)


def test_small_cnn_has_no_published_weights():
    with pytest.raises(UserError, match="--weights none"):
        create_backbone("small_cnn")


def test_small_cnn_refuses_weights_of_another_head(tmp_path):
    path = tmp_path / "five.pt"
    torch.save(create_classifier("small_cnn", 5, "none").model.state_dict(), path)
    with pytest.raises(UserError, match="another architecture"):
        create_classifier("small_cnn", 10, str(path))
