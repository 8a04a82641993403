"""open_clip towers for the success classifier: small architectures registered here, weights resolved
(a local file or a hub tag), models built quietly."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Mapping

from torch import nn

SMALL_ARCHS: dict[str, dict] = {
    # The default: CLIP's ModifiedResNet ([1, 1, 1, 1] blocks, width 16, attention pooling) at 64 px,
    # 1.4M vision parameters. Trains from scratch on a CPU; convolutions learned success from ~6 demos
    # per task much faster than the ViT below (sub-set of 10 training tasks, 400 steps: validation
    # AUROC 0.96 vs 0.59 for the ViT after 400 steps on all 40). Scores about 250 frames/s of 3 cameras
    # at 96 px on ONE thread of the shared 2-core machine.
    "stepwise-rn-tiny": {
        "embed_dim": 128,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 32},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
    },
    # A 4-layer ViT on 6x6 patches of a 96 px frame, 0.9M vision parameters: the transformer option
    # (and the shape pretrained ViT-B-32 users fine-tune), slower to learn from scratch.
    "stepwise-vit-tiny": {
        "embed_dim": 128,
        "vision_cfg": {"image_size": 96, "layers": 4, "width": 128, "patch_size": 16, "head_width": 64},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
    },
}
# Their text towers (used only with text_encoder: clip) are small but keep CLIP's 49408-token vocabulary.


# --------------------------------------------------------------------------- open_clip plumbing


def register_archs(archs: Mapping[str, Mapping] | None = None) -> None:
    """Register architectures with open_clip (default :data:`SMALL_ARCHS`), so that
    ``open_clip.create_model(name)`` and ``open_clip.list_models()`` know them.

    Each value is a model config like open_clip's ``model_configs/*.json`` (``embed_dim``, ``vision_cfg``,
    ``text_cfg``). Names open_clip already knows with the same config are skipped.
    """
    import open_clip
    from open_clip.factory import get_model_config

    archs = SMALL_ARCHS if archs is None else archs
    todo = {k: dict(v) for k, v in archs.items() if get_model_config(k) != json.loads(json.dumps(v))}
    if not todo:
        return
    for name, cfg in todo.items():
        missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
        if missing:
            raise ValueError(f"arch_config for {name!r} lacks {missing}: give a dict like open_clip's model_configs/*.json")
    # open_clip reads configs from files; it keeps them in memory, so the files can go right away
    with tempfile.TemporaryDirectory(prefix="stepwise-open-clip-") as tmp:
        for name, cfg in todo.items():
            (Path(tmp) / f"{name}.json").write_text(json.dumps(cfg))
        open_clip.add_model_config(tmp)


def resolve_pretrained(arch: str, pretrained: str | None) -> str | None:
    """``pretrained`` as open_clip takes it: None, an existing local file, or a known hub tag of ``arch``.

    Raises:
        FileNotFoundError: ``pretrained`` is neither an existing file nor a hub tag of ``arch``.
    """
    import open_clip

    if not pretrained:
        return None
    path = Path(str(pretrained)).expanduser()
    if path.is_file():
        return str(path)
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if str(pretrained) in tags:
        return str(pretrained)
    raise FileNotFoundError(
        f"pretrained weights {str(pretrained)!r} for {arch}: no such file, and not a hub tag of {arch} "
        f"(tags: {tags or 'none'}). Give the path of a local open_clip checkpoint (download "
        "open_clip_pytorch_model.bin on a machine with internet access and copy it here), or "
        "pretrained=null to train from scratch."
    )


class _DropRandomInitWarning(logging.Filter):
    """open_clip warns on the root logger whenever a model starts from random weights; here that is the plan."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def build_open_clip(arch: str, pretrained: str | None = None, arch_config: Mapping | None = None) -> nn.Module:
    """An open_clip CLIP model of architecture ``arch`` (weights from ``pretrained``, else random).

    Raises:
        ValueError: ``arch`` is unknown to open_clip (the message lists the known names).
        FileNotFoundError: see :func:`resolve_pretrained`.
        RuntimeError: a hub tag could not be fetched (offline machine).
    """
    import open_clip

    register_archs(None)
    if arch_config:
        register_archs({arch: arch_config})
    known = open_clip.list_models()
    if arch not in known:
        raise ValueError(
            f"unknown open_clip architecture {arch!r}: use one of {known}, or give arch_config "
            "(a dict like open_clip's model_configs/*.json) to register it"
        )
    weights = resolve_pretrained(arch, pretrained)
    root, quiet = logging.getLogger(), _DropRandomInitWarning()
    root.addFilter(quiet)
    try:
        return open_clip.create_model(arch, pretrained=weights)
    except RuntimeError as err:
        if weights is not None and not Path(weights).is_file():
            raise RuntimeError(
                f"could not fetch the {arch} weights {weights!r} from the model hub ({err}); on an offline "
                "machine download them elsewhere and give pretrained=<local file>"
            ) from err
        raise
    finally:
        root.removeFilter(quiet)
