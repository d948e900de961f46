"""Completion of one same-size batch with a trained L-MAE: resize to the model grid, hide the patches
that touch a missing pixel, predict, bring the logits back to the label's size, fill only the missing
pixels. At the model's own size only the hidden patches' logits are computed (the fast path)."""

from __future__ import annotations

import torch

from .io import resize_image, resize_label, stack_images
from .masking import background_first_inference, hidden_from_missing, hidden_to_pixels
from .model import ABSENT_SLOT, LMAE
from .prior import LabelPrior
from .slots import from_slots, present_slots, to_slots


@torch.inference_mode()
def complete_tensors(
    model: LMAE, image: torch.Tensor, label: torch.Tensor, missing: torch.Tensor, hidden: torch.Tensor | None = None
):
    """Complete one same-size batch.

    ``image [B, 3, H, W]`` (uint8 or float in [0, 1]), ``label [B, H, W]`` int64, ``missing [B, H, W]``
    bool, all on the model's device; ``hidden`` (default: every patch that touches a missing pixel).
    Returns ``(completed [B, H, W] int64, confidence [B, H, W] float)``; pixels outside ``missing`` are
    returned unchanged (confidence 1). A class-agnostic model takes any non-negative ids (unknown pixels
    ``ignore_index``): they are mapped to slots and back (:mod:`torch_label_mae.slots`), and a missing
    pixel of a sample with no known pixel stays as it is (confidence 0).
    """
    cfg = model.config
    if not cfg.class_agnostic:
        return _complete_classes(model, image, label, missing, hidden)
    known = ~missing & (label != cfg.ignore_index) & (label >= 0)
    slots, table = to_slots(label, known, cfg.num_classes, cfg.ignore_index)  # [B, H, W], [B, K]
    pred, conf = _complete_classes(model, image, slots, missing, hidden)
    ids = from_slots(torch.where(missing, pred, torch.zeros_like(pred)), table)
    filled = missing & (ids >= 0)
    return torch.where(filled, ids, label), torch.where(missing & ~filled, torch.zeros_like(conf), conf)


def _complete_classes(model: LMAE, image, label, missing, hidden):
    """:func:`complete_tensors` on labels in the model's own classes (or slots)."""
    cfg = model.config
    size = cfg.size
    lab = resize_label(label, size)
    lab = torch.where(resize_label(missing.to(torch.uint8), size).bool(), torch.full_like(lab, cfg.ignore_index), lab)
    full_size = tuple(label.shape[-2:]) != size
    known_label = torch.where(missing, torch.full_like(label, cfg.ignore_index), label) if full_size else None
    if full_size and model.prior_alone():  # the prior at full size is the whole answer: none at the model's size
        logits = prior_alone_logits(model, image, known_label, lab)  # [B, N, H, W]
    else:
        x = resize_image(image, size)
        hidden = hidden_from_missing(missing, cfg.grid) if hidden is None else hidden
        prior = model.prior(lab, image=x) if model.prior is not None else None
        if not full_size:
            pix = hidden_to_pixels(hidden, cfg.grid, cfg.patch_size)  # [B, h, w]
            if not bool((missing & ~pix).any()):  # every missing pixel lies in a hidden patch: predict those only
                return _complete_hidden_rows(model, x, lab, label, missing, hidden, prior)
        logits = model(x, lab, hidden, prior).float()  # [B, N, h, w]
        if full_size:
            logits = model.resize_logits(logits, prior, image, known_label)
    pred, prob = class_and_probability(logits, dim=1)  # [B, H, W] each
    completed = torch.where(missing, pred, label)
    confidence = torch.where(missing, prob, torch.ones_like(prob))
    return completed, confidence


def prior_alone_logits(model: LMAE, image: torch.Tensor, label: torch.Tensor, model_label: torch.Tensor):
    """What ``model``'s forward pass and :meth:`~LMAE.resize_logits` give when :meth:`~LMAE.prior_alone`,
    without the model-size prior that would add nothing: the label prior of ``label [B, H, W]`` (unknown
    pixels ``ignore_index``) at the size of ``image [B, 3, H, W]``, times its scale, with the slots that
    the model-size label ``model_label [B, h, w]`` lacks ruled out as the forward pass rules them out."""
    b, n = label.shape[0], model.config.num_classes
    logits = torch.zeros(b, n, *label.shape[-2:], device=label.device, dtype=torch.float32)  # [B, N, H, W]
    logits = logits.contiguous(memory_format=torch.channels_last)  # as resize_logits gives them
    if model.config.class_agnostic:
        absent = ~present_slots(model_label, n)  # [B, N]
        logits.masked_fill_(absent[:, :, None, None], ABSENT_SLOT)
    return model.prior(label, image=image).add_to(logits, model.prior_scale, inplace=True)


