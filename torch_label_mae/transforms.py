"""``CompleteLabels``: a torchvision-style joint transform that completes the target of each sample."""

from __future__ import annotations

import os

import torch
from torch import nn

from . import hub
from .hub import DEFAULT_MODEL
from .label_sets import load_label_set, resolve_indices


class CompleteLabels(nn.Module):
    """Joint transform ``(image, target) -> (image, completed_target)``.

    Pixels of ``target`` equal to ``missing_index`` are filled by a :class:`LabelCompleter`; the image
    is returned untouched and the target keeps its type (PIL 'P' keeps its palette, ``tv_tensors.Mask``
    stays a Mask). ``void_index``: the dataset's own ignore label, kept as it is (never filled, unknown
    to the model); it must differ from ``missing_index``. ``colors``: a colour table for RGB targets
    (see :mod:`torch_label_mae.colors`); they come back as RGB in the table's colours.

    ``missing_index``, ``void_index`` and ``colors`` left at None take the completer's conventions at
    each call (:meth:`LabelCompleter.conventions`): a dataset preset's (``CompleteLabels("voc-m0.5")``
    keeps VOC's 255 borders and fills the pixels marked 254; padding of a ``RandomCrop(fill={Mask: 255})``
    before it stays 255 too), else holes 255, no void and no table. With another completer, for Pascal
    VOC: ``CompleteLabels(model, void_index=255, missing_index=254)``.

    Use it as ``VOCSegmentation(..., transforms=CompleteLabels("voc-m0.5"))`` (VOC's conventions; the
    default ``any-m0.5`` would fill VOC's 255 borders as holes), inside ``transforms.v2.Compose`` (also on
    one dict sample holding a ``tv_tensors.Mask``), or on a dataset wrapped with
    ``wrap_dataset_for_transforms_v2``.

    ``completer`` is a registered name / folder / repo id (loaded lazily, on first use, in the process
    that uses it: until then the transform pickles without weights, so DataLoader workers load their own
    copy; once loaded, a copy or a worker gets it as it is, with any change made to it, as a forked worker
    does) or a ready :class:`LabelCompleter` (moved to ``device`` when one is given).
    """

    def __init__(
        self,
        completer=DEFAULT_MODEL,
        missing_index: int | None = None,
        device=None,
        *,
        void_index: int | None = None,
        colors=None,
    ):
        super().__init__()
        from .colors import load_colors
        from .inputs import check_indices

        self.missing_index, self.void_index = missing_index, void_index
        self.colors = load_colors(colors)
        self.device = device
        if isinstance(completer, os.PathLike):  # a folder given as a Path
            completer = os.fspath(completer)
        self._spec = completer if isinstance(completer, str) else None
        self._completer = None if isinstance(completer, str) else completer
        if self._spec is None and not hasattr(completer, "complete"):
            raise TypeError(f"completer must be a model name or a LabelCompleter, got {type(completer).__name__}")
        if self._completer is not None and device is not None:
            from .completer import resolve_device

            self._completer = self._completer.to(resolve_device(device))
        # conflicts with the completer's conventions as known now (its label set); the class range at each call
        check_indices(*resolve_indices(self._label_set(), missing_index, void_index), n=0)

    def _label_set(self):
        """The completer's label set: a loaded one's, else that of the registered name (or family), else None."""
        if self._completer is not None:
            return getattr(self._completer, "label_set", None)
        names = hub.names_for(self._spec)
        return load_label_set(hub.REGISTRY[names[0]].label_set) if names else None

    @property
    def completer(self):
        if self._completer is None:
            from .completer import LabelCompleter

            self._completer = LabelCompleter.from_pretrained(self._spec, device=self.device)
        return self._completer

    def forward(self, image, target):
        if target is None:
            return image, target
        if isinstance(target, dict):  # v2 wrapped datasets may carry a dict target
            raise TypeError("CompleteLabels expects the segmentation mask as target, got a dict")
        return image, self.completer.complete(
            image, target, missing_index=self.missing_index, void_index=self.void_index, colors=self.colors
        )

    def __call__(self, *inputs):
        """``(image, target)`` -> ``(image, completed)``, as datasets call ``transforms(image, target)``; or
        one sample, as ``v2.Compose`` passes it on (a dict or sequence holding one ``tv_tensors.Mask``, the
        target, and an image: the first PIL image or ``tv_tensors.Image``, else the first plain tensor), the same
        structure back with the mask completed."""
        with torch.no_grad():  # not inference_mode: later transforms may edit the target in place
            if len(inputs) == 2:
                return self.forward(*inputs)
            if len(inputs) != 1:
                raise TypeError(f"CompleteLabels takes (image, target) or one sample, got {len(inputs)} arguments")
            if isinstance(inputs[0], (dict, list, tuple)):
                return self._complete_sample(inputs[0])
            return self.forward(inputs[0], None)  # an image alone: (image, None), nothing to complete

    def _complete_sample(self, sample):
        from PIL import Image
        from torch.utils._pytree import tree_flatten, tree_unflatten
        from torchvision import tv_tensors

        leaves, spec = tree_flatten(sample)
        masks = [i for i, x in enumerate(leaves) if isinstance(x, tv_tensors.Mask)]
        if not masks and isinstance(sample, (list, tuple)) and len(sample) == 2:
            return type(sample)(self.forward(*sample))  # (image, target) as one tuple
        if len(masks) != 1:
            raise TypeError(
                f"CompleteLabels: a sample must hold exactly one tv_tensors.Mask (the target), found {len(masks)}; "
                "wrap the target with tv_tensors.Mask or call transforms(image, target)"
            )
        images = [i for i, x in enumerate(leaves) if isinstance(x, (Image.Image, tv_tensors.Image))]
        images = images or [i for i, x in enumerate(leaves) if type(x) is torch.Tensor]  # as v2: a plain tensor then
        if not images:
            raise TypeError("CompleteLabels: the sample holds a tv_tensors.Mask but no image to complete it from")
        _, leaves[masks[0]] = self.forward(leaves[images[0]], leaves[masks[0]])
        return tree_unflatten(leaves, spec)

    def __repr__(self) -> str:  # nn.Module's would print a loaded completer's whole model
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self) -> str:
        """The arguments; indices left at None show the completer's conventions as known now."""
        missing, void = resolve_indices(self._label_set(), self.missing_index, self.void_index)
        args = [f"completer={self._spec or type(self._completer).__name__!r}"]
        given = (("missing_index", self.missing_index, missing), ("void_index", self.void_index, void))
        for what, arg, value in given:
            if arg is not None or value is not None:
                args.append(f"{what}={value}" + (" (the completer's)" if arg is None else ""))
        if self.colors is not None:
            args.append(f"colors={self.colors.name!r}")
        return ", ".join(args)
