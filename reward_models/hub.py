"""Checkpoints in the Hugging Face hub's layout: ``config.json`` + ``model.safetensors``, no pickles.

Loading a checkpoint someone shared must never run code, so weights travel as safetensors (tensors
and nothing else) and everything else as JSON. Three tools here, used by every reward model and by
the policies (``policies.deploy``):

- :func:`save_state_dict` / :func:`load_state_dict`: a module's state dict as ``model.safetensors``;
  an old ``weights.pt`` still loads (with ``torch.load(weights_only=True)``, which refuses code)
  and a :class:`DeprecationWarning` that names the conversion command.
- :func:`save_tree` / :func:`load_tree`: any nested dict/list of tensors and JSON values (a SAC agent's
  state with its optimisers) as a JSON skeleton in ``config.json`` plus the tensors in safetensors.
- :func:`resolve`: ``hf://<org>/<name>[/<subfolder>][@<revision>]`` -> a local directory through
  ``huggingface_hub``'s cache (``HF_HUB_CACHE``); with ``HF_HUB_OFFLINE=1`` only the cache is read.

Convert old checkpoints (``weights.pt`` -> ``model.safetensors``, ``config.json`` untouched)::

    python -m reward_models.hub convert reward_models/checkpoints/general runs/my-model
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
LEGACY_WEIGHTS = "weights.pt"
HF_PREFIX = "hf://"


class HubError(ValueError):
    """A checkpoint reference or file that cannot be resolved or read (the message names the fix)."""


# --------------------------------------------------------------------------- state dicts


def save_state_dict(state: dict, path: str | Path) -> Path:
    """Write a flat ``{name: tensor}`` state dict as safetensors (atomic: a temporary file, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}  # clone: no shared storage
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(path)
    return path


def load_state_dict(directory: str | Path, device: Any = "cpu") -> dict:
    """The state dict in ``directory``: ``model.safetensors``, else a deprecated ``weights.pt``.

    Raises:
        FileNotFoundError: neither file exists.
        HubError: the file is damaged or not a state dict.
    """
    directory = Path(directory)
    st = directory / WEIGHTS_NAME
    if st.exists():
        from safetensors.torch import load_file

        try:
            return load_file(str(st), device=str(device))
        except Exception as err:  # safetensors raises its own kinds on a damaged file
            raise HubError(f"{st} is damaged ({err}): re-save or re-download the checkpoint") from err
    legacy = directory / LEGACY_WEIGHTS
    if not legacy.exists():
        raise FileNotFoundError(f"{directory} has no {WEIGHTS_NAME} (nor an old {LEGACY_WEIGHTS}): re-save or re-train the model")
    warnings.warn(
        f"{legacy} is a pickled checkpoint (deprecated): convert it with "
        f"`python -m reward_models.hub convert {directory}` to {WEIGHTS_NAME}",
        DeprecationWarning, stacklevel=3,
    )
    import torch

    try:
        state = torch.load(legacy, map_location=device, weights_only=True)  # the restricted unpickler: no code runs
    except Exception as err:
        raise HubError(f"{legacy} cannot be read as plain tensors ({err}): re-train the model") from err
    if not isinstance(state, dict):
        raise HubError(f"{legacy} holds a {type(state).__name__}, not a state dict")
    return state


def convert(directory: str | Path) -> Path:
    """Rewrite ``directory/weights.pt`` as ``model.safetensors`` (same tensors) and delete the pickle."""
    directory = Path(directory)
    if (directory / WEIGHTS_NAME).exists() and not (directory / LEGACY_WEIGHTS).exists():
        return directory / WEIGHTS_NAME
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        state = load_state_dict_legacy(directory)
    out = save_state_dict(state, directory / WEIGHTS_NAME)
    (directory / LEGACY_WEIGHTS).unlink()
    return out


def load_state_dict_legacy(directory: Path) -> dict:
    """``weights.pt`` alone (for :func:`convert`), restricted unpickler."""
    import torch

    return torch.load(Path(directory) / LEGACY_WEIGHTS, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- nested trees


def _encode(node: Any, tensors: dict, path: str) -> Any:
    import torch

    if isinstance(node, torch.Tensor):
        tensors[path] = node
        return {"__tensor__": path}
    if isinstance(node, dict):
        if all(isinstance(k, str) for k in node):
            return {k: _encode(v, tensors, f"{path}.{k}" if path else k) for k, v in node.items()}
        # optimiser states key their params by int: keep the key types exactly
        return {"__items__": [[k, _encode(v, tensors, f"{path}.{i}")] for i, (k, v) in enumerate(node.items())]}
    if isinstance(node, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(node)]}
    if isinstance(node, list):
        return [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(node)]
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    import numpy as np

    if isinstance(node, np.generic):
        return node.item()
    raise HubError(f"cannot store a {type(node).__name__} at {path!r} in a safetensors checkpoint (tensors and JSON values only)")


