"""The label prior, behind one interface: what an L-MAE with ``config.prior`` starts from on the
unknown pixels, and how it enters the logits.

``make_prior(config)`` gives a callable, :class:`NearestFill` (hard: nearest-label fill) or
:class:`RandomWalk` (soft: the random walker's class probabilities); calling it on a label (and the
image) gives a :class:`LabelPrior`, which the model embeds into the hidden tokens beside IPS and adds,
times its learned scale, to the logits (:meth:`LabelPrior.add_to`). The algorithms are in
:mod:`torch_label_mae.propagation`; the options in :mod:`torch_label_mae.config`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .combiner import PriorCombiner
from .config import LMAEConfig, RandomWalkPrior
from .propagation import most_likely_class, nearest_fill, present_classes, random_walk_probabilities
from .threads import finish, run_each, torch_threads, worker_pool


class LabelPrior(NamedTuple):
    """The label prior of a batch. ``classes [B, H, W]``: its class per pixel (``ignore_index`` where it
    has none); IPS embeds it. ``prob``: for a soft prior (random walk), the probabilities ``[B, K, H, W]``
    of the classes ``index [B, K, 1, 1]``; they, scaled, are added to the logits. A hard prior
    (``prob=None``, nearest fill) adds the scale at ``classes`` instead."""

    classes: torch.Tensor
    prob: torch.Tensor | None = None
    index: torch.Tensor | None = None

    @classmethod
    def of(cls, prior: LabelPrior | torch.Tensor) -> LabelPrior:
        """``prior`` as a :class:`LabelPrior` (a class map ``[B, H, W]`` is a hard prior)."""
        return cls(prior) if isinstance(prior, torch.Tensor) else prior

    def rows(self, hidden: torch.Tensor, patchify) -> LabelPrior:
        """The prior of the hidden patches, laid out as the model's hidden rows: classes ``[M, p * p]`` and,
        when soft, prob ``[M, p * p, K]`` with index ``[M, 1, K]``. ``patchify``: the model's."""
        classes = patchify(self.classes.unsqueeze(1))[hidden]  # [M, p*p]
        if self.prob is None:
            return LabelPrior(classes)
        k = self.prob.shape[1]
        prob = patchify(self.prob)[hidden].unflatten(-1, (k, -1)).transpose(1, 2)  # [M, p*p, K]
        index = self.index.view(-1, 1, k).expand(-1, hidden.shape[1], -1)[hidden].unsqueeze(1)  # [M, 1, K]
        return LabelPrior(classes, prob, index)

    def add_to(self, logits: torch.Tensor, scale: torch.Tensor, inplace: bool = False, dim: int = 1) -> torch.Tensor:
        """``logits + scale * P`` with classes along ``dim`` (``[B, N, H, W]`` by default), where ``P`` is
        the one-hot of a hard prior's classes (nothing where it has none) or a soft prior's probabilities,
        without building a dense ``P``: a scatter-add at the prior's classes. The prior is laid out as
        ``logits`` less the class axis. ``inplace=True`` adds into ``logits`` itself (for callers that own it)."""
        scale = scale.to(logits.dtype)
        add = logits.scatter_add_ if inplace else logits.scatter_add
        if self.prob is not None:
            prob = self.prob.to(logits.dtype)
            return add(dim, self.index.expand_as(prob), scale * prob)
        n = logits.shape[dim]
        known = (self.classes >= 0) & (self.classes < n)  # [B, H, W]
        idx = torch.where(known, self.classes, torch.zeros_like(self.classes)).long().unsqueeze(dim)  # [B, 1, H, W]
        return add(dim, idx, scale * known.unsqueeze(dim).to(logits.dtype))


class NearestFill:
    """Hard prior: every unknown pixel takes the class of the nearest known pixel."""

    def __init__(self, config: LMAEConfig):
        self.config = config  # its prior section is read at each call

    def known(self, label: torch.Tensor) -> torch.Tensor:
        """Every labelled pixel: a class id, not ``ignore_index``."""
        c = self.config
        return (label != c.ignore_index) & (label >= 0) & (label < c.num_classes)

    def __call__(self, label: torch.Tensor, known=None, image=None) -> LabelPrior:
        """The prior of ``label [B, H, W]``'s unknown pixels, at any size. ``known`` defaults to every
        labelled pixel (including the known parts of hidden patches); ``image`` is not used."""
        known = self.known(label) if known is None else known
        return LabelPrior(nearest_fill(label, known, self.config.ignore_index))


