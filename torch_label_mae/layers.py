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
    of one weight row per (class, pixel position); void pixels contribute nothing. ``EmbeddingBag``
    computes exactly that without building the one-hot.
    """

    def __init__(self, num_classes: int, patch_size: int, dim: int, ignore_index: int = 255):
        super().__init__()
        self.num_classes, self.patch_size, self.ignore_index = num_classes, patch_size, ignore_index
        self.pad = num_classes * patch_size * patch_size
        self.bag = nn.EmbeddingBag(self.pad + 1, dim, mode="sum", padding_idx=self.pad)

    def forward(self, label_patches: torch.Tensor) -> torch.Tensor:
        """``label_patches [B, L, p * p]`` int -> ``[B, L, D]``."""
        b, n, pp = label_patches.shape
        pos = torch.arange(pp, device=label_patches.device)
        valid = (label_patches >= 0) & (label_patches < self.num_classes)
        pad = torch.full_like(label_patches, self.pad, dtype=torch.long)  # long: pad may not fit the label dtype
        idx = torch.where(valid, label_patches.long() * pp + pos, pad)
        return self.bag(idx.reshape(b * n, pp)).view(b, n, self.bag.embedding_dim)
