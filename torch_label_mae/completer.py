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

import numpy as np  # noqa: E402
from huggingface_hub import PyTorchModelHubMixin  # noqa: E402
from torch import nn  # noqa: E402

from . import hub  # noqa: E402
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
    def complete(self, image, label, missing=None, *, missing_index: int = 255, return_confidence: bool = False):
        """Complete one label; see :meth:`complete_batch`."""
        maps = missing if missing is None or isinstance(missing, str) else [missing]  # "background-first" as is
        out = self.complete_batch(
            [image], [label], maps, missing_index=missing_index, return_confidence=return_confidence
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
        return_confidence: bool = False,
    ):
        """Complete a list of labels, ``batch_size`` at a time (default: 8 on the CPU, where small
        batches stay in cache and measured fastest, 64 on CUDA).

        ``missing``: None (pixels equal to ``missing_index`` are missing), a list of boolean HxW maps,
        or ``"background-first"`` (the paper's inference mode: hide, at the model's ratio, the patches
        with the largest background share). Only missing pixels change; each output has its input
        label's type, size and dtype. With ``return_confidence`` also returns, per label, the
        probability of the chosen class per pixel (1 on pixels that were kept).
        """
        if len(images) != len(labels):
            raise ValueError(f"got {len(images)} images but {len(labels)} labels")
        if batch_size is None:
            batch_size = 64 if self.device.type == "cuda" else 8
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = self.config.num_classes
        samples = []
        for i, (im, lab) in enumerate(zip(images, labels, strict=True)):
            img_t, lab_t = image_to_tensor(im, f"images[{i}]"), label_to_tensor(lab, f"labels[{i}]")
            if tuple(img_t.shape[-2:]) != tuple(lab_t.shape):
                raise ValueError(
                    f"images[{i}] is {tuple(img_t.shape[-2:])} but labels[{i}] is {tuple(lab_t.shape)} "
                    f"(H, W); they must match"
                )
            if isinstance(missing, (list, tuple, np.ndarray, torch.Tensor)):  # one HxW map per label
                if len(missing) != len(labels):
                    raise ValueError(f"got {len(missing)} missing maps for {len(labels)} labels")
                miss = missing_to_tensor(missing[i], lab_t.shape, f"missing[{i}]") | (lab_t == missing_index)
            elif missing is None or missing == "background-first":
                miss = lab_t == missing_index
            else:
                raise ValueError(
                    f"missing must be None, a list of HxW boolean maps or 'background-first', got {missing!r}"
                )
            _check_label_ids(f"labels[{i}]", lab_t, miss, n, missing_index)
            lab_t = torch.where(miss, torch.full_like(lab_t, self.config.ignore_index), lab_t)
            if bool(miss.all()):
                warnings.warn(f"labels[{i}] has no known pixel: it is filled from the image alone", stacklevel=2)
            samples.append((img_t, lab_t, miss))
        results: list = [None] * len(samples)
        groups: dict = {}
        for i, (_, lab_t, miss) in enumerate(samples):
            fraction = float(hidden_from_missing(miss.unsqueeze(0), self.config.grid)[0].float().mean())
            member = self.route(fraction)
            groups.setdefault((id(member), tuple(lab_t.shape)), (member, []))[1].append(i)
        for member, idx in groups.values():
            for s in range(0, len(idx), batch_size):
                chunk = idx[s : s + batch_size]
                done = member._complete_same_size(
                    [samples[i] for i in chunk], background_first=isinstance(missing, str)
                )
                for i, r in zip(chunk, done, strict=True):
                    results[i] = r
        outs = [label_like(c, lab) for (c, _), lab in zip(results, labels, strict=True)]
        if not return_confidence:
            return outs
        return outs, [confidence_like(p, lab) for (_, p), lab in zip(results, labels, strict=True)]

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


def _check_label_ids(name: str, label: torch.Tensor, missing: torch.Tensor, n: int, missing_index: int) -> None:
    """Refuse known ids outside ``[0, n)``; warn when the known ids look like another dataset's.

    The warning (``"<name> ..."``, so that ``complete_dataset`` files it under the label) fires when a
    model of ``n >= NARROW_MIN_CLASSES`` classes gets a label whose known pixels use at least
    ``NARROW_MIN_IDS`` distinct ids, all below ``n / 4``, filling at least half of ``0..max id``: what
    labels of a small dataset look like (e.g. CamVid's 11 classes on a 59-class model). Labels of the
    model's own dataset rarely do: one image holds few classes (VOC), or spreads them over the id range
    (ADE20K, CCP). Costs one ``bincount`` of the label, only on such models."""
    bad = (label != missing_index) & ~missing & ((label < 0) | (label >= n))
    if bad.any():
        vals = sorted(set(label[bad].unique().tolist()))[:5]
        raise ValueError(
            f"{name}: {int(bad.sum())} pixels have ids {vals} outside [0, {n}) that are "
            f"not the missing index {missing_index}; mark them missing or remap them"
        )
    if n < NARROW_MIN_CLASSES:
        return
    ids = torch.bincount(label[~missing].flatten(), minlength=n).nonzero().flatten().tolist()
    if len(ids) >= NARROW_MIN_IDS and ids[-1] < n / 4 and 2 * len(ids) >= ids[-1] + 1:
        warnings.warn(
            f"{name} uses only class ids {_id_ranges(ids)}, all in the lowest quarter of this model's {n} "
            f"classes: the model may be the wrong one for these labels (of a dataset of about {ids[-1] + 1} "
            "classes?)",
            stacklevel=3,
        )


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