class RandomWalk(NearestFill):
    """Soft prior: the random walker's class probabilities (:mod:`torch_label_mae.propagation`), with
    the graph and solver of its config section, refined by ``combiner`` (the model's
    :class:`~torch_label_mae.combiner.PriorCombiner`) when given and the section's ``combiner`` is not 0.
    Needs the image at the label's size."""

    def __init__(self, config: LMAEConfig, combiner: PriorCombiner | None = None):
        super().__init__(config)
        self.combiner = combiner

    def __call__(self, label: torch.Tensor, known=None, image=None) -> LabelPrior:
        if image is None or tuple(image.shape[-2:]) != tuple(label.shape[-2:]):
            got = None if image is None else tuple(image.shape)
            raise ValueError(
                f"prior kind 'random_walk' needs the image at the label's size {tuple(label.shape)}, got {got}"
            )
        known = self.known(label) if known is None else known
        n = self.config.num_classes
        if self.combiner is None or not self.config.prior.combiner:
            prob, index = random_walk_probabilities(image, label, known, n, **self._walk())  # [B, K, H, W], [B, K]
        else:
            index, valid = present_classes(label, known, n)  # [B, K]: the walk's classes
            threads = torch.get_num_threads()
            on_cpu = image.device.type == "cpu" and self.combiner.mlp[0].weight.device.type == "cpu"
            if label.shape[0] > 1 and threads > 1 and on_cpu:
                prob = self._combined_per_sample(image, label, known, index, valid, threads)
            else:
                prob = self._combined(image, label, known, index, valid)
        classes = most_likely_class(prob, index, known, self.config.ignore_index)
        return LabelPrior(classes, prob, index[:, :, None, None])

    def _walk(self, **kwargs) -> dict:
        """The walk's options from the config's prior section, and ``kwargs``."""
        s = self.config.prior
        return dict(beta=s.beta, sweeps=s.sweeps, solver=s.solver, connectivity=s.connectivity, color=s.color) | kwargs

    def _combined(self, image, label, known, index, valid) -> torch.Tensor:
        """The combined probabilities ``[B, K, H, W]`` of ``index [B, K]``: the combiner's contexts (they need
        no walk) computed on a second thread while the walk is solved. Both run torch's operators on one
        thread (with the caller's number each, they oversubscribed the cores), so the probabilities do not
        depend on that number; the walk's class solves and the refinement after them use the caller's."""
        inference = torch.is_inference_mode_enabled()  # thread-local: the thread takes the caller's mode
        on_cpu = [t.cpu() for t in (image, label, known, index, valid)]  # the thread touches no GPU stream
        threads = torch.get_num_threads()

        def contexts():
            with torch.inference_mode(inference), torch.no_grad(), torch_threads(1):
                return self.combiner.contexts(*on_cpu)

        with torch_threads(threads):  # after it, the caller's as the default
            pending = worker_pool("contexts", 1).submit(contexts)
            try:
                with torch_threads(1):
                    options = self._walk(threads=threads)
                    prob, _ = random_walk_probabilities(image, label, known, self.config.num_classes, **options)
            finally:
                finish([pending])  # it has ended, whatever the walk did
            ctx = pending.result()
        with torch.autocast(image.device.type, enabled=False):
            return self.combiner.refine(image, label, known, prob, index, valid, ctx)

    def _combined_per_sample(self, image, label, known, index, valid, threads: int) -> torch.Tensor:
        """:meth:`_combined` of a batch on the CPU (the combiner's weights too): each sample's walk and contexts
        on a thread of its own (torch's operators on one thread, the class solves on its share of
        ``threads``), then its refinement on the same thread (on its share), so that every worker stays busy
        to the end: the same probabilities as each sample alone up to float32 rounding (the samples do not
        interact; a sample alone is refined on the caller's threads)."""
        inference = torch.is_inference_mode_enabled()  # thread-local: the workers take the caller's mode
        prob = torch.zeros(label.shape[0], index.shape[1], *label.shape[-2:], dtype=torch.float32)  # [B, K, H, W]
        workers = min(threads, label.shape[0])
        share = max(1, threads // workers)  # the threads of a sample's class solves

        def one(i: int) -> None:
            k = max(int(valid[i].sum()), 1)
            args = image[i : i + 1], label[i : i + 1], known[i : i + 1]
            classes = index[i : i + 1, :k], valid[i : i + 1, :k]
            with torch.inference_mode(inference), torch.no_grad(), torch_threads(1):
                walk = random_walk_probabilities(*args, self.config.num_classes, **self._walk(threads=share))[0]
                contexts = self.combiner.contexts(*args, *classes)
                with torch.autocast("cpu", enabled=False), torch_threads(share):
                    prob[i, :k] = self.combiner.refine(*args, walk, *classes, contexts)[0]

        with torch_threads(threads):  # after it, the caller's as the default
            run_each("samples", workers, one, range(label.shape[0]))
        return prob


def make_prior(config: LMAEConfig, combiner: PriorCombiner | None = None) -> NearestFill | None:
    """The prior ``config.prior`` describes (None: no prior), a random walk refined by ``combiner`` when
    given. It reads its section at each call, so a completer's ``config.prior`` may be replaced (e.g. fewer
    sweeps, or ``combiner=0`` for the walk alone) without rebuilding the model."""
    if config.prior is None:
        return None
    if isinstance(config.prior, RandomWalkPrior):
        return RandomWalk(config, combiner)
    return NearestFill(config)
