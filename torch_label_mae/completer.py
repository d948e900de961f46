"""Label completion with a trained L-MAE: resize to the model grid, hide the patches that touch a
missing pixel, predict, resize the logits back, fill only the missing pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import resize_image, resize_label
from .masking import hidden_from_missing, hidden_to_pixels
from .model import LMAE


@torch.inference_mode()
def complete_tensors(
    model: LMAE, image: torch.Tensor, label: torch.Tensor, missing: torch.Tensor, hidden: torch.Tensor | None = None
):
    """Complete one same-size batch.

    ``image [B, 3, H, W]`` (uint8 or float in [0, 1]), ``label [B, H, W]`` int64, ``missing [B, H, W]``
    bool, all on the model's device. Returns ``(completed [B, H, W] int64, confidence [B, H, W] float)``;
    pixels outside ``missing`` are returned unchanged (confidence 1).
    """
    cfg = model.config
    size = cfg.size
    x = resize_image(image, size)
    lab = resize_label(label, size)
    if hidden is None:
        hidden = hidden_from_missing(missing, cfg.grid)
    lab = torch.where(resize_label(missing.to(torch.uint8), size).bool(), torch.full_like(lab, cfg.ignore_index), lab)
    prior = model.label_prior(lab, image=x) if cfg.label_prior else None
    if tuple(label.shape[-2:]) == size and model.refiner is None:
        pix = hidden_to_pixels(hidden, cfg.grid, cfg.patch_size)  # [B, h, w]
        if not bool((missing & ~pix).any()):  # every missing pixel lies in a hidden patch: predict those only
            return _complete_hidden_rows(model, x, lab, label, missing, hidden, prior)
    logits = model(x, lab, hidden, prior).float()  # [B, N, h, w]
    if tuple(logits.shape[-2:]) != tuple(label.shape[-2:]):
        full = tuple(label.shape[-2:])
        if cfg.label_prior:
            # keep the model's correction, but take the label prior at full resolution, where
            # thin structures that the resize to the model grid loses are still there
            logits = model.add_prior(logits, prior, sign=-1.0, inplace=True)
            logits = F.interpolate(logits, size=full, mode="bilinear", align_corners=False)
            known_label = torch.where(missing, torch.full_like(label, cfg.ignore_index), label)
            logits = model.add_prior(logits, model.label_prior(known_label, image=image), inplace=True)
        else:
            logits = F.interpolate(logits, size=full, mode="bilinear", align_corners=False)
    pred, prob = class_and_probability(logits, dim=1)  # [B, H, W] each
    completed = torch.where(missing, pred, label)
    confidence = torch.where(missing, prob, torch.ones_like(prob))
    return completed, confidence


def class_and_probability(logits: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The chosen class along ``dim`` and its softmax probability, ``1 / sum(exp(logits - max))``: three
    passes over the logits, without the full softmax."""
    top, pred = logits.max(dim)
    return pred, torch.exp(logits - top.unsqueeze(dim)).sum(dim).reciprocal_()


def _complete_hidden_rows(model: LMAE, x, lab, label, missing, hidden, prior):
    """:func:`complete_tensors` at the model's size: logits of the hidden patches only, reduced to the
    chosen class and its probability per pixel before anything is laid out at full size."""
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


# ----------------------------------------------------------------------------------------------------
# LabelCompleter: the product surface
# ----------------------------------------------------------------------------------------------------
import json  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import NamedTuple  # noqa: E402

import numpy as np  # noqa: E402
from huggingface_hub import PyTorchModelHubMixin  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

from . import hub  # noqa: E402
from .colors import (  # noqa: E402
    MISSING_ID,
    VOID_ID,
    color_label_like,
    color_label_to_array,
    flattened_hint,
    is_color_label,
    load_colors,
)
from .io import confidence_like, image_to_tensor, label_like, label_to_tensor, missing_to_tensor  # noqa: E402
from .masking import background_first_masking  # noqa: E402
from .model import LMAEConfig  # noqa: E402

