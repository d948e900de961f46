"""Transformer building blocks: pre-norm ViT block with fused attention, fixed 2-D sin-cos positions."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def sincos_pos_embed(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (paper eq. 2-3, MAE's 2-D form) -> ``[gh * gw, dim]``.

    Half the channels encode the row, half the column; each half is sin / cos at
    ``1 / 10000^(2i / (dim / 2))`` frequencies. ``dim`` must be a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"embedding dim must be a multiple of 4 for 2-D sin-cos positions, got {dim}")
    gh, gw = grid
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))  # [D/4]
    ys, xs = np.meshgrid(np.arange(gh, dtype=np.float64), np.arange(gw, dtype=np.float64), indexing="ij")

    def enc(pos):
        out = np.einsum("m,d->md", pos.reshape(-1), omega)  # [L, D/4]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # [L, D/2]

    return torch.from_numpy(np.concatenate([enc(ys), enc(xs)], axis=1)).float()


class DropPath(nn.Module):
    """Stochastic depth per sample (identity at eval or when ``p == 0``)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Attention(nn.Module):
    """Multi-head self-attention (eq. 6-8) on ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape  # x: [B, L, D]
        qkv = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask)  # [B, h, L, d/h]
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """FFN (eq. 9): Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (LMMSA block, eq. 4-5): ``x + DropPath(Attn(LN(x)))``, then FFN."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), attn_mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class LabelPatchEmbed(nn.Module):
    """The label half of the fuse-map patch embedding, as a lookup-and-sum.

    A linear map of a patch's ``N * p * p`` one-hot inputs equals the sum, over its labelled pixels,
    of one weight row per (class, pixel position); void pixels contribute nothing. Most patches of a
    label map hold one class, so the sum is taken relative to each patch's first pixel's class ``c``:
    the precomputed sum of ``c``'s rows, plus, for the pixels of another class only, their row minus
    ``c``'s row at that position (an ``embedding_bag`` with weights +1 / -1). That is exact, and costs
    in proportion to the pixels that differ, not to ``p * p``.
    """

    def __init__(self, num_classes: int, patch_size: int, dim: int):
        super().__init__()
        self.num_classes = num_classes  # ids outside [0, N) are void: no row
        self.pad = num_classes * patch_size * patch_size
        self.bag = nn.EmbeddingBag(self.pad + 1, dim, mode="sum", padding_idx=self.pad)

    def forward(self, label_patches: torch.Tensor) -> torch.Tensor:
        """``label_patches [B, L, p * p]`` int -> ``[B, L, D]``."""
        b, n, pp = label_patches.shape
        nc, weight = self.num_classes, self.bag.weight
        flat = label_patches.reshape(b * n, pp)
        valid = (flat >= 0) & (flat < nc)
        cls = torch.where(valid, flat.long(), torch.full_like(flat, nc, dtype=torch.long))  # void -> N: [M, p*p]
        base = cls[:, 0]  # [M] each patch's reference class
        rows, pos = torch.nonzero(cls != base.unsqueeze(1), as_tuple=True)  # [K] each, grouped by patch
        other, ref = cls[rows, pos], base[rows]

        def row_of(c: torch.Tensor) -> torch.Tensor:  # (class, position) -> weight row; void -> the zero pad row
            return torch.where(c < nc, c * pp + pos, torch.full_like(c, self.pad))

        idx = torch.stack([row_of(other), row_of(ref)], 1).flatten()  # [2K]
        signs = torch.tensor([1.0, -1.0], dtype=weight.dtype, device=weight.device).repeat(rows.numel())
        counts = 2 * torch.bincount(rows, minlength=b * n)
        offsets = torch.cumsum(counts, 0) - counts  # [M]
        diff = F.embedding_bag(idx, weight, offsets, mode="sum", per_sample_weights=signs, padding_idx=self.pad)
        sums = weight[: self.pad].view(nc, pp, -1).sum(1)  # [N, D]: a whole patch of one class
        sums = torch.cat([sums, sums.new_zeros(1, sums.shape[1])])  # [N + 1, D]: void
        return (sums[base] + diff).view(b, n, weight.shape[1])