def class_and_probability(logits: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The chosen class along ``dim`` and its softmax probability, ``1 / sum(exp(logits - max))``: three
    passes over the logits, without the full softmax."""
    top, pred = logits.max(dim)
    # terms below exp(-80) cannot change a float32 sum that is at least 1, and far below it (absent slots,
    # -1e4) exp leaves its vectorised path: clamped, the same probability several times faster
    return pred, (logits - top.unsqueeze(dim)).clamp_(min=-80.0).exp_().sum(dim).reciprocal_()


def _complete_hidden_rows(model: LMAE, x, lab, label, missing, hidden, prior):
    """:func:`complete_tensors` at the model's size: logits of the hidden patches only, reduced to the
    chosen class and its probability per pixel before anything is laid out at full size."""
    if model.config.class_agnostic and prior is not None and prior.prob is not None and model.prior_alone():
        model.check_inputs(x, lab, hidden)
        pred, prob = _prior_alone_rows(model, lab, hidden, prior)  # [M, p*p] each
    else:
        rows = model(x, lab, hidden, prior, hidden_only=True).float()  # [M, p*p, N]
        pred, prob = class_and_probability(rows, dim=-1)  # [M, p*p] each
    b, length = hidden.shape
    grid_pred = pred.new_zeros(b, length, pred.shape[-1])
    grid_prob = prob.new_ones(b, length, prob.shape[-1])
    grid_pred[hidden], grid_prob[hidden] = pred, prob
    pred_map = model.unpatchify(grid_pred, channels=1)[:, 0]  # [B, H, W]
    prob_map = model.unpatchify(grid_prob, channels=1)[:, 0]
    completed = torch.where(missing, pred_map, label)
    confidence = torch.where(missing, prob_map, torch.ones_like(prob_map))
    return completed, confidence


def _prior_alone_rows(model: LMAE, lab: torch.Tensor, hidden: torch.Tensor, prior: LabelPrior):
    """The chosen slot and its probability on the hidden rows, ``[M, p*p]`` each, of a class-agnostic model
    that is its soft prior alone: what :meth:`~LMAE.forward_hidden` and :func:`class_and_probability` give
    (the slots the label ``lab [B, h, w]`` lacks at ``ABSENT_SLOT``, the others at the prior's scale times its
    probability), read over the prior's ``K`` slots instead of laid out over all ``N``. The same slots (ties
    to the lowest, as the prior's slots ascend); the probability up to float32 rounding of its sum."""
    rows = prior.rows(hidden, model.patchify)  # prob [M, p*p, K], index [M, 1, K]
    present = present_slots(lab, model.config.num_classes)  # [B, N]
    present = present.unsqueeze(1).expand(-1, hidden.shape[1], -1)[hidden].unsqueeze(1).gather(-1, rows.index)
    logits = model.prior_scale.to(torch.float32) * rows.prob.float()  # [M, p*p, K], as added onto zeros
    top, prob = class_and_probability(logits.masked_fill_(~present, ABSENT_SLOT), dim=-1)  # [M, p*p] each
    return rows.index.expand_as(logits).gather(-1, top.unsqueeze(-1)).squeeze(-1), prob


def check_dtypes(model: LMAE) -> None:
    """Refuse weights cast by hand (e.g. ``completer.half()``), saying what to do: completion and the audit
    compute in float32 (the prior's maps would meet half weights)."""
    dtype = next(model.parameters()).dtype
    if dtype != torch.float32:
        raise ValueError(
            f"the completer's weights are {dtype}, but completion needs float32 weights: undo it with "
            "completer.float(), and for a lower precision pass precision='bfloat16' (autocast) instead"
        )


def complete_samples(model: LMAE, samples, device: torch.device, amp: torch.dtype | None, background_first: bool):
    """Complete prepared samples of one size (:class:`torch_label_mae.inputs.Sample`) on ``device`` under
    autocast ``amp`` (None: float32) -> ``[(completed [H, W], confidence [H, W]), ...]`` on the CPU.
    ``background_first``: the paper's Background-First inference mode (:mod:`torch_label_mae.masking`)."""
    check_dtypes(model)
    non_blocking = device.type == "cuda"
    img = stack_images([s.image for s in samples])
    lab = torch.stack([s.label for s in samples])
    miss = torch.stack([s.miss for s in samples])
    if non_blocking:
        img, lab, miss = (t.pin_memory() for t in (img, lab, miss))
    img, lab, miss = (t.to(device, non_blocking=non_blocking) for t in (img, lab, miss))
    hidden = None
    if background_first:
        c = model.config
        if c.background_index is None:
            raise ValueError(
                "missing='background-first' needs a model with a background class (config.background_index is None)"
            )
        hidden, miss = background_first_inference(
            lab, miss, c.size, c.patch_size, c.mask_ratio, c.background_index, c.ignore_index
        )
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        completed, conf = complete_tensors(model, img, lab, miss, hidden)
    completed, conf = completed.cpu(), conf.float().cpu()
    if completed.is_inference():  # out of inference mode, so callers may edit the results in place
        completed, conf = completed.clone(), conf.clone()
    return list(zip(completed, conf, strict=True))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype ``precision`` (``"auto"``, ``"float32"``, ``"bfloat16"``) resolves to on
    ``device`` (None: float32): bfloat16 on CUDA and on CPUs with native bfloat16 matrix units."""
    if precision == "float32":
        return None
    if precision == "bfloat16" or device.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16_matmul() else None


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AMX tiles): there, bfloat16 autocast is
    several times faster than float32; elsewhere it is emulated and slower."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False