MODEL_CARD = """
---
{{ card_data }}
---

# L-MAE label completer

Fills missing pixels of semantic-segmentation labels from the image and the labels that remain
(L-MAE, label masked autoencoder). Load with
`torch_label_mae.LabelCompleter.from_pretrained("<this repo>")`.

- Code: {{ repo_url | default("https://github.com/torch-label-mae/torch-label-mae", true) }}
- Paper: {{ paper_url | default("https://doi.org/10.1016/j.patter.2025.101455", true) }}
"""


def _load_weights(path: Path, config: LMAEConfig) -> dict[str, torch.Tensor]:
    """The tensors of the weights file ``path`` for a completer of ``config``, checked as
    :meth:`LabelCompleter.from_folder` says: header first (dtypes, keys, shapes), then the values."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        header = hub.read_weights_header(path)
    except OSError as e:
        raise hub.CorruptWeightsError(f"{path}: unreadable safetensors file ({e})") from None
    want = {f"model.{k}": v for k, v in LMAE.state_shapes(config).items()}
    missing, unexpected = sorted(set(want) - set(header)), sorted(set(header) - set(want))
    if missing or unexpected:
        raise hub.CorruptWeightsError(
            f"{path} does not match its config: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
        )
    for k, (_, shape) in header.items():
        if shape != want[k]:
            raise hub.CorruptWeightsError(
                f"{path} does not match its config: tensor {k!r} has shape {list(shape)}, the config needs "
                f"{list(want[k])}"
            )
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise hub.CorruptWeightsError(f"{path}: unreadable safetensors file ({e})") from None
    for k, t in state.items():
        if not t.dtype.is_floating_point:  # pragma: no cover - the header said otherwise
            raise hub.CorruptWeightsError(f"{path}: tensor {k!r} has dtype {t.dtype}; weights must be floating point")
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise hub.CorruptWeightsError(
                f"{path}: tensor {k!r} holds {bad} NaN or infinite value(s) of {t.numel()}; weights must be finite"
            )
    return state


class LabelCompleter(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="torch-label-mae",
    tags=["image-segmentation", "label-completion", "l-mae"],
    repo_url="https://github.com/torch-label-mae/torch-label-mae",
    paper_url="https://doi.org/10.1016/j.patter.2025.101455",
    model_card_template=MODEL_CARD,
):
    """Completes broken segmentation labels with an L-MAE model.

    >>> completer = LabelCompleter.from_pretrained("camvid-m0.5")      # doctest: +SKIP
    >>> fixed = completer.complete(image, label)      # pixels == 255 are filled  # doctest: +SKIP

    ``LabelCompleter(config)`` builds an untrained completer from an :class:`LMAEConfig` or a dict of
    it. Loaded completers are in eval mode on ``device`` (CUDA when available, else CPU).
    """

    def __init__(self, config: LMAEConfig | dict):
        super().__init__()
        if isinstance(config, dict):
            config = LMAEConfig.from_dict(config)
        if not isinstance(config, LMAEConfig):
            raise TypeError(f"config must be an LMAEConfig or a dict, got {type(config).__name__}")
        self.config = config
        self.model = LMAE(config)
        self.routes: list[LabelCompleter] = []  # set by from_pretrained("<dataset>"): one per ratio
        self.precision = "auto"

    # -- precision ---------------------------------------------------------------------------------
    @property
    def precision(self) -> str:
        """Compute precision of completion: ``"auto"`` (bfloat16 autocast on CUDA, and on CPUs with
        native bfloat16 matrix units (AMX), float32 otherwise), ``"float32"`` or ``"bfloat16"``.
        Weights stay float32; the label prior and the final softmax run in float32 either way."""
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        if value not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {value!r}")
        self._precision = value
        for member in getattr(self, "routes", []):
            if member is not self:
                member._precision = value

    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype :attr:`precision` resolves to on this completer's device (None: float32)."""
        if self.precision == "float32":
            return None
        if self.precision == "bfloat16" or self.device.type == "cuda":
            return torch.bfloat16
        return torch.bfloat16 if self.device.type == "cpu" and cpu_has_bf16_matmul() else None

    # -- hub ---------------------------------------------------------------------------------------
    def _save_pretrained(self, save_directory: Path) -> None:
        save_hub_files(self.model, save_directory)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        *,
        revision: str | None = None,
        cache_dir=None,
        local_files_only: bool = False,
        token=None,
        device=None,
        force_download: bool = False,
        endpoint: str | None = None,
        precision: str = "auto",
        timeout: float | None = None,
        **kwargs,
    ) -> LabelCompleter:
        """Load a completer by registered name (``camvid-m0.5``), dataset (``camvid``: every ratio,
        routed per sample), local folder or Hub repo id. Loading is strict (missing or unexpected keys
        are an error) and from safetensors only; the config and the weights file's header are checked
        before the model is built. A folder counts only when it holds both files (an empty folder named
        like a registered model does not shadow it). ``precision``: see :attr:`precision`. ``timeout``:
        the deadline of each download in seconds (default: ``LABEL_MAE_HUB_TIMEOUT`` or
        :data:`hub.DEFAULT_TIMEOUT`); failures are :class:`hub.HubError` subclasses."""
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        hub.hub_timeout(timeout)  # a bad timeout fails before anything is loaded
        name = str(pretrained_model_name_or_path)
        hub_kw = dict(
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
            endpoint=endpoint,
            force_download=force_download,
            timeout=timeout,
        )
        folder = hub.local_folder(name)
        group = [name] if folder is not None else hub.names_for(name)
        if len(group) > 1 or (group and group[0] != name):
            members = [cls.from_pretrained(n, device=device, precision=precision, **hub_kw) for n in group]
            return cls.routed(members)
        if folder is None:
            folder = hub.resolve(name, revision=revision, **hub_kw)
        return cls.from_folder(folder, device=device, precision=precision)

    @classmethod
    def from_folder(cls, folder, device=None, precision: str = "auto") -> LabelCompleter:
        """Load ``config.json`` + ``model.safetensors`` from a local folder (strict).

        Checked in this order, each failure a :class:`hub.CorruptWeightsError` naming the file: the config
        (size, JSON, every field in range; :meth:`LMAEConfig.validate`), the weights file's header (every
        tensor floating point, the keys and shapes the config implies; nothing allocated yet), the
        tensors' values (finite: no NaN or inf); only then is the model built and loaded."""
        folder = Path(folder)
        try:
            config = LMAEConfig.from_json(folder / hub.CONFIG_NAME)
        except (OSError, ValueError, TypeError, RecursionError) as e:
            raise hub.CorruptWeightsError(f"{folder / hub.CONFIG_NAME}: invalid config ({e})") from None
        state = _load_weights(folder / hub.WEIGHTS_NAME, config)
        completer = cls(config)
        try:
            missing, unexpected = completer.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatches raise even when strict=False
            raise hub.CorruptWeightsError(f"{folder / hub.WEIGHTS_NAME} does not match its config: {e}") from None
        if missing or unexpected:  # pragma: no cover - _load_weights compared the keys already
            raise hub.CorruptWeightsError(
                f"{folder / hub.WEIGHTS_NAME} does not match its config: "
                f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
            )
        completer.precision = precision
        return completer.to(resolve_device(device)).eval()

    @classmethod
    def routed(cls, members: Sequence[LabelCompleter]) -> LabelCompleter:
        """Multi-ratio completer: each sample goes to the member whose ``mask_ratio`` is nearest the
        fraction of patches it hides. The returned object is the member nearest 0.5 with ``routes``
        set; the members are loaded on the same device (``from_pretrained(..., device=)``): moving the
        returned module with ``.to()`` moves that member only."""
        members = sorted(members, key=lambda m: m.config.mask_ratio)
        if not members:
            raise ValueError("routed() needs at least one completer")
        ncls = {m.config.num_classes for m in members}
        if len(ncls) > 1:
            raise ValueError(f"routed completers must share num_classes, got {sorted(ncls)}")
        head = min(members, key=lambda m: round(abs(m.config.mask_ratio - 0.5), 9))  # rounded: 0.3 ties 0.7
        head.routes = list(members)
        head.precision = head.precision  # one precision for every member
        return head

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def route(self, hidden_fraction: float) -> LabelCompleter:
        """The member whose ratio is nearest ``hidden_fraction`` (self when not routed)."""
        if not self.routes:
            return self
        # distances rounded so float noise cannot break a tie (0.5 is as near 0.3 as 0.7); ties -> lower ratio
        return min(
            self.routes, key=lambda m: (round(abs(m.config.mask_ratio - hidden_fraction), 9), m.config.mask_ratio)
        )

    # -- completion --------------------------------------------------------------------------------
    def complete(
        self,
        image,
        label,
        missing=None,
        *,
        missing_index: int = 255,
        void_index: int | None = None,
        colors=None,
        return_confidence: bool = False,
    ):
        """Complete one label; see :meth:`complete_batch`."""
        maps = missing if missing is None or isinstance(missing, str) else [missing]  # "background-first" as is
        out = self.complete_batch(
            [image],
            [label],
            maps,
            missing_index=missing_index,
            void_index=void_index,
            colors=colors,
            return_confidence=return_confidence,
        )
        return (out[0][0], out[1][0]) if return_confidence else out[0]

    def complete_batch(
        self,
        images: Sequence,
        labels: Sequence,
        missing=None,
        *,
        batch_size: int | None = None,
        missing_index: int = 255,
        void_index: int | None = None,
        colors=None,
        return_confidence: bool = False,
    ):
        """Complete a list of labels, ``batch_size`` at a time (default: 8 on the CPU, where small
        batches stay in cache and measured fastest, 64 on CUDA).

        ``missing``: None (pixels equal to ``missing_index`` are missing), a list of boolean HxW maps
        (exactly those pixels are missing), or ``"background-first"`` (the paper's inference mode:
        pixels equal to ``missing_index``, plus, at the model's ratio, the background pixels of the
        patches with the largest background share). ``void_index``: the dataset's own ignore label
        (e.g. 255, with holes marked ``missing_index=254`` or by a map): such pixels are never filled,
        never taken for a class, and the model sees them as unknown. With a map, pixels equal to
        ``missing_index`` outside it are kept and unknown too. ``colors`` (a :class:`ColorTable`, a
        built-in name ``camvid`` / ``cityscapes`` / ``voc`` or a JSON file; see
        :mod:`torch_label_mae.colors`): RGB labels (PIL 'RGB', ``HxWx3`` / ``3xHxW`` uint8) are read
        through it, the table's missing colour marks holes, its void colours are void, and they come
        back as RGB in the table's colours; other labels are class ids as usual.

        Only missing pixels change: every other pixel comes back byte-identical, whatever its value;
        every filled value is a class id in ``[0, N)`` (its colour for RGB labels). Each output has its
        input label's type, size and dtype. With ``return_confidence`` also returns, per label, the
        probability of the chosen class per pixel (1 on pixels that were kept).
        """
        if len(images) != len(labels):
            raise ValueError(f"got {len(images)} images but {len(labels)} labels")
        if batch_size is None:
            batch_size = 64 if self.device.type == "cuda" else 8
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        maps = isinstance(missing, (list, tuple, np.ndarray, torch.Tensor))  # one HxW map per label
        if not maps and missing is not None and not (isinstance(missing, str) and missing == "background-first"):
            raise ValueError(f"missing must be None, a list of HxW boolean maps or 'background-first', got {missing!r}")
        if maps and len(missing) != len(labels):
            raise ValueError(f"got {len(missing)} missing maps for {len(labels)} labels")
        check_indices(missing_index, void_index, self.config.num_classes, uses_missing_index=not maps)
        table = load_colors(colors)
        if table is not None and table.num_classes < self.config.num_classes:
            raise ValueError(
                f"colour table {table.name!r} has {table.num_classes} class colours but the model has "
                f"{self.config.num_classes} classes; every class needs a colour"
            )
        samples = []
        for i, (im, lab) in enumerate(zip(images, labels, strict=True)):  # a loop: warnings' stacklevel
            samples.append(self._prepare(i, im, lab, missing[i] if maps else None, missing_index, void_index, table))
        results: list = [None] * len(samples)
        groups: dict = {}
        for i, s in enumerate(samples):
            fraction = float(hidden_from_missing(s.miss.unsqueeze(0), self.config.grid)[0].float().mean())
            member = self.route(fraction)
            groups.setdefault((id(member), tuple(s.label.shape)), (member, []))[1].append(i)
        for member, idx in groups.values():
            for s in range(0, len(idx), batch_size):
                chunk = idx[s : s + batch_size]
                done = member._complete_same_size(
                    [samples[i] for i in chunk], background_first=isinstance(missing, str)
                )
                for i, r in zip(chunk, done, strict=True):
                    results[i] = r
        outs = [s.output(c, lab, table) for s, (c, _), lab in zip(samples, results, labels, strict=True)]
        if not return_confidence:
            return outs
        likes = [
            lab[0] if s.rgb is not None and isinstance(lab, torch.Tensor) else lab
            for s, lab in zip(samples, labels, strict=True)
        ]
        return outs, [confidence_like(p, like) for (_, p), like in zip(results, likes, strict=True)]  # HxW each

    def audit(self, image, label, *, threshold: float | None = None, **kwargs):
        """Find the wrong pixels of one label: every patch is predicted from the image and the rest of
        the label while hidden. Returns a :class:`torch_label_mae.audit.AuditResult` (``score`` per pixel,
        ``1 - p(given class)``; suspect ``regions``; ``repaired`` label; ``image_score``). ``kwargs``:
        see :func:`torch_label_mae.audit.audit_batch`."""
        return self.audit_batch([image], [label], threshold=threshold, **kwargs)[0]

    def audit_batch(self, images: Sequence, labels: Sequence, *, threshold: float | None = None, **kwargs):
        """:meth:`audit` of a list of labels, batched; see :func:`torch_label_mae.audit.audit_batch`."""
        from .audit import DEFAULT_THRESHOLD, audit_batch

        t = DEFAULT_THRESHOLD if threshold is None else threshold
        return audit_batch(self, images, labels, threshold=t, **kwargs)

    def _prepare(self, i: int, image, label, given, missing_index: int, void_index: int | None, table) -> _Sample:
        """One input pair -> a :class:`_Sample`, checked: sizes, ids, 8-bit indices, colours."""
        img_t, name = image_to_tensor(image, f"images[{i}]"), f"labels[{i}]"
        rgb = None
        if table is not None and is_color_label(label):
            rgb = color_label_to_array(label, name)
            lab_t = torch.from_numpy(table.decode(rgb, name))
            miss_value, void_value, what = MISSING_ID, VOID_ID, f"the missing colour {table.missing}"
        else:
            lab_t = label_to_tensor(label, name)
            check_8bit_indices(name, label, missing_index if given is None else None, void_index)
            miss_value, void_value, what = missing_index, void_index, f"the missing index {missing_index}"
        if tuple(img_t.shape[-2:]) != tuple(lab_t.shape):
            raise ValueError(
                f"images[{i}] is {tuple(img_t.shape[-2:])} but labels[{i}] is {tuple(lab_t.shape)} (H, W); "
                "they must match"
            )
        n = self.config.num_classes
        miss = missing_to_tensor(given, lab_t.shape, f"missing[{i}]") if given is not None else lab_t == miss_value
        context = ~miss & ((lab_t < 0) | (lab_t >= n))  # out-of-range values kept as they are: void, ...
        allowed = lab_t == void_value if void_value is not None else torch.zeros_like(miss)
        if given is not None:
            allowed |= lab_t == miss_value  # ... and the missing value outside an explicit map
        bad = context & ~allowed
        if bad.any():
            _refuse_ids(name, lab_t, bad, n, what, void_value if rgb is None else None, table)
        _warn_narrow(name, lab_t, ~miss & ~context, n)
        if bool((miss | context).all()):
            warnings.warn(f"{name} has no known pixel: it is filled from the image alone", stacklevel=3)
        lab_in = torch.where(miss | context, torch.full_like(lab_t, self.config.ignore_index), lab_t)
        return _Sample(img_t, lab_in, miss, lab_t, context, rgb)

    def _complete_same_size(self, samples, background_first: bool = False):
        dev = self.device
        non_blocking = dev.type == "cuda"
        images = [s[0] for s in samples]
        dtype = torch.uint8 if all(t.dtype == torch.uint8 for t in images) else torch.float32
        img = torch.stack([t if t.dtype == dtype else t.float() / 255.0 for t in images])
        lab = torch.stack([s[1] for s in samples])
        miss = torch.stack([s[2] for s in samples])
        if non_blocking:
            img, lab, miss = (t.pin_memory() for t in (img, lab, miss))
        img, lab, miss = (t.to(dev, non_blocking=non_blocking) for t in (img, lab, miss))
        hidden = None
        if background_first:
            if self.config.background_index is None:
                raise ValueError(
                    "missing='background-first' needs a model with a background class (config.background_index is None)"
                )
            cfg = self.config
            # missing pixels count as background (the paper encodes missing areas as background); hide
            # round(ratio * L) patches, most background first, plus every patch that touches a hole
            as_bg = torch.where(miss, torch.full_like(lab, cfg.background_index), lab)
            extra = background_first_masking(
                resize_label(as_bg, cfg.size),
                cfg.patch_size,
                cfg.mask_ratio,
                background_index=cfg.background_index,
                ignore_index=cfg.ignore_index,
            )
            hidden = extra | hidden_from_missing(miss, cfg.grid)
            # in the chosen patches only background pixels are re-predicted; object pixels are kept
            bg = lab == cfg.background_index
            miss = miss | (_hidden_pixels_at(extra, cfg, tuple(lab.shape[-2:])) & bg)
        amp = self.autocast_dtype()
        with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
            completed, conf = complete_tensors(self.model, img, lab, miss, hidden)
        completed, conf = completed.cpu(), conf.float().cpu()
        if completed.is_inference():  # out of inference mode, so callers may edit the results in place
            completed, conf = completed.clone(), conf.clone()
        return list(zip(completed, conf, strict=True))

    def forward(self, image: torch.Tensor, label: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """The underlying model's logits (``[B, N, H, W]``); see :class:`LMAE`."""
        return self.model(image, label, hidden)

    def compile(self, **kwargs) -> LabelCompleter:
        """Optional: compile the transformer blocks with ``torch.compile`` (``kwargs`` are passed on,
        e.g. ``mode="max-autotune"``). Worth it for long runs on a GPU; the first batches are slow
        while it compiles. Returns ``self``."""
        for members in self.routes or [self]:
            for blk in list(members.model.blocks) + list(members.model.decoder_blocks):
                blk.compile(dynamic=True, **kwargs)
        return self


PRECISIONS = ("auto", "float32", "bfloat16")

# a label whose known ids are at least NARROW_MIN_IDS distinct values, all below num_classes / 4 and
# filling at least half of 0..max, on a model of at least NARROW_MIN_CLASSES classes, draws a warning
NARROW_MIN_CLASSES = 20
NARROW_MIN_IDS = 4


def check_indices(missing_index: int, void_index: int | None, n: int, uses_missing_index: bool = True) -> None:
    """Refuse a ``missing_index`` / ``void_index`` that is not an integer, a ``void_index`` that is a
    class id in ``[0, n)``, and the two equal while ``missing_index`` marks the holes (the void pixels
    would be filled)."""
    for what, v in (("missing_index", missing_index), ("void_index", void_index)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))):
            raise ValueError(f"{what} must be an integer, got {v!r}")
    if missing_index is None:
        raise ValueError("missing_index must be an integer, got None")
    if void_index is None:
        return
    if 0 <= void_index < n:
        raise ValueError(
            f"void_index {void_index} is a class id of this model (0..{n - 1}); the void label must be a value "
            "that is not a class, e.g. 255"
        )
    if uses_missing_index and void_index == missing_index:
        raise ValueError(
            f"void_index and missing_index are both {void_index}: void pixels would be filled. Mark the holes "
            f"with another value (e.g. missing_index={254 if void_index == 255 else 255}) or pass missing maps"
        )


