"""Fit a completer to a dataset on its own broken labels, before completing it (``label-mae fit``).

L-MAE's training task needs no ground truth beyond the labels a user already has: hide some *known*
patches and reconstruct them. :func:`fit_dataset` starts from a model (by default the class-agnostic
``any-m0.5``, given the dataset's classes by :func:`torch_label_mae.train.remap_classes`, so that it
starts exactly at its label prior) and trains it on the known pixels of the dataset's labels only: the
real holes are never targets. Its training holes are shaped like the holes it measures in the labels
(:class:`HoleShapes`); it runs within a time budget, checkpointed and resumable (``fit-run/``).

A share of the known pixels of up to ``val_images`` labels is held out (blocks of the holes' width,
never trained on). On them, at the labels' own resolution, the fitted model, the model it started from
and scikit-image's random walker (beta 2000, solved exactly by
:func:`torch_label_mae.propagation.random_walk`) are scored, and the fitted model is kept only where it
beats the start with ``KEEP_CONFIDENCE`` (a bootstrap over the held-out labels).
``OUT`` is then a normal model folder: ``config.json`` + ``model.safetensors`` + ``README.md`` (the
model card: what it was fitted on and what it measured), with ``fit.json`` (the same figures).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from .colors import MISSING_ID, ColorTable, color_label_to_array, is_color_label, load_colors
from .data import DatasetInfo, degrade, list_pairs, read_image, read_label, seed_for
from .evaluate import completer_method, walk_method
from .hub import HUB_FILES, model_folder, save_hub_files, save_label_set, weights_digest
from .io import atomic_write, resize_image, resize_label
from .label_sets import LabelSet
from .masking import PAPER_MIX, hidden_from_missing, hidden_to_pixels
from .metrics import confusion_matrix, gain_bound, iou_parts, mean_iou, pixel_accuracy
from .outputs import OutputLock, check_outputs, read_json_object, remove_stale_temp_files
from .threads import torch_threads

KEEP_CONFIDENCE = 0.95  # the fitted model is kept where its held-out gain over the start is above 0 this surely
UNKNOWN = 255  # how the fit's labels mark holes, void and held-out pixels (the model's ignore_index)
HOLE = 254  # how hide_unknown's training labels mark holes and held-out pixels apart from void
DEFAULT_WIDTH = 32  # hole width (label pixels) assumed when the labels have no holes
RUN_DIR = "fit-run"  # OUT/fit-run: the training checkpoint and log
# settings that fit-args.json of earlier fits lacks
LATER_ARGS = dict(agnostic=False, hide_unknown=False, hole_index=None)


@dataclass(frozen=True)
class HoleShapes:
    """The holes of a dataset's labels: ``fraction``, the mean share of a label's pixels that are holes;
    ``width``, the median width of a hole (twice the largest distance from a hole pixel to its edge:
    a 32 x 32 block and a 32 px wide strip are both 32 wide); ``widths``, its 25th and 75th
    percentiles; ``count``, the holes measured (0 when the labels have none); ``patches``, the mean
    share of the model's patches that completion hides (those that touch a hole)."""

    fraction: float
    width: float
    widths: tuple[float, float]
    count: int
    patches: float

    @classmethod
    def measure(cls, holes: list[torch.Tensor], grid: tuple[int, int] | None = None) -> HoleShapes:
        """From ``holes``: one bool ``[H, W]`` map per label (connected holes count as one, 8-connected);
        ``patches`` on the model's ``grid`` of patches (None: taken equal to ``fraction``)."""
        widths, fractions = [], []
        for hole in holes:
            arr = np.pad(hole.numpy(), 1)  # the image edge bounds a hole as its known pixels do
            fractions.append(float(hole.float().mean()) if hole.numel() else 0.0)
            parts, n = ndimage.label(arr, structure=np.ones((3, 3)))
            if n:
                edt = ndimage.distance_transform_edt(arr)
                widths.append(2 * np.asarray(ndimage.maximum(edt, parts, index=np.arange(1, n + 1))))
        fraction = float(np.mean(fractions)) if fractions else 0.0
        patches = fraction
        if grid is not None and holes:
            patches = float(np.mean([float(hidden_from_missing(h[None], grid).float().mean()) for h in holes]))
        if not widths:
            return cls(fraction, DEFAULT_WIDTH, (DEFAULT_WIDTH,) * 2, 0, patches)
        q25, q50, q75 = np.percentile(np.concatenate(widths), [25, 50, 75])
        return cls(fraction, float(q50), (float(q25), float(q75)), int(sum(w.size for w in widths)), patches)

    def training_holes(self, label_side: float, model_side: int, hide_unknown: bool = False) -> dict:
        """The :class:`~torch_label_mae.train.TrainConfig` settings that imitate these holes at the
        model's size (labels of side ``label_side`` cropped by the mean of ``TrainConfig.crop_scale``,
        then resized to ``model_side``): half the samples get blocks of the holes' widths at their fraction, half the
        paper's patch masking at that ratio. With ``hide_unknown`` (the holes' own patches hidden too,
        so less context is left than at completion) and holes on the patch grid (completion hides
        fewer than 1.5 times as many patches as there are hole pixels): at half that ratio. No holes
        measured: the paper's masking at 0.5."""
        from .train import TrainConfig

        if self.count == 0:
            return {}
        scale = model_side / (float(np.mean(TrainConfig.crop_scale)) * label_side)
        lo, hi = (int(np.clip(round(w * scale), 4, model_side // 2)) for w in self.widths)
        ratio = float(np.clip(self.fraction, 0.1, 0.75))
        if hide_unknown and self.patches < 1.5 * self.fraction:  # holes on the patch grid (docs/fit.md)
            ratio /= 2
        return dict(mask_ratio=ratio, block_holes=0.5, block_range=(lo, max(lo, hi)))


@dataclass
class Sample:
    """One label of the dataset as the fit reads it: ``image uint8 [3, H, W]``, ``label uint8 [H, W]``
    (class ids; :data:`UNKNOWN` on holes, void and held-out pixels), ``holes`` (the label's own holes),
    ``held`` (the held-out pixels, known in ``truth``) and ``truth`` (the label before holding out)."""

    name: str
    image: torch.Tensor
    label: torch.Tensor
    holes: torch.Tensor
    held: torch.Tensor
    truth: torch.Tensor


def read_ids(
    path: Path, missing_index: int, void_index: int | None, colors: ColorTable | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A label file -> ``(ids int64 [H, W] with UNKNOWN on holes and void, holes bool [H, W])``. Colour
    labels go through the table ``colors``; class ids must be below :data:`UNKNOWN`."""
    with Image.open(path) as im:
        if is_color_label(im):
            if colors is None:
                raise ValueError(
                    f"{path}: a colour label; pass colors= (a colour table: --colors NAME|FILE) to read it"
                )
            ids = torch.from_numpy(colors.decode(color_label_to_array(im, str(path)), str(path)))
            holes = ids == MISSING_ID
            return torch.where(ids < 0, UNKNOWN, ids), holes
        if colors is not None:  # its holes would be read as missing_index, not as the table's missing colour
            raise ValueError(f"{path}: a label of class ids (mode {im.mode}), not of colours: drop colors= (--colors)")
    ids = read_label(path)
    holes = ids == missing_index
    unknown = holes | (ids == void_index) if void_index is not None else holes
    bad = ids[~unknown]
    if bad.numel() and (int(bad.min()) < 0 or int(bad.max()) >= UNKNOWN):
        top = int(bad.max())
        what = ("mark the dataset's own ignore label as void (void_index)" if top <= 255
                else "a fit takes 8-bit labels: remap 16-bit ids to 0..254 first")  # fmt: skip
        raise ValueError(f"{path}: class ids must be in 0..{UNKNOWN - 1}, found {top}; {what}")
    return torch.where(unknown, UNKNOWN, ids), holes


def read_samples(
    images: str | Path, labels: str | Path, *, missing_index: int, void_index: int | None, colors: ColorTable | None
) -> list[Sample]:
    """Every pair of the two folders as a :class:`Sample` (nothing held out yet); any unpaired or
    ambiguous file, unreadable file or size mismatch is an error that names it."""
    items = list_pairs(images, labels)
    bad = [it.problem for it in items if it.problem]
    if bad:
        raise ValueError(f"{len(bad)} problem(s) with the input folders, first: {bad[0]}")
    if not items:
        raise ValueError(f"{labels}: no label PNGs")
    out = []
    for it in items:
        image = read_image(it.image)
        truth, holes = read_ids(it.label, missing_index, void_index, colors)
        if tuple(image.shape[-2:]) != tuple(truth.shape):
            raise ValueError(f"{it.label}: label {tuple(truth.shape)} and image {tuple(image.shape[-2:])} differ")
        out.append(Sample(it.name, image, truth.to(torch.uint8), holes, torch.zeros_like(holes), truth))
    return out


def hold_out(samples: list[Sample], fraction: float, val_images: int, width: int, seed: int) -> None:
    """On ``val_images`` of ``samples``, evenly spread, hide ``fraction`` of the blocks of side ``width``
    (seeded per label name): their known pixels become ``held`` and unknown in ``label``."""
    n = len(samples)
    chosen = set(np.linspace(0, n - 1, min(val_images, n)).round().astype(int).tolist()) if fraction > 0 else set()
    for i in chosen:
        s = samples[i]
        _, blocks = degrade(s.truth, fraction, width, seed=seed_for(s.name, seed), mode="blocks")
        known = s.truth != UNKNOWN
        if not (known & ~blocks).any():  # it would leave nothing to complete from: hold nothing out here
            continue
        s.held = blocks & known
        s.label = torch.where(s.held, UNKNOWN, s.truth).to(torch.uint8)


def score(method: Callable, samples: list[Sample], num_classes: int, batch_size: int = 8) -> dict:
    """PA-mIoU and accuracy of ``method`` (:mod:`torch_label_mae.evaluate`'s contract) on the held-out
    pixels of ``samples``, at the labels' own resolution (fractions), and its seconds; ``per_label``: each
    label's :func:`~torch_label_mae.metrics.iou_parts` (for :func:`choose`). The labels' own holes are
    missing too (hidden, as completion hides them), not scored."""
    total, t0, per_label = torch.zeros(num_classes, num_classes, dtype=torch.int64), time.perf_counter(), []
    held = [s for s in samples if s.held.any()]
    for i in range(0, len(held), batch_size):
        part = held[i : i + batch_size]
        missing = [s.held | s.holes for s in part]  # the holes are hidden too, as in the completion estimated
        preds = method([s.image.float() / 255 for s in part], [s.label.long() for s in part], missing)
        for s, pred in zip(part, preds, strict=True):
            cm = confusion_matrix(pred.cpu(), s.truth, num_classes, pixel_mask=s.held)  # [N, N]: its held-out pixels
            total += cm
            per_label.append(iou_parts(cm).tolist())
    pixels = int(sum(int(s.held.sum()) for s in held))
    return dict(pa_miou=mean_iou(total), pa_pixel_acc=pixel_accuracy(total), images=len(held), pixels=pixels,
                seconds=time.perf_counter() - t0, per_label=per_label)  # fmt: skip


def choose(fitted: dict, zero_shot: dict | None) -> tuple[str, dict | None]:
    """The model to keep, ``"fitted"`` or ``"zero_shot"``, and the fitted model's held-out gain (``mean``,
    and ``low``: its bound at ``KEEP_CONFIDENCE``; None without a zero-shot score), from two :func:`score`
    results on the same pixels. The fitted model is kept where the bound is above 0: a gain of a few tenths
    on a few dozen labels is often the luck of the labels held out (``docs/fit.md``)."""
    if zero_shot is None:  # the start cannot take these labels
        return "fitted", None
    parts = [torch.tensor(r["per_label"], dtype=torch.float64) for r in (fitted, zero_shot)]  # [L, 3, N] each
    gain = dict(mean=fitted["pa_miou"] - zero_shot["pa_miou"], low=gain_bound(*parts, KEEP_CONFIDENCE))
    return ("fitted" if gain["low"] > 0 else "zero_shot"), gain


def pool_size(samples: list[Sample], config, seconds: float, share: float = 0.4, most: int = 8) -> int:
    """How many samples (crop + masks) per label to keep with their prior (``TrainConfig.mask_pool``): as
    many as fit in ``share`` of the training ``seconds`` at the measured cost of one prior (timed here
    on the first label at the model's size), between 1 and ``most``; 0 unless the model ``config`` has an
    exact random-walk prior (:func:`torch_label_mae.train.poolable`)."""
    from .combiner import PriorCombiner
    from .masking import random_masking
    from .prior import make_prior
    from .train import poolable

    if not poolable(config):
        return 0
    image = resize_image(samples[0].image[None], config.size)
    label = resize_label(samples[0].label[None].long(), config.size)
    hidden = hidden_to_pixels(random_masking(1, config.num_patches, 0.5), config.grid, config.patch_size)
    combiner = PriorCombiner.frozen(config.prior)  # its cost counts; weights do not
    t0 = time.perf_counter()
    make_prior(config, combiner)(torch.where(hidden, UNKNOWN, label), image=image)
    cost = time.perf_counter() - t0
    return int(np.clip(share * seconds / (len(samples) * cost), 1, most))


@contextlib.contextmanager
def _holding(out: Path, threads: int | None):
    """For the block: ``out``'s output lock (one fit at a time) and torch's threads set to ``threads`` (None:
    left as they are). After it the caller's threads, and no ``out`` folder made for the lock alone."""
    new = not out.exists()
    try:
        with OutputLock(out), torch_threads(threads or None):
            yield
    finally:
        if new and out.is_dir() and not any(out.iterdir()):  # refused: nothing left behind
            out.rmdir()


def _check(minutes, val_fraction, val_images, batch_size, missing_index, void_index, colors) -> None:
    from .train import check_default_dtype

    check_default_dtype("fitting")
    if minutes is None or not 0 < minutes < math.inf:
        raise ValueError(f"minutes must be a finite number > 0, got {minutes!r}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if val_images < 1 or batch_size < 1:
        raise ValueError(f"val_images and batch_size must be >= 1, got {val_images} and {batch_size}")
    for what, v in (("missing_index", missing_index), ("void_index", void_index)):
        if v is not None and not 0 <= v <= 255:
            raise ValueError(f"{what} must be in 0..255, got {v}")
    if colors is not None and void_index is not None:
        raise ValueError("void_index: with colors, void is the colour table's void colours")
    if void_index is not None and void_index == missing_index:
        raise ValueError(f"void_index and missing_index are both {void_index}: holes and void must differ")


def _check_out(out: Path) -> None:
    """Refuse an ``out`` that holds other files than a fit's or a model folder's: the fit writes its model
    files there (config.json, model.safetensors, README.md) and would replace them."""
    if not out.is_dir():
        return
    own = {RUN_DIR, "fit.json", *HUB_FILES}
    names = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    mine = (out / RUN_DIR).is_dir() or (out / "fit.json").is_file() or model_folder(out) is not None
    if names and not (mine and names <= own):
        found = sorted(names - own) or sorted(names)
        more = "..." if len(found) > 3 else ""
        raise ValueError(
            f"{out}: out holds other files ({', '.join(found[:3])}{more}), no fit's; "
            f"a fit writes {', '.join(sorted(own - {RUN_DIR}))} there: choose an empty or new folder"
        )


MARKERS = (254, 255)  # the values labels mark holes and void with (this library's, VOC's, CamVid's)


def _check_ids(samples: list[Sample], classes: int = 0) -> int:
    """The largest class id of the labels' known pixels. ``ValueError`` for an id of :data:`MARKERS` without
    the id below it (classes 0..10 and 254: a hole or void marker the arguments did not name, which would
    become a class), unless a start model of ``classes`` classes has it."""
    ids = torch.unique(torch.cat([s.truth[s.truth != UNKNOWN] for s in samples]))
    if ids.numel() == 0:
        raise ValueError("no label has a known pixel: nothing to fit on")
    present = set(ids.tolist())
    for m in MARKERS:
        if m in present and m - 1 not in present and m >= classes:
            raise ValueError(
                f"the labels hold id {m} but not {m - 1}: if {m} marks holes or void, say so with "
                f"missing_index={m} (holes) or void_index={m} (the dataset's own void); class ids run 0..N-1"
            )
    return int(ids[-1])


def _data(samples: list[Sample], name: str, completer, holes: bool = False):
    """The :class:`~torch_label_mae.train.TrainData` of the fit: every label's known pixels; ``holes``: the
    holes and held-out pixels marked :data:`HOLE` apart from void (``TrainConfig.hole_index``). The classes:
    ``0..`` the largest id, or the start model's (``completer``) when it has classes and as many or more
    (then its names and background class too). A start's label set must hold the labels' ids (it is kept)."""
    from .train import TrainData

    start, label_set = completer.config, completer.label_set
    top = _check_ids(samples, 0 if start.class_agnostic else start.num_classes)
    if label_set is not None and top >= label_set.num_classes:
        raise ValueError(
            f"the labels hold ids up to {top}, but the start's label set {label_set.name!r} has "
            f"{label_set.num_classes} classes: start from a model without one (e.g. any-m0.5)"
        )
    if holes and top >= HOLE:
        raise ValueError(f"hide_unknown: class ids must be below {HOLE} (it marks the holes), found {top}")
    info = DatasetInfo(name, [f"class {i}" for i in range(top + 1)], ignore_index=UNKNOWN)
    if not start.class_agnostic and start.num_classes > top:
        names = start.class_names or [f"class {i}" for i in range(start.num_classes)]
        info = DatasetInfo(name, list(names), UNKNOWN, start.background_index)
    if holes:
        return TrainData(info, [(s.image, s.label.masked_fill(s.holes | s.held, HOLE)) for s in samples])
    return TrainData(info, [(s.image, s.label) for s in samples])


def fit_dataset(
    images: str | Path,
    labels: str | Path,
    out: str | Path,
    *,
    init: str = "any-m0.5",
    minutes: float = 10.0,
    missing_index: int = 255,
    void_index: int | None = None,
    colors=None,
    val_fraction: float = 0.1,
    val_images: int = 32,
    batch_size: int = 16,
    seed: int = 0,
    resume: bool = False,
    max_steps: int | None = None,
    threads: int | None = None,
    progress: bool = True,
    agnostic: bool = False,
    hide_unknown: bool = False,
) -> dict:
    """Fit the model ``init`` to the labels of ``labels`` (images in ``images``) for ``minutes`` of training;
    write the fitted model where it surely beats the start on the held-out pixels (:func:`choose`), else the
    start, to ``out`` (a model folder for :meth:`LabelCompleter.from_pretrained`, ``label-mae complete``).

    Holes are the pixels equal to ``missing_index`` (or of the colour table's missing colour, with
    ``colors``); ``void_index`` pixels are never trained on. Returns the report also written to
    ``out/fit.json``: the hole shapes, the training settings and steps, the held-out scores of ``fitted``,
    ``zero_shot`` and ``random_walker``, the fitted model's ``gain`` and the model ``kept``.
    ``resume=True`` continues a fit stopped by anything (the budget counts over resumes); without it an
    existing fit in ``out`` is refused. ``agnostic=True`` keeps a class-agnostic ``init`` so: it learns one
    correction for every class alike (slots drawn at random per sample, as it was trained), not a head per class, and
    the fitted model takes any ids. ``hide_unknown=True`` hides every patch that touches a hole or a
    held-out pixel in training, as completion hides the patches with holes; patches with void stay
    visible, as they do at completion (:meth:`HoleShapes.training_holes` may halve the masks' share;
    ``docs/fit.md``). Inputs are never modified; outputs are written atomically."""
    from .train import TrainConfig, train

    _check(minutes, val_fraction, val_images, batch_size, missing_index, void_index, colors)
    out, colors = Path(out), load_colors(colors)
    check_outputs([("out", out)], [("images", images), ("labels", labels)])
    _check_out(out)
    with _holding(out, threads):  # one fit per --out; its threads for scoring too
        start = _start_model(init, agnostic)  # loaded once: its config, the zero-shot scores, maybe kept
        args = dict(init=init, missing_index=missing_index, void_index=void_index, colors=colors and colors.to_dict(),
                    val_fraction=val_fraction, val_images=val_images, seed=seed, agnostic=agnostic,
                    hide_unknown=hide_unknown, hole_index=HOLE if hide_unknown else None)  # fmt: skip
        _claim(out / RUN_DIR, args, resume)
        say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)
        samples = read_samples(images, labels, missing_index=missing_index, void_index=void_index, colors=colors)
        holes = HoleShapes.measure([s.holes for s in samples], start.config.grid)
        width = max(4, round(holes.width))
        hold_out(samples, val_fraction, val_images, width, seed)
        data = _data(samples, Path(labels).name, start, holes=hide_unknown)
        side = float(np.median([max(s.label.shape) for s in samples]))
        settings = holes.training_holes(side, min(start.config.size), hide_unknown=hide_unknown)
        pool = _pool(out / RUN_DIR, resume, samples, start.config, 60 * minutes)
        _record(out / RUN_DIR, {**args, "mask_pool": pool})  # after the data's checks: a refused fit leaves nothing
        settings.update(mask_pool=pool, batch_size=min(batch_size, len(samples)))
        settings.update(hide_unknown=hide_unknown, hole_index=args["hole_index"])
        if agnostic:  # slots as the start model has them, drawn at random per sample
            settings.update(class_agnostic=True, num_slots=start.config.num_classes)
        settings.setdefault("mix", PAPER_MIX)  # as measured in docs/fit.md (train's default from an init: Random alone)
        cfg = TrainConfig(data=str(labels), out=str(out / RUN_DIR), init=init, new_classes=not agnostic,
                          max_minutes=minutes, max_steps=max_steps, epochs=10**9, warmup_steps=20, val_split="",
                          seed=seed, threads=threads, save_every=60.0, progress=progress, **settings)  # fmt: skip
        say(f"fit: {len(samples)} labels, {data.info.num_classes} classes, holes {holes.fraction:.1%} of the pixels, "
            f"{width} px wide; training {minutes:g} min from {init}")  # fmt: skip
        state = train(cfg, resume=resume, data=data)
        if not (state["seconds"] >= 60 * minutes or (max_steps and state["step"] >= max_steps)):
            done = f"{state['seconds'] / 60:.1f} of {minutes:g} minutes ({state['step']} steps)"
            raise FitStopped(f"stopped after {done}; rerun with --resume to finish")
        say("fit: scoring the held-out pixels (fitted, zero-shot, random walker)")
        report = _compare(start, out / RUN_DIR, samples, data.info.num_classes)
        training = dict(minutes=minutes, steps=state["step"], seconds=state["seconds"], **settings)
        report.update(args, images=str(images), labels=str(labels), num_labels=len(samples), holes=asdict(holes),
                      num_classes=data.info.num_classes, training=training)  # fmt: skip
        _write(out, report, start, out / RUN_DIR / "last")
        say(summary(report))
        return report


class FitStopped(RuntimeError):
    """The fit stopped (SIGTERM, Ctrl-C) before its budget: nothing was scored or written to ``out``."""


def _start_model(init: str, agnostic: bool):
    """The completer a fit starts from; ``agnostic`` needs a class-agnostic one."""
    from .completer import LabelCompleter

    start = LabelCompleter.from_pretrained(init)
    if agnostic and not start.config.class_agnostic:
        raise ValueError(
            f"agnostic: the start model {init} is not class-agnostic (it has classes); start from any-m0.5"
        )
    return start


def _claim(run_dir: Path, args: dict, resume: bool) -> None:
    """Refuse a fit over another one unless resumed, and a resume whose settings would hold out other
    pixels (which the model may have trained on), start elsewhere or train otherwise. Writes nothing
    (:func:`_record` does, once the data passed its checks); removes the temp files of a fit killed
    in the middle of a write."""
    from .train import CHECKPOINT_NAME

    remove_stale_temp_files(run_dir.parent, HUB_FILES | {"fit.json"})
    remove_stale_temp_files(run_dir, {"fit-args.json", "baselines.json"})
    path = run_dir / "fit-args.json"
    if path.is_file() and resume:
        recorded = read_json_object(path)
        if recorded is None:
            raise ValueError(f"{path}: unreadable, so this fit cannot be resumed; start a new one in another --out")
        before = {**LATER_ARGS, **recorded}
        changed = sorted(k for k in args if before.get(k) != args[k])
        if changed == ["hole_index"] and args["hide_unknown"]:
            raise ValueError(
                f"{run_dir}: this fit was started by an earlier version, whose --hide-unknown "
                "may have hidden the patches with void too; start a new one in another --out"
            )
        if changed:
            raise ValueError(f"{run_dir}: --resume with other settings than the fit it continues: {', '.join(changed)}")
        return
    if (run_dir / CHECKPOINT_NAME).exists() or (path.is_file() and not resume):
        raise ValueError(f"{run_dir}: a fit is already there; resume it (--resume) or choose another --out")


def _pool(run_dir: Path, resume: bool, samples: list[Sample], config, seconds: float) -> int:
    """The fit's mask pool: on a resume, the one recorded when the fit in ``run_dir`` began (a resume
    trains as it began); else, or when none was recorded, :func:`pool_size`."""
    path = run_dir / "fit-args.json"
    pool = (read_json_object(path) or {}).get("mask_pool") if resume else None
    if isinstance(pool, int) and not isinstance(pool, bool):
        return pool
    return pool_size(samples, config, seconds)


def _record(run_dir: Path, args: dict) -> None:
    """Record the settings of the fit in ``run_dir/fit-args.json`` (atomically), for :func:`_claim`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(args, indent=2)
    atomic_write(run_dir / "fit-args.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _compare(start, run_dir: Path, samples: list[Sample], num_classes: int) -> dict:
    """Held-out scores of the fitted model (``run_dir/last``), the model it started from (the completer
    ``start``) and the random walker; ``kept``."""
    from .completer import LabelCompleter

    if not any(s.held.any() for s in samples):  # nothing held out (val_fraction 0, tiny labels): keep the fit
        return dict(fitted=None, zero_shot=None, random_walker=None, gain=None, kept="fitted")
    fitted = score(completer_method(LabelCompleter.from_pretrained(str(run_dir / "last"))), samples, num_classes)
    base = _baselines(start, run_dir, samples, num_classes)
    kept, gain = choose(fitted, base["zero_shot"])  # zero_shot None: the start cannot take these labels
    scores = {k: v and {n: x for n, x in v.items() if n != "per_label"} for k, v in dict(fitted=fitted, **base).items()}
    return dict(**scores, gain=gain, kept=kept)  # per_label stays in baselines.json, out of fit.json


def _baselines(start, run_dir: Path, samples: list[Sample], num_classes: int) -> dict:
    """The held-out scores of the start model and the random walker, kept in ``run_dir/baselines.json``
    with digests of the start weights and of the held-out set: a resume reuses them only for both."""
    path = run_dir / "baselines.json"
    key = dict(start_weights=weights_digest(start.model), held_out=held_out_digest(samples, num_classes))
    cached = read_json_object(path) or {}
    zero = cached.get("zero_shot")
    has_parts = zero is None or (isinstance(zero, dict) and "per_label" in zero)  # an earlier version's had none
    reuse = all(cached.get(k) == v for k, v in key.items()) and {"zero_shot", "random_walker"} <= cached.keys()
    if reuse and has_parts:
        return dict(zero_shot=cached["zero_shot"], random_walker=cached["random_walker"])
    takes = start.config.class_agnostic or num_classes <= start.num_classes  # the data's classes (_data)
    zero = score(completer_method(start), samples, num_classes) if takes else None
    walker = score(walk_method(beta=2000.0, solver="direct", connectivity=4, color="rgb"), samples, num_classes)
    text = json.dumps(dict(**key, zero_shot=zero, random_walker=walker), indent=2)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return dict(zero_shot=zero, random_walker=walker)


def held_out_digest(samples: list[Sample], num_classes: int) -> str:
    """A short SHA-256 of what the held-out scores depend on: the class count and, for every label with
    held-out pixels, its name, image, label as the methods see it, holes, held-out pixels and their truth."""
    h = hashlib.sha256(str(num_classes).encode())
    for s in samples:
        if s.held.any():
            h.update(s.name.encode())
            for t in (s.image, s.label, s.holes, s.held, s.truth):
                h.update(str(tuple(t.shape)).encode())
                h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _write(out: Path, report: dict, start, fitted_dir: Path) -> None:
    """The kept model's files (the fitted one, or the completer ``start``), its card and ``fit.json`` in
    ``out`` (each written atomically)."""
    from .completer import LabelCompleter

    fitted = report["kept"] == "fitted"
    model = LabelCompleter.from_pretrained(str(fitted_dir)).model if fitted else start.model
    save_hub_files(model, out)
    # a class-agnostic model carries the holes and void as the fit read them (`complete --model` then needs no
    # flags); a class-specific one has its own classes and no label set (a stale one goes)
    label_set = None
    if model.config.class_agnostic:
        label_set = data_label_set(start.label_set, report)
        report["label_set"] = label_set.name if label_set is not None else None
    save_label_set(label_set, out)
    text = json.dumps(report, indent=2)
    atomic_write(out / "fit.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    card = model_card(report)
    atomic_write(out / "README.md", lambda tmp: Path(tmp).write_text(card, encoding="utf-8"))


def data_label_set(start_set: LabelSet | None, report: dict) -> LabelSet | None:
    """The label set a class-agnostic model fitted on the report's data carries, so that its folder reads
    labels as the fit read them: the start's (names, colours) with the fit's missing and void indices, or
    the data's own, every id below those indices a class (``class 0`` ...: any 8-bit id, as the model
    takes). None when a label set cannot say so (a colour table, indices above 255 or below the classes)."""
    if report.get("colors") is not None:  # colour labels: their table, given to complete as to the fit
        return None
    missing, void = report["missing_index"], report["void_index"]
    if start_set is not None:
        with contextlib.suppress(ValueError):  # else the data's own, below
            return dataclasses.replace(start_set, missing_index=missing, void_index=void)
    k = min(missing, void) if void is not None else missing  # the ids below both are classes
    if k < report["num_classes"]:
        return None
    try:
        return LabelSet(Path(report["labels"]).name or "data", [f"class {i}" for i in range(k)], void_index=void,
                        missing_index=missing)  # fmt: skip
    except ValueError:
        return None


def summary(report: dict) -> str:
    """One paragraph: the held-out PA-mIoU of each method and the model kept."""
    if report["fitted"] is None:
        return "no pixel held out: kept the fitted model unscored"
    f, z, w = (_percent(report[k]) for k in ("fitted", "zero_shot", "random_walker"))
    held = report["fitted"]
    flags = ""
    if "label_set" in report and report["label_set"] is None and report.get("colors") is None:  # agnostic kept
        flags = (f"; no label set could record the holes and void: pass --missing-index {report['missing_index']}"
                 + (f" --void-index {report['void_index']}" if report["void_index"] is not None else "")
                 + " to complete")  # fmt: skip
    return (
        f"held-out PA-mIoU ({held['pixels']} pixels of {held['images']} labels): fitted {f}, zero-shot "
        f"{report['init']} {z}, random walker {w}; kept the {report['kept'].replace('_', '-')} model"
        f"{f' ({_gain(report)})' if report.get('gain') else ''}{flags}"
    )


def _gain(report: dict) -> str:
    """``the fitted model's gain +x, at least +y with C% confidence`` (points of held-out PA-mIoU, C from
    ``KEEP_CONFIDENCE``), for a report with a ``gain``."""
    gain = report["gain"]
    sure = f"{100 * KEEP_CONFIDENCE:.0f}%"
    return (
        f"the fitted model's gain {100 * gain['mean']:+.1f}, at least {100 * gain['low']:+.1f} with {sure} confidence"
    )


def _percent(scores: dict | None, key: str = "pa_miou") -> str:
    """A held-out score in percent; n/a for a method that could not run (a start without the labels' classes)."""
    return "n/a" if scores is None else f"{100 * scores[key]:.1f}"


def model_card(report: dict) -> str:
    """The ``README.md`` of a fitted model folder: what it was fitted on and what it measured."""
    h, t = report["holes"], report["training"]
    if report["fitted"] is None:
        scored = "No pixel was held out: the fitted model was kept unscored.\n"
    else:
        scored = _scores_section(report)
    return f"""---
library_name: torch-label-mae
tags: [label-completion, l-mae, fitted]
---

# L-MAE fitted to `{report["labels"]}`

Fitted with `label-mae fit` from `{report["init"]}` on the known pixels of {report["num_labels"]} labels
({report["num_classes"]} classes; images in `{report["images"]}`): {t["steps"]} steps in
{t["seconds"] / 60:.1f} minutes (budget {t["minutes"]:g}), batch {t["batch_size"]}.
{_holes_sentence(h)}{_options(report)}

**Kept: the {report["kept"].replace("_", "-")} model.**

{scored}"""


def _holes_sentence(h: dict) -> str:
    """The card's sentence on the labels' holes and the training masks."""
    if not h["count"]:
        return "The labels have no holes: the training masks are the paper's, at ratio 0.5."
    return (
        f"The labels' holes cover {100 * h['fraction']:.1f}% of their pixels and are {h['width']:.0f} px wide "
        f"(median of {h['count']} holes); the training holes imitate them."
    )


def _options(report: dict) -> str:
    """The card's sentence on ``agnostic`` and ``hide_unknown`` (empty when neither was set)."""
    said = []
    if report.get("agnostic"):
        said.append(" The class-agnostic start stayed class-agnostic (`--agnostic`): it takes any ids.")
    if report.get("hide_unknown"):
        said.append(" Every patch that touched a hole or a held-out pixel was hidden (`--hide-unknown`).")
    return "".join(said)


def _scores_section(report: dict) -> str:
    rows = "\n".join(
        f"| {name} | {_percent(report[k])} | {_percent(report[k], 'pa_pixel_acc')} |"
        for k, name in (
            ("fitted", "fitted"),
            ("zero_shot", f"zero-shot `{report['init']}`"),
            ("random_walker", "random walker (scikit-image's, beta 2000)"),
        )  # fmt: skip
    )
    if report.get("gain"):
        gain = f"""The fitted model is kept only where its gain over the start model is above 0 with
{100 * KEEP_CONFIDENCE:.0f}% confidence (a bootstrap over the held-out labels): {_gain(report)}.
"""
    else:
        gain = "The fitted model is kept: the start model cannot take these labels.\n"
    return f"""Held out and never trained on: {100 * report["val_fraction"]:.0f}% of the known pixels of
{report["fitted"]["images"]} labels ({report["fitted"]["pixels"]} pixels), in blocks as wide as the holes.
Scored there, at the labels' own resolution:

| method | PA-mIoU | pixel accuracy |
|---|---|---|
{rows}

{gain}
These figures are on this dataset's held-out pixels; they say nothing about other datasets.
"""
