"""Slots: how a class-agnostic L-MAE takes labels of any class list.

A class-agnostic model (``config.class_agnostic``) knows ``num_classes`` anonymous *slots*, not classes.
Per sample, the class ids its visible (known) pixels carry are given slots, the model completes the
slot label, and the slots are mapped back to the ids (:func:`to_slots`, :func:`from_slots`). A hidden
pixel can therefore only receive a class that the sample's visible pixels carry: the model's logits of
the slots nobody holds are pushed down (:meth:`torch_label_mae.model.LMAE.forward`) and a slot maps
back only to the id that holds it.

At inference the slots go to the ids by decreasing visible pixel count (deterministic); in training
they are drawn at random per sample and per step (:func:`random_slots`), as AOT (Yang et al.,
"Associating Objects with Transformers", NeurIPS 2021) assigns its identity embeddings to the objects of
a video, so that a slot means "the region of this identity" and never a class. A sample with more
classes than slots keeps the ``num_classes`` largest; the pixels of the others are unknown to the model
(visible ones stay as they are; hidden ones can only get one of the kept classes).
"""

from __future__ import annotations

import random

import torch


def ids_by_count(label: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """The ids of ``label``'s known pixels, most frequent first; ties go to the id met first in raster
    order. The order depends on the regions alone, never on the id values, so renaming the classes
    (any permutation of ids) gives the same slots and the same completion, renamed."""
    flat = label[known]  # raster order
    ids, inverse, counts = flat.unique(return_inverse=True, return_counts=True)
    n = flat.numel()
    first = torch.full((len(ids),), n, dtype=torch.long, device=label.device)
    first = first.scatter_reduce(0, inverse, torch.arange(n, device=label.device), "amin")
    return ids[torch.argsort(first - counts.long() * (n + 1))]


def slot_table(ids: torch.Tensor, num_slots: int, slots: list[int] | None = None) -> torch.Tensor:
    """``table [num_slots]`` int64: the id each slot holds, -1 where none. The first ``num_slots`` of
    ``ids`` take slots ``0, 1, ...`` or, given, the slots ``slots`` (one per kept id)."""
    kept = ids[:num_slots].long()
    table = torch.full((num_slots,), -1, dtype=torch.long, device=ids.device)
    where = torch.arange(len(kept), device=ids.device) if slots is None else torch.tensor(slots[: len(kept)])
    table[where.to(ids.device)] = kept
    return table


def apply_table(label: torch.Tensor, known: torch.Tensor, table: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """``label`` in slots: a known pixel whose id holds a slot gets that slot, every other pixel
    ``ignore_index``."""
    out = torch.full_like(label, ignore_index)
    for slot, cid in enumerate(table.tolist()):
        if cid >= 0:
            out[known & (label == cid)] = slot
    return out


def to_slots(label: torch.Tensor, known: torch.Tensor, num_slots: int, ignore_index: int):
    """A batch ``label [B, H, W]`` (any non-negative ids; ``known [B, H, W]`` bool marks the pixels the
    model may read) -> ``(slot label [B, H, W] with ignore_index elsewhere, table [B, num_slots])``,
    slots given by decreasing pixel count."""
    tables = [slot_table(ids_by_count(lab, k), num_slots) for lab, k in zip(label, known, strict=True)]
    table = torch.stack(tables) if tables else torch.empty(0, num_slots, dtype=torch.long, device=label.device)
    slotted = [apply_table(lab, k, t, ignore_index) for lab, k, t in zip(label, known, table, strict=True)]
    return (torch.stack(slotted) if slotted else label.clone()), table


def random_slots(label: torch.Tensor, valid: torch.Tensor, num_slots: int, ignore_index: int, rng: random.Random):
    """Training: one sample's ``label [H, W]`` in slots drawn at random (``valid``: its labelled pixels).
    Every class (of the whole label, hidden parts included, so the target is in slots too) gets a distinct
    random slot; with more classes than slots the largest keep one. Returns the slot label."""
    ids = ids_by_count(label, valid)
    slots = rng.sample(range(num_slots), min(len(ids), num_slots))
    return apply_table(label, valid, slot_table(ids, num_slots, slots), ignore_index)


def from_slots(pred: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Slots ``pred [B, H, W]`` -> ids, by each sample's ``table [B, num_slots]`` (-1 for a slot no id
    holds: only when the sample has no known pixel at all)."""
    return table.gather(1, pred.flatten(1).long()).view_as(pred)


def present_slots(label: torch.Tensor, num_slots: int) -> torch.Tensor:
    """``[B, num_slots]`` bool: the slots that a visible pixel of ``label [B, H, W]`` holds (values outside
    ``[0, num_slots)`` are unknown pixels)."""
    flat = label.reshape(label.shape[0], -1)
    ok = (flat >= 0) & (flat < num_slots)
    idx = torch.where(ok, flat, torch.zeros_like(flat)).long()
    counts = torch.zeros(label.shape[0], num_slots, dtype=torch.int32, device=label.device)
    return counts.scatter_add_(1, idx, ok.to(torch.int32)) > 0