def check_8bit_indices(name: str, label, missing_index: int | None, void_index: int | None) -> None:
    """For 8-bit labels (PIL 'P' / 'L', uint8 arrays and tensors): ``missing_index`` (when it marks the
    holes) and ``void_index`` must be in 0..255, or they could never match a pixel."""
    eight = isinstance(label, Image.Image) and label.mode in ("P", "L")
    eight = eight or (isinstance(label, (np.ndarray, torch.Tensor)) and label.dtype in (np.uint8, torch.uint8))
    if not eight:
        return
    for what, v in (("missing_index", missing_index), ("void_index", void_index)):
        if v is not None and not 0 <= v <= 255:
            raise ValueError(f"{name}: {what} {v} cannot occur in an 8-bit label (values 0..255)")


def _refuse_ids(name: str, label: torch.Tensor, bad: torch.Tensor, n: int, what: str, void_index, table) -> None:
    """``ValueError``: known ids outside ``[0, n)`` that are neither missing nor void (with a hint when
    they look like a colour label flattened to grayscale)."""
    values = label[bad].unique().tolist()
    void = f" or the void index {void_index}" if void_index is not None else ""
    raise ValueError(
        f"{name}: {int(bad.sum())} pixels have ids {sorted(values)[:5]} outside [0, {n}) that are not {what}{void}; "
        f"mark them missing or remap them{flattened_hint(values, table)}"
    )


