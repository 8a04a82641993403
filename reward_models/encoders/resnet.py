"""The ``resnet18`` encoder: torchvision's ResNet-18 trunk, pooled intermediate layers."""

from __future__ import annotations

from pathlib import Path

from reward_models.encoders.registry import register_encoder
from reward_models.encoders.torch_base import (
    TorchFrameEncoder,
    WeightsUnavailableError,
    looks_like_path,
    read_state_dict,
    warn_random,
)

@register_encoder("resnet18")
class ResNet18Encoder(TorchFrameEncoder):
    """torchvision ResNet-18 trunk; features are INTERMEDIATE: global-average-pooled ``layer3``
    (256 channels) and ``layer4`` (512) concatenated, 768 dims. ImageNet normalisation.

    Args:
        weights: a local state-dict file (torchvision's ``resnet18-*.pth`` or any
            ``torch.save(resnet.state_dict())``; the ``fc`` head may be absent), a torchvision tag
            (``IMAGENET1K_V1`` / ``DEFAULT``, fetched from download.pytorch.org, which these machines
            cannot reach), or None for random weights (a warning is logged).
        image_size: side frames are resized to (224: what ImageNet weights were trained at; 96 is
            about 5x faster).
        batch_size: frames per forward pass.
        device: torch device for the model.
    """

    MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self, weights: str | None = None, image_size: int = 224, batch_size: int = 64,
                 device: str = "cpu") -> None:
        import torchvision

        if int(image_size) < 32:
            raise ValueError(f"resnet18 encoder: image_size must be >= 32, got {image_size}")
        self.name, self.weights = "resnet18", weights
        self.input_size, self.batch_size, self.interpolation = int(image_size), int(batch_size), "bilinear"
        net = torchvision.models.resnet18(weights=None)
        if weights is None:
            warn_random("resnet18")
        else:
            net.load_state_dict(self._load_weights(str(weights), net), strict=False)
        net.fc = None  # the ImageNet classifier is never used; drop it so nothing calls it
        self.model = net.to(device).eval()
        self._setup_norm(self.MEAN, self.STD, device)
        self.feature_dim = self._measure_dim()

    @staticmethod
    def _load_weights(weights: str, net) -> dict:
        import torchvision

        tags = list(torchvision.models.ResNet18_Weights.__members__)
        if weights in tags:
            spec = torchvision.models.ResNet18_Weights[weights]
            try:
                state = spec.get_state_dict(progress=False)
            except OSError as err:  # URLError and socket errors are OSErrors
                raise WeightsUnavailableError(
                    f"resnet18 encoder: weights={weights!r} must be downloaded from {spec.url}, which this "
                    f"machine cannot reach ({err}). Download that file where the network allows, copy it "
                    "here and pass weights=<path to the .pth file>") from err
        elif looks_like_path(weights):
            path = Path(weights).expanduser()
            if not path.is_file():
                raise FileNotFoundError(
                    f"resnet18 encoder: weights file {str(path)!r} does not exist. Give the path of a ResNet-18 "
                    "state dict (e.g. torchvision's resnet18-f37072fd.pth, downloaded where the network "
                    "allows), or weights=null for random weights")
            state = read_state_dict(path, "resnet18 encoder")
        else:
            raise ValueError(f"resnet18 encoder: weights={weights!r} is neither a file path nor a torchvision "
                             f"tag; use a local .pth file, one of {tags}, or null (random)")
        expected = net.state_dict()
        missing = [k for k in expected if k not in state and not k.startswith("fc.")]
        unexpected = [k for k in state if k not in expected]
        wrong = [k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
        if missing or unexpected or wrong:
            raise ValueError(f"resnet18 encoder: weights {weights!r} do not fit torchvision's ResNet-18 "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]})")
        return state

    def _features(self, x):
        import torch

        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        x3 = m.layer3(m.layer2(m.layer1(x)))
        x4 = m.layer4(x3)
        return torch.cat([x3.mean((2, 3)), x4.mean((2, 3))], dim=1)

    def config(self) -> dict:
        """Rebuild kwargs."""
        return {"name": "resnet18", "weights": self.weights, "image_size": self.input_size,
                "batch_size": self.batch_size, "device": str(self.device)}