def _decode(node: Any, tensors: dict) -> Any:
    if isinstance(node, dict):
        if "__tensor__" in node:
            return tensors[node["__tensor__"]]
        if "__items__" in node:
            return {(tuple(k) if isinstance(k, list) else k): _decode(v, tensors) for k, v in node["__items__"]}
        if "__tuple__" in node:
            return tuple(_decode(v, tensors) for v in node["__tuple__"])
        return {k: _decode(v, tensors) for k, v in node.items()}
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    return node


def save_tree(directory: str | Path, tree: dict, meta: dict | None = None) -> Path:
    """Write a nested dict of tensors and JSON values as ``model.safetensors`` + ``config.json``
    (``{**meta, "tree": skeleton}``; the config lands last, so a checkpoint is whole or absent)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict = {}
    skeleton = _encode(tree, tensors, "")
    save_state_dict(tensors, directory / WEIGHTS_NAME)
    tmp = directory / (CONFIG_NAME + ".tmp")
    tmp.write_text(json.dumps({**(meta or {}), "tree": skeleton}, indent=1))
    tmp.replace(directory / CONFIG_NAME)
    return directory


def load_tree(directory: str | Path) -> tuple[dict, dict]:
    """``(tree, meta)`` from a :func:`save_tree` directory; ``meta`` is ``config.json`` without the tree.

    Raises:
        FileNotFoundError: no ``config.json`` or ``model.safetensors``.
        HubError: damaged files.
    """
    directory = Path(directory)
    try:
        meta = json.loads((directory / CONFIG_NAME).read_text())
        skeleton = meta.pop("tree")
    except FileNotFoundError:
        raise
    except (ValueError, KeyError, AttributeError) as err:
        raise HubError(f"{directory / CONFIG_NAME} is damaged or not a saved tree ({err})") from err
    if not (directory / WEIGHTS_NAME).exists():
        raise FileNotFoundError(f"{directory} has no {WEIGHTS_NAME}: an unfinished save?")
    tensors = load_state_dict(directory)
    try:
        return _decode(skeleton, tensors), meta
    except KeyError as err:
        raise HubError(f"{directory}: config.json names tensor {err} that {WEIGHTS_NAME} lacks") from err


# --------------------------------------------------------------------------- the hub


def is_hub_ref(ref: Any) -> bool:
    """Whether ``ref`` is an ``hf://`` reference."""
    return isinstance(ref, str) and ref.startswith(HF_PREFIX)


def _offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE")
    return constants.HF_HUB_OFFLINE if flag is None else flag.strip().lower() in ("1", "true", "yes", "on")


def resolve(ref: str | Path) -> Path:
    """A local directory for ``ref``: a path as it is, or ``hf://<org>/<name>[/<subfolder>][@<revision>]``
    downloaded into (or, offline, read from) huggingface_hub's cache (``HF_HUB_CACHE``).

    Raises:
        HubError: a malformed reference, or a model not in the cache while offline (with the fix).
    """
    if not is_hub_ref(ref):
        return Path(ref)
    spec, _, revision = str(ref)[len(HF_PREFIX):].partition("@")
    parts = [p for p in spec.split("/") if p]
    if len(parts) < 2:
        raise HubError(f"{ref!r}: write hf://<org>/<name>[/<subfolder>][@<revision>], e.g. hf://stepwise/general")
    repo_id, sub = "/".join(parts[:2]), "/".join(parts[2:])
    from huggingface_hub import snapshot_download

    offline = _offline()
    try:
        root = snapshot_download(repo_id, revision=revision or None, cache_dir=os.environ.get("HF_HUB_CACHE"),
                                 local_files_only=offline, allow_patterns=[f"{sub}/*" if sub else "*"])
    except Exception as err:  # huggingface_hub raises several kinds (offline miss, 404, network)
        how = ("it is not in the local cache and HF_HUB_OFFLINE is set: download it once with "
               f"`hf download {repo_id}` on a machine with network, or unset HF_HUB_OFFLINE") if offline else \
              "check the name and revision, and that this machine reaches the hub (or set HF_HUB_OFFLINE=1 to use the cache)"
        raise HubError(f"cannot resolve {ref!r}: {how} ({type(err).__name__}: {err})") from err
    path = Path(root) / sub
    if not path.is_dir():
        raise HubError(f"{ref!r}: the repository has no folder {sub!r}")
    return path


def push_to_hub(directory: str | Path, repo_id: str, commit_message: str = "Upload Stepwise checkpoint",
                private: bool = False, revision: str | None = None) -> str:
    """Upload a saved checkpoint directory (``save_pretrained``'s output) to the hub; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(directory), commit_message=commit_message,
                             revision=revision)
    return str(info)


def main(argv: list[str] | None = None) -> int:
    """``python -m reward_models.hub convert DIR...``: old ``weights.pt`` checkpoints to ``model.safetensors``."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] != "convert":
        print("usage: python -m reward_models.hub convert CHECKPOINT_DIR [...]", file=sys.stderr)
        return 2
    for d in args[1:]:
        if not (Path(d) / LEGACY_WEIGHTS).exists() and not (Path(d) / WEIGHTS_NAME).exists():
            print(f"{d}: no {LEGACY_WEIGHTS} or {WEIGHTS_NAME} here: not a checkpoint directory", file=sys.stderr)
            return 1
        print(f"{d}: {convert(d)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