def _warn_narrow(name: str, label: torch.Tensor, known: torch.Tensor, n: int) -> None:
    """Warn when the known ids look like another dataset's.

    The warning (``"<name> ..."``, so that ``complete_dataset`` files it under the label) fires when a
    model of ``n >= NARROW_MIN_CLASSES`` classes gets a label whose known pixels use at least
    ``NARROW_MIN_IDS`` distinct ids, all below ``n / 4``, filling at least half of ``0..max id``: what
    labels of a small dataset look like (e.g. CamVid's 11 classes on a 59-class model). Labels of the
    model's own dataset rarely do: one image holds few classes (VOC), or spreads them over the id range
    (ADE20K, CCP). Costs one ``bincount`` of the label, only on such models."""
    if n < NARROW_MIN_CLASSES:
        return
    ids = torch.bincount(label[known].flatten(), minlength=n).nonzero().flatten().tolist()
    if len(ids) >= NARROW_MIN_IDS and ids[-1] < n / 4 and 2 * len(ids) >= ids[-1] + 1:
        warnings.warn(
            f"{name} uses only class ids {_id_ranges(ids)}, all in the lowest quarter of this model's {n} "
            f"classes: the model may be the wrong one for these labels (of a dataset of about {ids[-1] + 1} "
            "classes?)",
            stacklevel=4,
        )


