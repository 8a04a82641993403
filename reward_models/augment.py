"""Image augmentation shared by the reward models' trainers (random shift, colour jitter), on
uint8 (N, H, W, 3) torch tensors. Imports nothing of ours."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random-shift augmentation (pad by edge replication, crop back), uint8 (N, H, W, 3)."""
    if pad <= 0:
        return images
    n, h, w, _ = images.shape
    x = F.pad(images.permute(0, 3, 1, 2).float(), (pad, pad, pad, pad), mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None]).view(n, 1, h, 1).expand(n, 3, h, w + 2 * pad)
    x = x.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None]).view(n, 1, 1, w).expand(n, 3, h, w)
    x = x.gather(3, cols)
    return x.permute(0, 2, 3, 1).to(torch.uint8)
