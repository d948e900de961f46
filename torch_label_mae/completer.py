"""LabelCompleter: the product surface. Loads a model (one, or one per mask ratio, routed), takes the
caller's images and labels in any supported type, completes them in same-size batches
(:mod:`torch_label_mae.inference`) and gives them back in the caller's types."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from . import hub, routing
from .config import LMAEConfig
from .conventions import LabelConventions
from .hub import save_hub_files
from .inference import autocast_dtype, complete_samples
from .inputs import prepare
from .io import batch_size_for, confidence_like
from .model import LMAE

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


class LabelCompleter(
    nn.Module,
    LabelConventions,
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
        config = LMAEConfig.from_dict(config) if isinstance(config, dict) else config
        if not isinstance(config, LMAEConfig):
            raise TypeError(f"config must be an LMAEConfig or a dict, got {type(config).__name__}")
        self.config = config
        self.model = LMAE(config).float()  # float32 whatever torch's default dtype
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
        return autocast_dtype(self.precision, self.device)

    # -- hub ---------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory, **kwargs):
        """``PyTorchModelHubMixin.save_pretrained``; failed or interrupted, it leaves a folder that loads."""
        _one_model(self)
        with hub.config_kept(save_directory, self.model.config):
            return super().save_pretrained(save_directory, **kwargs)

    def _save_pretrained(self, save_directory: Path) -> None:
        save_hub_files(self.model, save_directory)
        hub.save_label_set(self.label_set, save_directory)

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
        routed per sample), local folder or Hub repo id. A dataset preset (``voc-m0.5``) loads the
        class-agnostic ``any-m0.5`` and sets :attr:`label_set`. Loading is strict (missing or unexpected keys
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
        hub_kw = dict(cache_dir=cache_dir, local_files_only=local_files_only, token=token, endpoint=endpoint)
        hub_kw.update(force_download=force_download, timeout=timeout)
        folder = hub.local_folder(name)
        group = [name] if folder is not None else hub.names_for(name)
        if len(group) > 1 or (group and group[0] != name):
            kw = dict(device=device, precision=precision, revision=revision, **hub_kw)
            return cls.routed([cls.from_pretrained(n, **kw) for n in group])
        entry = hub.REGISTRY.get(name) if folder is None else None
        completer = cls.from_folder(hub.resolve(folder or name, revision=revision, **hub_kw), device, precision)
        if entry is not None:  # registered: its entry's label set (a Hub repo's or a folder's: its own file)
            completer.pretrained_name, completer.label_set = name, entry.label_set
        return completer

    @classmethod
    def from_folder(cls, folder, device=None, precision: str = "auto") -> LabelCompleter:
        """Load ``config.json`` + ``model.safetensors`` (+ a saved ``label_set.json``) from a local folder (strict).

        Checked in this order, each failure a :class:`hub.CorruptWeightsError` naming the file: the config
        (size, JSON, every field in range; :meth:`LMAEConfig.validate`), the weights file's header (every
        tensor floating point, the keys and shapes the config implies; nothing allocated yet), the
        tensors' values (finite: no NaN or inf); only then is the model built and loaded."""
        config, state = hub.load_folder(folder)
        completer = cls(config)
        completer.load_state_dict(state)  # keys and shapes were checked against the config already
        completer.precision, completer.label_set = precision, hub.load_label_set_file(folder, config)
        return completer.to(resolve_device(device)).eval()

    @classmethod
    def routed(cls, members: Sequence[LabelCompleter]) -> LabelCompleter:
        """Multi-ratio completer: each sample goes to the member whose ``mask_ratio`` is nearest the
        fraction of patches it hides. The returned object is the member nearest 0.5 with ``routes``
        set; the members are loaded on the same device (``from_pretrained(..., device=)``): moving the
        returned module with ``.to()`` moves that member only."""
        members = routing.check_members(members)
        head = routing.head(members)
        head.routes = members
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
        return routing.route(self.routes, hidden_fraction) if self.routes else self

    # -- completion --------------------------------------------------------------------------------
    def complete(
        self,
        image,
        label,
        missing=None,
        *,
        missing_index: int | None = None,
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
        missing_index: int | None = None,
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
        back as RGB in the table's colours; other labels are class ids as usual. ``missing_index``,
        ``void_index`` and ``colors`` not given take the :attr:`label_set`'s (see :meth:`conventions`),
        else 255, no void and no table.

        Only missing pixels change: every other pixel comes back byte-identical, whatever its value;
        every filled value is a class id in ``[0, N)`` (its colour for RGB labels). Each output has its
        input label's type, size and dtype. With ``return_confidence`` also returns, per label, the
        probability of the chosen class per pixel (1 on pixels kept, 0 on holes left unfilled: docs/labels.md).
        """
        batch_size = batch_size_for(self.device, batch_size)
        maps = _check_batch_args(images, labels, missing)
        missing_index, void_index, table = self.conventions(missing_index, void_index, colors, not maps)
        samples, names = [], dict(label_set=self.label_set, model_name=self.pretrained_name)
        for i, (im, lab) in enumerate(zip(images, labels, strict=True)):  # a loop: warnings' stacklevel
            given = missing[i] if maps else None
            samples.append(prepare(i, im, lab, given, missing_index, void_index, table, self.config, **names))
        results: list = [None] * len(samples)
        for member, idx in routing.groups(samples, self.route, self.config.grid).values():
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

    def audit(self, image, label, **kwargs):
        """Find the wrong pixels of one label (each patch predicted while hidden): an
        :class:`~torch_label_mae.audit.AuditResult`. Several: :func:`torch_label_mae.audit.audit_batch`."""
        from .audit import audit_batch

        return audit_batch(self, [image], [label], **kwargs)[0]

    def _complete_same_size(self, samples, background_first: bool = False):
        return complete_samples(self.model, samples, self.device, self.autocast_dtype(), background_first)

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


def with_correction(completer: LabelCompleter, scale: float) -> LabelCompleter:
    """A copy of ``completer`` whose learned correction (the head's output, added to the label prior) is
    multiplied by ``scale``: 0 leaves the label prior alone (the model's own classical baseline, at the
    prior's cost), 1 the same model. Needs a model with a label prior; routed members are scaled alike."""
    if completer.config.prior is None:
        raise ValueError("with_correction needs a model with a label prior: without one, the head is the model")
    out = copy.deepcopy(completer)
    with torch.no_grad():
        for p in (p for member in out.routes or [out] for p in member.model.head.parameters()):
            p.mul_(scale)
    return out


def _one_model(completer: LabelCompleter) -> None:
    """Refuse to save a routed completer of several ratios: a folder holds one model, the others' would be lost."""
    if len(completer.routes) > 1:
        raise ValueError(
            f"a routed completer of {len(completer.routes)} ratios is no one folder: save each member's, "
            "torch_label_mae.hub.save_hub_files(member.model, folder) for member in .routes"
        )


def _check_batch_args(images, labels, missing) -> bool:
    """Refuse mismatched lengths and a ``missing`` that is none of None, maps and
    ``"background-first"``; returns whether ``missing`` holds one map per label."""
    if len(images) != len(labels):
        raise ValueError(f"got {len(images)} images but {len(labels)} labels")
    maps = isinstance(missing, (list, tuple, np.ndarray, torch.Tensor))  # one HxW map per label
    if not maps and missing is not None and not (isinstance(missing, str) and missing == "background-first"):
        raise ValueError(f"missing must be None, a list of HxW boolean maps or 'background-first', got {missing!r}")
    if maps and len(missing) != len(labels):
        raise ValueError(f"got {len(missing)} missing maps for {len(labels)} labels")
    nones = [i for i, m in enumerate(missing) if m is None] if maps else []
    if nones:  # it would fall back to missing_index, unchecked against void_index
        raise ValueError(f"missing[{nones[0]}] is None: give every label a map (all False: none missing) or none")
    return maps


def resolve_device(device=None) -> torch.device:
    """``device`` or CUDA when available, else CPU. ``ValueError`` for a CUDA device when torch sees none."""
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r}: no CUDA GPU is available to torch here; use device='cpu'")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