class _Sample(NamedTuple):
    """One prepared input: ``image [3, H, W]``, ``label`` as the model sees it (``ignore_index`` where
    missing or unknown), ``miss`` (to fill), ``original`` ids, ``context`` (unknown pixels kept as they
    are: void, ...) and, for a colour label, its ``rgb`` array."""

    image: torch.Tensor
    label: torch.Tensor
    miss: torch.Tensor
    original: torch.Tensor
    context: torch.Tensor
    rgb: np.ndarray | None

    def output(self, completed: torch.Tensor, like, table):
        """The completed ids -> ``like``'s type; every pixel that was not filled is the input's own."""
        if self.rgb is None:
            return label_like(torch.where(self.context, self.original, completed), like)
        rgb = self.rgb.copy()
        changed = ((completed != self.original) & ~self.context).numpy()
        rgb[changed] = table.encode(completed.numpy()[changed])
        return color_label_like(rgb, like)


def _id_ranges(ids: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"``."""
    parts, start = [], ids[0]
    for a, b in zip(ids, ids[1:] + [None], strict=True):
        if b != a + 1:
            parts.append(f"{start}-{a}" if a > start else f"{start}")
            start = b
    return ", ".join(parts)


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AMX tiles): there, bfloat16 autocast is
    several times faster than float32; elsewhere it is emulated and slower."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def _hidden_pixels_at(hidden: torch.Tensor, cfg: LMAEConfig, size) -> torch.Tensor:
    pix = hidden_to_pixels(hidden, cfg.grid, cfg.patch_size)
    return resize_label(pix.to(torch.uint8), size).bool()


def save_hub_files(model: LMAE, folder, dtype: torch.dtype | None = None) -> None:
    """Write ``config.json`` + ``model.safetensors`` (keys ``model.*``, as :class:`LabelCompleter` loads
    them) atomically. ``dtype=torch.float16`` halves the file; loading casts back to float32."""
    from safetensors.torch import save_file

    from .io import atomic_write

    folder = Path(folder)
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        state[f"model.{k}"] = v.to(dtype) if dtype is not None and v.is_floating_point() else v
    atomic_write(folder / hub.WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    text = json.dumps(model.config.to_dict(), indent=2)
    atomic_write(folder / hub.CONFIG_NAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def resolve_device(device=None) -> torch.device:
    """``device`` or CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
