"""Named pretrained backbones behind one factory (see docs/architecture.md, "backbones").

Families (torchvision, timm/BiT incl. Google's .npz, open_clip CLIP, the bundled
EfficientNet-Lite0) are imported only when a name needs them, so importing this is cheap.
"""

from probekit.backbones.base import Backbone, Classifier
from probekit.backbones.registry import create_backbone, create_classifier, list_backbones, resolve

__all__ = ["Backbone", "Classifier", "create_backbone", "create_classifier", "list_backbones", "resolve"]
