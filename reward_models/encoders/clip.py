"""The ``clip`` encoder: an open_clip image tower, pooled intermediate layers."""

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

@register_encoder("clip")
class ClipEncoder(TorchFrameEncoder):
    """The image tower of an open_clip model; features are INTERMEDIATE and pooled:

    * ViT towers: the outputs of a middle block (index ``L // 2 - 1``, e.g. block 6 of 12) and the
      last block ``L - 1``, each after the tower's final LayerNorm, each as [class token, mean of
      the patch tokens]: ``4 * width`` dims (3072 for ViT-B-32).
    * ResNet towers (RN50, ...): ``layer3`` and ``layer4`` globally average-pooled (1024 + 2048
      for RN50).

    Frames are resized (shortest side, centre crop, open_clip's interpolation) to the model's
    input size and normalised with the model's own mean and std.

    Args:
        arch: open_clip architecture name (``open_clip.list_models()``), e.g. ``ViT-B-32``, ``RN50``.
        pretrained: a local weights file (a full CLIP state dict or the visual tower's alone;
            .safetensors, torch pickle or OpenAI's TorchScript file), an open_clip pretrained tag
            (``open_clip.list_pretrained_tags_by_model(arch)``; fetched from the model hub, which
            these machines cannot reach), or None for random weights (a warning is logged).
        image_size: input side; None = the model's own (224 for most). Smaller is much faster
            (ViT position embeddings of loaded weights are interpolated to it).
        batch_size: frames per forward pass.
        device: torch device for the model.
    """

    def __init__(self, arch: str = "ViT-B-32", pretrained: str | None = None, image_size: int | None = None,
                 batch_size: int = 32, device: str = "cpu") -> None:
        import difflib

        import open_clip

        models = open_clip.list_models()
        if arch not in models:
            close = difflib.get_close_matches(str(arch), models, n=5, cutoff=0.4)
            raise ValueError(f"clip encoder: unknown arch {arch!r}; close names: {close} "
                             "(all: open_clip.list_models())")
        self.name, self.arch, self.pretrained = "clip", arch, pretrained
        self.batch_size = int(batch_size)
        force = int(image_size) if image_size is not None else None
        tag = None
        if pretrained is None:
            warn_random(f"clip ({arch})")
        elif pretrained in open_clip.list_pretrained_tags_by_model(arch):
            tag = pretrained
        elif looks_like_path(str(pretrained)):
            path = Path(str(pretrained)).expanduser()
            if not path.is_file():
                raise FileNotFoundError(
                    f"clip encoder: weights file {str(path)!r} does not exist. Download the {arch} weights "
                    "where the network allows (open_clip.create_model(arch, pretrained=<tag>) caches them "
                    "under ~/.cache/huggingface; or the model's hub page), copy the file here and pass "
                    "pretrained=<its path>, or pretrained=null for random weights")
        else:
            raise ValueError(f"clip encoder: pretrained={pretrained!r} is neither a file path nor a tag of "
                             f"{arch} ({open_clip.list_pretrained_tags_by_model(arch)}); or null (random)")
        try:
            clip = open_clip.create_model(arch, pretrained=tag, force_image_size=force)
        except RuntimeError as err:
            if tag is None:
                raise
            raise WeightsUnavailableError(
                f"clip encoder: could not fetch {arch} weights {tag!r} from the model hub, which this machine "
                f"cannot reach ({err}). Download them where the network allows, copy the file here and pass "
                "pretrained=<local file path>") from err
        if tag is None and pretrained is not None:
            self._load_file(clip, Path(str(pretrained)).expanduser())
        visual = clip.visual
        del clip  # the text tower is never used: free its memory
        cfg = getattr(visual, "preprocess_cfg", {})
        size = visual.image_size
        self.input_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.interpolation = cfg.get("interpolation", "bicubic")
        if self.interpolation not in ("bicubic", "bilinear"):
            self.interpolation = "bicubic"
        self._family = type(visual).__name__
        if self._family == "VisionTransformer":
            blocks = len(visual.transformer.resblocks)
            self.layers = [max(blocks // 2 - 1, 0), blocks - 1]
        elif self._family == "ModifiedResNet":
            self.layers = [3, 4]  # forward_intermediates numbers the stem 0, layer1..layer4 1..4
        else:
            raise ValueError(f"clip encoder: arch {arch!r} has a {self._family} image tower; this encoder reads "
                             "intermediate layers of ViT (VisionTransformer) and ResNet (ModifiedResNet) towers: "
                             "pick e.g. ViT-B-32, ViT-S-32 or RN50")
        self.model = visual.to(device).eval()
        self._setup_norm(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)),
                         cfg.get("std", (0.26862954, 0.26130258, 0.27577711)), device)
        self.feature_dim = self._measure_dim()

    def _load_file(self, clip, path: Path) -> None:
        """Load a full CLIP state dict or the visual tower's alone into ``clip.visual``."""
        from open_clip.model import resize_pos_embed

        state = read_state_dict(path, "clip encoder")
        if not any(k.startswith("visual.") for k in state):
            state = {f"visual.{k}": v for k, v in state.items()}  # a visual-tower-only file
        resize_pos_embed(state, clip)  # weights trained at another image size still fit a ViT
        visual_state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
        try:
            clip.visual.load_state_dict(visual_state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"clip encoder: weights {str(path)!r} do not fit arch {self.arch!r} at this "
                             f"image_size ({str(err)[:400]}); check arch= and image_size=") from err

    def _features(self, x):
        import torch

        if self._family == "VisionTransformer":
            out = self.model.forward_intermediates(x, indices=self.layers, normalize_intermediates=True,
                                                   intermediates_only=True, output_fmt="NLC",
                                                   output_extra_tokens=True)
            parts = []
            for cls, patches in zip(out["image_intermediates_prefix"], out["image_intermediates"]):
                parts += [cls[:, 0], patches.mean(1)]
            return torch.cat(parts, dim=1)
        out = self.model.forward_intermediates(x, indices=self.layers, intermediates_only=True)
        return torch.cat([m.mean((2, 3)) for m in out["image_intermediates"]], dim=1)

    def config(self) -> dict:
        """Rebuild kwargs."""
        return {"name": "clip", "arch": self.arch, "pretrained": self.pretrained, "image_size": self.input_size,
                "batch_size": self.batch_size, "device": str(self.device)}
