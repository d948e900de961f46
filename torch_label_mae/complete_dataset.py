"""Complete every label of a dataset folder: resumable, atomic, sharded, and it loses nothing.

>>> report = complete_dataset("images/", "labels/", "completed/")          # doctest: +SKIP
>>> report.done, report.skipped, report.failed                              # doctest: +SKIP

Promises:

- **Inputs are never modified.** ``out_dir`` equal to or inside ``labels_dir`` is refused unless
  ``in_place=True``; ``out_dir``, ``confidence_dir`` and the report are refused when they are or lie
  inside any input file or folder (:func:`torch_label_mae.outputs.check_outputs`, through ``..`` and
  symlinks), before anything is written.
- **One writer per folder.** A run holds ``out_dir/.label-mae.lock`` (and one in ``confidence_dir``)
  with its pid; a second run on the same folder gets :class:`OutputLockedError` naming the first; a
  lock whose owner died is stale and taken over. Taking it is the first write, so a read-only or
  full folder fails at once with :class:`OutputWriteError`.
- **Bounded memory.** A file over ``max_pixels`` is reported as too large from its header, never
  decoded; a forward pass takes at most ``batch_size`` images and ``max_batch_pixels`` pixels.
- **Stops that lose nothing.** SIGINT / SIGTERM finish the files in hand, write the report with
  ``finished: false`` and raise :class:`Interrupted` (the CLI exits 130 / 143); three failed writes
  in a row (a full disk) stop the run with :class:`OutputWriteError`; the report goes to the working
  or temp directory when its own place cannot be written. Reader processes die with the run.
- **Atomic outputs.** Every file is written to a temp file beside its final name and renamed over it
  (:func:`torch_label_mae.io.atomic_write`), so a run killed at any moment (even ``kill -9``) leaves
  either a complete file or none under a final name. Stray temp files (``.<name>.<pid>.<random>.tmp``)
  of this run's files whose process is dead are removed at the next start.
- **Resumable.** A rerun skips every output that is complete and valid (a readable palette PNG of
  the label's size, ids in ``[0, N)`` but on void pixels, equal to the label on every pixel that is
  not missing, void included; for a colour label an RGB PNG equal to it on every pixel that is not
  of the missing colour, with class colours on those; and its confidence map, when asked for, a
  readable grayscale PNG of that size; with a class-agnostic model, no hole left holding the missing
  index) unless ``overwrite=True``.
- **Bad input does not stop the run.** An unreadable image or label, a label whose size differs from
  its image, ids ``>= N`` that are neither ``missing_index`` nor ``void_index``, colours not in the
  colour table (each named with its pixel count), an image without label or a label without
  image, a label with holes but no known pixel given to a class-agnostic model (nothing to fill them
  from): the file is recorded with the reason and the rest go on. ``strict=True`` raises
  :class:`CompletionError` at the first failure instead (every file before it is done, none after).
- **Sharding.** ``rank`` / ``world_size`` default to ``torch.distributed`` when a process group is
  initialised, else to the ``RANK`` / ``WORLD_SIZE`` environment variables (set by ``torchrun``),
  else to 0 / 1. Rank ``k`` takes ``files[k::world_size]`` of the sorted file list: no file twice,
  none left out. No process group is needed or created.
- **Report.** A JSON report is written atomically when the run ends (also on a failure in strict
  mode or an interrupt): ``out_dir/completion_report.json`` for a single process, and one file per
  rank, ``completion_report.rank<k>.json``, with several ranks (not merged: K ranks, K reports).
  With ``report_path`` given, ranks write ``<stem>.rank<k><suffix>`` beside it.

Outputs: ``out_dir/<label file name>``, a palette PNG of class ids (the input label's palette when it
is a palette PNG, else :func:`torch_label_mae.io.default_palette`), or an RGB PNG in the colour
table's colours when the input label is an RGB PNG (read with ``colors``); with ``confidence_dir``, also
``confidence_dir/<label file name>``, an 8-bit grayscale PNG of ``round(255 * confidence)`` (255 on
pixels that were known).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .colors import MISSING_ID, ColorTable, color_label_to_array, flattened_hint, load_colors
from .data import Item, list_pairs, read_image, read_label_and_palette
from .hub import DEFAULT_MODEL
from .interrupt import GracefulStop, Interrupted, die_with_parent
from .io import atomic_write, save_label_png
from .outputs import (
    OutputLock,
    OutputLockedError,
    OutputWriteError,
    RunReport,
    check_outputs,
    read_json_object,
    remove_stale_temp_files,
)

REPORT_NAME = "completion_report.json"
VOC_MODEL = "voc-m0.5"  # a voc_root run's default: VOC's classes, holes 254, its 255 borders kept
MAX_PIXELS = 25_000_000  # per file (e.g. 6000 x 4000 photos fit); larger files are reported, not decoded
MAX_BATCH_PIXELS = 16 * 1024 * 1024  # per forward pass: sixteen 1024 x 1024 images

__all__ = [
    "CompletionError",
    "Interrupted",
    "OutputLockedError",
    "OutputWriteError",
    "Report",
    "complete_dataset",
    "shard",
]


class CompletionError(RuntimeError):
    """Raised by ``strict=True`` at the first file that cannot be completed."""

    def __init__(self, file: str, reason: str):
        super().__init__(f"{file}: {reason}")
        self.file, self.reason = file, reason


@dataclass(kw_only=True)
class Report(RunReport):
    """What a run did (:class:`~torch_label_mae.outputs.RunReport`); ``images_per_s`` counts completed
    images over the run's wall time; ``warnings`` ``(file, message)`` pairs; ``rank`` of ``world_size``."""

    images_per_s: float = 0.0
    rank: int = 0
    world_size: int = 1
    warnings: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    model: str | None = None  # the model's name, or its folder
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["warnings"] = [{"file": f, "message": m} for f, m in self.warnings]
        return d

    def summary(self) -> str:
        """A few human-readable lines."""
        who = f"rank {self.rank}/{self.world_size}: " if self.world_size > 1 else ""
        lines = [
            f"{who}{self.done} completed, {self.skipped} already done (skipped), {len(self.failed)} failed "
            f"of {self.total} in {self.seconds:.1f} s"
            + (f" ({self.images_per_s:.1f} images/s)" if self.done else "")
            + ("" if self.finished else " [interrupted]"),
            *(self.empty_note() if self.world_size == 1 else []),  # a rank's share may be empty
        ]
        for f, r in self.failed[:10]:
            lines.append(f"  failed: {f}: {r}")
        if len(self.failed) > 10:
            lines.append(f"  ... and {len(self.failed) - 10} more")
        lines += [f"  error: {e}" for e in self.errors] + [f"  note: {n}" for n in self.notes]
        lines.append(f"  report: {self.report_path}" if self.report_path else "  report: could not be written anywhere")
        return "\n".join(lines)


def voc_paths(voc_root: str | Path, image_set: str = "train", year: str = "2012") -> tuple[Path, Path, list[Item]]:
    """``(images_dir, labels_dir, items)`` from torchvision's ``VOCSegmentation`` file lists
    (``<root>/VOCdevkit/VOC<year>/{JPEGImages,SegmentationClass,ImageSets/Segmentation/<set>.txt}``);
    listed ids whose image or label file is absent come back with ``problem`` set."""
    from torchvision.datasets import VOCSegmentation

    try:
        ds = VOCSegmentation(str(voc_root), year=year, image_set=image_set, download=False)
    except (RuntimeError, FileNotFoundError) as e:
        why = str(e).split(" You can use download=True")[0]  # torchvision's hint: no download from here
        raise FileNotFoundError(
            f"{voc_root}: not a Pascal VOC root (expected VOCdevkit/VOC{year}/JPEGImages, SegmentationClass "
            f"and ImageSets/Segmentation/{image_set}.txt): {why}"
        ) from None
    items = []
    for ip, lp in sorted(zip(ds.images, ds.masks, strict=True)):
        ip, lp = Path(ip), Path(lp)
        im, lab = (ip if ip.is_file() else None), (lp if lp.is_file() else None)
        problem = None
        if lab is None:
            problem = f"unpaired: label {lp} listed in {image_set}.txt does not exist"
        elif im is None:
            problem = f"unpaired: image {ip} listed in {image_set}.txt does not exist"
        items.append(Item(Path(lp).stem, im, lab, problem))
    base = Path(voc_root) / "VOCdevkit" / f"VOC{year}"
    return base / "JPEGImages", base / "SegmentationClass", items


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``(rank, world_size)``: the arguments, else ``torch.distributed`` when initialised, else the
    ``RANK`` / ``WORLD_SIZE`` environment variables, else ``(0, 1)``."""
    if rank is None or world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            r, w = dist.get_rank(), dist.get_world_size()
        else:
            r, w = _env_rank()
        rank = r if rank is None else rank
        world_size = w if world_size is None else world_size
    for name, value in (("rank", rank), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} / world_size {world_size}: need world_size >= 1 and 0 <= rank < world_size")
    return int(rank), int(world_size)


def _env_rank() -> tuple[int, int]:
    """``RANK`` / ``WORLD_SIZE`` from the environment: both or neither (one alone would silently do
    a share of the files, or all of them in every process)."""
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if (rank is None) != (world is None):
        have, lack = ("WORLD_SIZE", "RANK") if rank is None else ("RANK", "WORLD_SIZE")
        raise ValueError(
            f"{have}={os.environ[have]} is set but {lack} is not: set both (torchrun does) or neither, "
            f"or pass rank= / world_size="
        )
    try:
        return int(rank or 0), int(world or 1)
    except ValueError:
        raise ValueError(f"RANK={rank!r} / WORLD_SIZE={world!r}: both must be integers") from None


def shard(items: list, rank: int, world_size: int) -> list:
    """Rank ``rank``'s share of a sorted list: ``items[rank::world_size]``."""
    return items[rank::world_size]


# ----------------------------------------------------------------------------------------------------
# validity of outputs (what a rerun may skip)
# ----------------------------------------------------------------------------------------------------
def _read_png(path: Path, modes) -> np.ndarray | None:
    try:
        with Image.open(path) as im:
            if im.format != "PNG" or im.mode not in modes:
                return None
            im.load()
            return np.asarray(im)
    except Exception:  # any unreadable / truncated file is simply not valid
        return None


def output_is_valid(
    out: Path,
    label: np.ndarray,
    num_classes: int | None,
    missing_index: int = 255,
    confidence: Path | None = None,
    *,
    void_index: int | None = None,
    colors: ColorTable | None = None,
    rgb: np.ndarray | None = None,
    agnostic: bool = False,
) -> bool:
    """True when ``out`` is a complete palette PNG of ``label``'s size with ids in ``[0, num_classes)``
    (or ``void_index`` where the label is void) equal to ``label`` on its known pixels (and
    ``confidence``, when given, a grayscale PNG of that size). For a colour label (``rgb``, ``HxWx3``,
    with ``label`` its ids decoded by ``colors``): an RGB PNG equal to ``rgb`` on every pixel that is not
    of the missing colour, and class colours of ``[0, num_classes)`` on those. ``agnostic`` (a
    class-agnostic model's output, which fills only with ids the label's visible pixels carry): a hole that
    still holds ``missing_index`` was not filled, though the missing index is in the class range.
    ``num_classes`` None (a class-agnostic model without label set: any ids): holes hold ids the label's
    known pixels carry."""
    if rgb is not None:
        arr = _read_png(out, ("RGB", "RGBA"))
        if arr is None or arr.shape[:2] != rgb.shape[:2] or (arr.shape[2] == 4 and (arr[..., 3] != 255).any()):
            return False
        arr = arr[..., :3]
        holes = label == MISSING_ID
        if not np.array_equal(arr[~holes], rgb[~holes]):
            return False
        try:
            filled = colors.decode(arr[holes][None], "output")
        except ValueError:
            return False
        if num_classes is not None and ((filled < 0) | (filled >= num_classes)).any():
            return False
    else:
        arr = _read_png(out, ("P", "I;16", "I"))  # ids above 255: a 16-bit output (I before Pillow 10.3)
        if arr is None or arr.shape != label.shape:
            return False
        void = label == void_index if void_index is not None else np.zeros(label.shape, bool)
        known = label != missing_index
        if num_classes is None:  # any ids: a hole takes one its label's known pixels carry
            if not np.isin(arr[~known], label[known & ~void]).all():
                return False
        elif not (void | (arr < num_classes)).all():
            return False
        if not np.array_equal(arr[known], label[known]):
            return False
        if agnostic and (arr[~known] == missing_index).any():
            return False  # a hole left as it was: the input itself, or an unfinished output
    if confidence is not None:
        c = _read_png(confidence, ("L",))
        if c is None or c.shape != label.shape:
            return False
    return True


# ----------------------------------------------------------------------------------------------------
# reading (in DataLoader workers)
# ----------------------------------------------------------------------------------------------------
def _too_large(path: Path, what: str, max_pixels: int, limit: str = "max_pixels, --max-pixels") -> str | None:
    """Why ``path`` may not be decoded (over ``max_pixels``, named ``limit``), read from its header alone;
    None if fine."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as im:  # lazy: the header only
            w, h = im.size
    if w * h > max_pixels:
        size = f"{w}x{h} = {w * h:,} pixels"
        return f"too large: {what} {path.name} is {size}, over the limit of {max_pixels:,} ({limit})"
    return None


class _Reader(torch.utils.data.Dataset):
    """Item -> a record dict: ``status`` is ``"todo"`` (with image, label, palette), ``"skip"``
    (a valid output exists) or ``"fail"`` (with ``reason``)."""

    def __init__(self, items, out_dir, confidence_dir, coding: _Coding, overwrite, max_pixels, completer):
        self.items, self.out_dir, self.confidence_dir = items, out_dir, confidence_dir
        self.coding, self.overwrite, self.max_pixels = coding, overwrite, max_pixels
        self.agnostic, self.ignore = completer.config.class_agnostic, completer.config.ignore_index
        self.n = completer.num_ids  # None: a class-agnostic model's any ids (but its unknown marker, ignore)

    def __len__(self) -> int:
        return len(self.items)

    def _read_label(self, it: Item) -> tuple[torch.Tensor, list | None, np.ndarray | None, str]:
        """``(ids, palette, rgb, mode)``: a colour label's ids are decoded with the colour table (``rgb``
        is the label itself, ``mode`` 'RGB' or opaque 'RGBA'); other labels are read as ids (``rgb`` None)."""
        problem = _too_large(it.label, "label", self.max_pixels)
        if problem is not None:
            raise _Skip(problem)
        with Image.open(it.label) as im:
            if im.mode in ("RGB", "RGBA"):
                if self.coding.colors is None:
                    raise _Skip(
                        f"cannot read label: mode {im.mode!r} is a colour label; pass colors= (--colors NAME|FILE)"
                    )
                try:
                    rgb = color_label_to_array(im, "label")
                    ids = self.coding.colors.decode(rgb, "label")
                except ValueError as e:
                    msg = str(e).removeprefix("label: ")
                    raise _Skip(msg if "opaque" in msg else f"unknown colours: {msg}") from None
                return torch.from_numpy(ids), None, rgb, im.mode
        ids, palette = read_label_and_palette(it.label)
        return ids, palette, None, "P"

    def __getitem__(self, i: int) -> dict:
        it = self.items[i]
        rec = {"name": it.name, "status": "fail"}
        if it.problem is not None:
            return {**rec, "reason": it.problem}
        try:
            label, palette, rgb, mode = self._read_label(it)
        except _Skip as e:
            return {**rec, "reason": str(e)}
        except Exception as e:  # every unreadable file is a recorded failure
            return {**rec, "reason": _reason("cannot read label", e, it.label)}
        lab_np = label.numpy()
        if not self.overwrite:
            conf = self.confidence_dir / it.name if self.confidence_dir is not None else None
            c = self.coding
            valid = output_is_valid(
                self.out_dir / it.name,
                lab_np,
                self.n,
                c.missing_index,
                conf,
                void_index=c.void_index,
                colors=c.colors,
                rgb=rgb,
                agnostic=self.agnostic,
            )
            if valid:
                return {"name": it.name, "status": "skip"}
        try:
            problem = _too_large(it.image, "image", self.max_pixels)
            if problem is not None:
                return {**rec, "reason": problem}
            image = read_image(it.image)
        except Exception as e:
            return {**rec, "reason": _reason("cannot read image", e, it.image)}
        reason = self._check(it, image, label, colour=rgb is not None)
        if reason is not None:
            return {**rec, "reason": reason}
        rec = {"name": it.name, "status": "todo", "image": image, "label": label, "palette": palette}
        if rgb is not None:  # as 3xHxW: the DataLoader turns numpy arrays into tensors anyway
            rec["rgb"], rec["mode"] = torch.from_numpy(rgb).permute(2, 0, 1), mode
        return rec

    def _check(self, it: Item, image: torch.Tensor, label: torch.Tensor, colour: bool = False) -> str | None:
        if tuple(image.shape[-2:]) != tuple(label.shape):
            return (
                f"size mismatch: image {it.image.name} is {image.shape[-1]}x{image.shape[-2]} but label "
                f"{it.label.name} is {label.shape[-1]}x{label.shape[-2]} (W x H)"
            )
        lab_np, c = label.numpy(), self.coding
        if colour:  # decoded: MISSING_ID, VOID_ID or a colour's class id
            bad = lab_np >= (self.n if self.n is not None else c.colors.num_classes)
            if bad.any():
                vals = sorted(np.unique(lab_np[bad]).tolist())[:5]
                return (
                    f"ids out of range: {int(bad.sum())} pixels have colours of class ids {vals}, not in [0, {self.n})"
                )
            return _unfillable(lab_np == MISSING_ID, lab_np >= 0) if self.agnostic else None
        holes = lab_np == c.missing_index
        allowed = holes | (lab_np == c.void_index if c.void_index is not None else False)
        bad = ~allowed & ((lab_np < 0) | ((lab_np >= self.n) if self.n is not None else (lab_np == self.ignore)))
        if bad.any():
            vals = np.unique(lab_np[bad]).tolist()
            void = f" or the void index {c.void_index}" if c.void_index is not None else ""
            ids = f"outside [0, {self.n})" if self.n is not None else f"(any id >= 0 but {self.ignore} is a class)"
            none = c.missing_index > 255 and not holes.any()  # e.g. --missing-index 300 on 8-bit labels
            hint = (f"; no pixel holds {c.missing_index} (8-bit labels hold 0..255)" if none
                    else "; if they mark holes or void, say so with --missing-index / --void-index")  # fmt: skip
            return (
                f"ids out of range: {int(bad.sum())} pixels have ids {vals[:5]} {ids} "
                f"that are not the missing index {c.missing_index}{void}{flattened_hint(vals, c.colors)}{hint}"
            )
        return _unfillable(holes, ~allowed) if self.agnostic else None


def _unfillable(holes: np.ndarray, known: np.ndarray) -> str | None:
    """Why a label with ``holes`` cannot be completed by a class-agnostic model, which fills a hole only with
    a class the label's ``known`` pixels carry: it has none. None when it can be."""
    if holes.any() and not known.any():
        return (
            "no known pixel: a class-agnostic model fills holes only with classes the label's own visible "
            "pixels carry, so this label's holes cannot be filled"
        )
    return None


class _Skip(Exception):
    """A file the reader refuses before decoding it (the reason is the message)."""


def _reason(what: str, e: Exception, path) -> str:
    msg = str(e).replace(f"{path}: ", "")
    return msg if msg.startswith(what) else f"{what}: {msg}"


def _pixels(rec: dict) -> int:
    return int(rec["label"].numel())


# ----------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------
def _write(rec: dict, completed: torch.Tensor, conf: torch.Tensor | None, out_dir: Path, conf_dir: Path | None):
    if conf_dir is not None and conf is not None:
        c = (conf.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        im = Image.fromarray(c, mode="L")
        atomic_write(conf_dir / rec["name"], lambda tmp: im.save(tmp, format="PNG"))
    if "rgb" in rec:  # a colour label: written back in its colours
        rgb = Image.fromarray(completed.permute(1, 2, 0).numpy(), mode="RGB")
        rgb = rgb.convert("RGBA") if rec["mode"] == "RGBA" else rgb  # opaque, as the input
        atomic_write(out_dir / rec["name"], lambda tmp: rgb.save(tmp, format="PNG"))
    else:
        save_label_png(completed, out_dir / rec["name"], rec["palette"])


class _Completion:
    """Completes groups of records and writes them; records failures in the report. Writes that fail
    ``MAX_WRITE_FAILURES`` times in a row (a full or read-only disk) stop the run with
    :class:`OutputWriteError`."""

    MAX_WRITE_FAILURES = 3

    def __init__(self, completer, report: Report, *, batch_size, coding: _Coding, out_dir, conf_dir, strict):
        self.completer, self.report, self.batch_size = completer, report, batch_size
        self.coding, self.out_dir, self.conf_dir, self.strict = coding, out_dir, conf_dir, strict
        self.write_failures = 0

    def _run(self, rs: list[dict]):
        want_conf = self.conf_dir is not None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = self.completer.complete_batch(
                [r["image"] for r in rs],
                [r["rgb"] if "rgb" in r else r["label"] for r in rs],
                batch_size=self.batch_size,
                missing_index=self.coding.missing_index,
                void_index=self.coding.void_index,
                colors=self.coding.colors,
                return_confidence=want_conf,
            )
        for w in caught:
            msg = str(w.message)
            hit = [r for i, r in enumerate(rs) if msg.startswith(f"labels[{i}] ")]  # attribute to the file
            if hit:
                self.report.warnings.append((hit[0]["name"], msg.split(" ", 1)[1]))
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return out if want_conf else (out, [None] * len(rs))

    def _write(self, r: dict, lab, conf) -> None:
        try:
            _write(r, lab, conf, self.out_dir, self.conf_dir)
        except OSError as e:
            self.write_failures += 1
            _fail(self.report, r["name"], f"cannot write output: {e}", self.strict)
            if self.write_failures >= self.MAX_WRITE_FAILURES:
                raise OutputWriteError(
                    f"{self.write_failures} outputs in a row could not be written, the last: {e}; stopped"
                ) from None
            return
        self.write_failures = 0
        self.report.done += 1

    def __call__(self, recs: list[dict]) -> None:
        """Complete ``recs`` (all ``todo``) in one call; on an error, one by one so only the culprit fails."""
        if not recs:
            return
        try:
            labs, confs = self._run(recs)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception:  # isolate the failing file: one by one, each written before the next
            for r in recs:
                try:
                    (lab,), (conf,) = self._run([r])
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as e:  # named by its file: not by its place in this one-label call
                    reason = str(e).removeprefix("labels[0]: ")
                    _fail(self.report, r["name"], f"completion failed: {reason}", self.strict)
                    continue
                self._write(r, lab, conf)
            return
        for r, lab, conf in zip(recs, labs, confs, strict=True):
            self._write(r, lab, conf)


def _fail(report: Report, name: str, reason: str, strict: bool) -> None:
    report.failed.append((name, reason))
    if strict:
        raise CompletionError(name, reason)


def _save_report(report: Report, rpath: Path) -> None:
    """Write the report at ``rpath``, else (read-only, full disk) in the working directory or the temp
    directory; ``report.report_path`` says where it went (None when nowhere)."""
    fallback = f"label-mae-report-{os.getpid()}.json"
    for p in (rpath, Path.cwd() / fallback, Path(tempfile.gettempdir()) / fallback):
        report.report_path = str(p)
        text = json.dumps(report.to_dict(), indent=2)
        try:
            atomic_write(p, lambda tmp, text=text: Path(tmp).write_text(text, encoding="utf-8"))
            return
        except OSError as e:
            report.errors.append(f"cannot write the report {p}: {e}")
    report.report_path = None


# ----------------------------------------------------------------------------------------------------
# the entry point
# ----------------------------------------------------------------------------------------------------
def _report_path(report_path, out_dir: Path, rank: int, world_size: int) -> Path:
    p = Path(report_path) if report_path is not None else out_dir / REPORT_NAME
    if world_size > 1:
        p = p.with_name(f"{p.stem}.rank{rank}{p.suffix}")
    return p.resolve()


def _load_completer(model, device, precision="auto"):
    from .completer import LabelCompleter

    if isinstance(model, LabelCompleter):
        return model.to(device) if device is not None else model
    if device is None and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        device = f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"  # one GPU per rank
    return LabelCompleter.from_pretrained(str(model), device=device, precision=precision)


@dataclass(frozen=True)
class _Coding:
    """How labels mark holes and void: ``missing_index`` / ``void_index`` for labels of ids, the colour
    table's missing and void colours for colour labels."""

    missing_index: int
    void_index: int | None
    colors: ColorTable | None

    @classmethod
    def of(cls, completer, missing_index: int | None, void_index: int | None, colors, in_place: bool) -> _Coding:
        """The arguments given, else the completer's conventions (a preset's label set; else holes 255,
        no void, no table), checked before any work (:meth:`LabelCompleter.conventions`). In place, a
        missing index that is one of a class-specific model's classes is refused: a label completed in
        place could not be told from one still to complete."""
        coding = cls(*completer.conventions(missing_index, void_index, colors))
        n, m = completer.num_ids, coding.missing_index
        if in_place and not completer.config.class_agnostic and 0 <= m < n:
            raise ValueError(
                f"in_place=True with missing_index {m}, a class id of this model (0..{n - 1}): a label completed in "
                f"place could not be told from one still to complete (its pixels filled with class {m} would look "
                "missing). Mark the holes with a value that is no class (e.g. 255), or write to another folder"
            )
        return coding


def _check_missing(missing_index):
    """``missing_index``: None (the model's) or an integer a label PNG can hold, in 0..2^31 - 1."""
    if missing_index is None:
        return None
    integer = isinstance(missing_index, (int, np.integer)) and not isinstance(missing_index, bool)
    if not integer or not 0 <= missing_index <= 2**31 - 1:
        raise ValueError(f"missing_index must be an integer in 0..2^31 - 1 or None, got {missing_index!r}")
    return int(missing_index)


def _check_void(void_index):
    """``void_index``: None or an integer in 0..255 (outputs are palette PNGs)."""
    if void_index is None:
        return None
    if isinstance(void_index, bool) or not isinstance(void_index, (int, np.integer)) or not 0 <= void_index <= 255:
        raise ValueError(f"void_index must be an integer in 0..255 (palette PNG ids) or None, got {void_index!r}")
    return int(void_index)


def _check_numbers(batch_size: int, num_workers: int, max_pixels: int, max_batch_pixels: int) -> None:
    for what, v, low in (
        ("batch_size", batch_size, 1),
        ("num_workers", num_workers, 0),
        ("max_pixels", max_pixels, 1),
        ("max_batch_pixels", max_batch_pixels, 1),
    ):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise ValueError(f"{what} must be an integer >= {low}, got {v!r}")


def _items(images_dir, labels_dir, voc_root, image_set, year) -> tuple[Path, Path, list[Item], list]:
    """``(images_dir, labels_dir, items, inputs)``; ``inputs`` are the ``(what, path)`` that no output
    may be or lie inside."""
    if voc_root is not None:
        if images_dir is not None or labels_dir is not None:
            raise ValueError("give either voc_root or images_dir / labels_dir, not both")
        images_dir, labels_dir, items = voc_paths(voc_root, image_set, year)
        extra = [("VOC image sets folder", Path(images_dir).parent / "ImageSets")]
    else:
        if images_dir is None or labels_dir is None:
            raise ValueError("images_dir and labels_dir are required (or voc_root)")
        items, extra = list_pairs(images_dir, labels_dir), []
    images_dir, labels_dir = Path(images_dir).resolve(), Path(labels_dir).resolve()
    return images_dir, labels_dir, items, [("images folder", images_dir), ("labels folder", labels_dir), *extra]


def _check_output_paths(out_dir: Path, conf_dir: Path | None, rpath: Path, inputs, names, in_place: bool) -> None:
    """Refuse outputs that could replace or mix with inputs, or with each other, before any work."""
    labels_dir, images_dir = dict(inputs)["labels folder"], dict(inputs)["images folder"]
    if (out_dir == labels_dir or labels_dir in out_dir.parents) and not in_place:
        raise ValueError(
            f"out_dir {out_dir} is the labels folder or inside it; outputs there could replace or mix with "
            f"the input labels. Choose another folder, or pass in_place=True to do so on purpose"
        )
    if out_dir == images_dir:
        raise ValueError(f"out_dir {out_dir} is the images folder; choose another folder")
    if conf_dir is not None and conf_dir in (out_dir, labels_dir, images_dir):
        raise ValueError(
            f"confidence_dir {conf_dir} must differ from the out, labels and images folders "
            f"(its files have the labels' names)"
        )
    allow = [("out_dir", "labels folder"), ("report", "labels folder")] if in_place else []
    check_outputs([("out_dir", out_dir), ("confidence_dir", conf_dir), ("report", rpath)], inputs, allow)
    if rpath.parent in (out_dir, conf_dir) and rpath.name in names or rpath.is_dir() or rpath in (out_dir, conf_dir):
        raise ValueError(f"report {rpath} would collide with an output file or folder of the same name")


def _new_report(total: int, rank: int, world_size: int, out_dir: Path, rpath: Path, model, completer, overwrite):
    """The run's :class:`Report`, naming its model (a registered name as given, a folder's path, a loaded
    completer's registered name). When the report already at ``rpath`` names another, a note says that the
    outputs found complete there are kept (``overwrite=True`` redoes them), and the report names both."""
    if isinstance(model, (str, os.PathLike)):
        path = Path(model).expanduser()
        name = str(path.resolve()) if path.is_dir() else os.fspath(model)
    else:
        name = completer.pretrained_name  # None: a completer of unknown origin
    before, notes = _report_model(rpath), []
    if name is None:  # nothing to compare: the report keeps what it said
        name = before
    elif before and before != name and not overwrite:
        notes.append(
            f"the outputs already in {out_dir} were made by the model {before}; this run's is {name}: the ones "
            "found complete are kept as they are (overwrite=True, --overwrite, redoes them)"
        )
        name = before if name in before.split(" and ") else f"{before} and {name}"
    return Report(total=total, rank=rank, world_size=world_size, out_dir=str(out_dir), model=name, notes=notes)


def _report_model(rpath: Path) -> str | None:
    """The model an earlier report at ``rpath`` names; None when there is none (or none readable)."""
    model = (read_json_object(rpath, MAX_REPORT_BYTES) or {}).get("model")
    return model if isinstance(model, str) else None


MAX_REPORT_BYTES = 16 << 20  # an earlier report read for its model; larger ones are not read


def _run(report: Report, locks, rank: int, world_size: int, rpath: Path, loop) -> Report:
    """Run ``loop(stop)`` holding the output folders' locks (``locks``: ``(folder, own file names)``; stale
    temp files removed), time it and write ``report`` at ``rpath`` whatever happens. :class:`Interrupted`
    after SIGINT / SIGTERM, :class:`OutputWriteError` (carrying the report) when outputs fail."""
    with contextlib.ExitStack() as stack:
        for d, own in locks:
            stack.enter_context(OutputLock(d, rank, world_size))
            remove_stale_temp_files(d, own)
        stop = stack.enter_context(GracefulStop())
        start = time.perf_counter()
        try:
            loop(stop)
        except OutputWriteError as e:
            report.errors.append(str(e))
            raise OutputWriteError(str(e), report) from None
        finally:
            report.seconds = time.perf_counter() - start
            report.images_per_s = report.done / report.seconds if report.seconds > 0 else 0.0
            _save_report(report, rpath)
    if stop.signum is not None:
        raise Interrupted(stop.signum, report)
    return report


def complete_dataset(
    images_dir: str | Path | None,
    labels_dir: str | Path | None,
    out_dir: str | Path,
    *,
    model=None,
    missing_index: int | None = None,
    void_index: int | None = None,
    colors=None,
    batch_size: int = 16,
    num_workers: int = 0,
    device=None,
    precision: str = "auto",
    confidence_dir: str | Path | None = None,
    overwrite: bool = False,
    in_place: bool = False,
    strict: bool = False,
    report_path: str | Path | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
    voc_root: str | Path | None = None,
    image_set: str = "train",
    year: str = "2012",
    max_pixels: int = MAX_PIXELS,
    max_batch_pixels: int = MAX_BATCH_PIXELS,
) -> Report:
    """Complete every label of ``labels_dir`` (``<id>.png``, pixels equal to ``missing_index`` are
    missing) with its image ``images_dir/<id>.<ext>`` and write the results to ``out_dir``; see the
    module docstring for the guarantees.

    ``void_index`` (0..255, not ``missing_index``): the dataset's own ignore label, kept as it is and
    unknown to the model (e.g. 255 for Pascal VOC's borders, holes marked ``missing_index=254``).
    ``colors``: a colour table (:mod:`torch_label_mae.colors`: a :class:`~torch_label_mae.colors.ColorTable`,
    ``camvid``, ``cityscapes``, ``voc`` or a JSON file) for RGB label PNGs: its missing colour marks the
    holes, its void colours are kept, and the outputs are RGB PNGs in its colours. Left at None, the three
    take the model's conventions (``voc-m0.5``: holes 254, void 255, ``voc`` colours; else 255, none, none).

    ``model``: a registered name, dataset name, local folder or Hub repo id, or a
    :class:`~torch_label_mae.LabelCompleter` (used as it is; moved to ``device`` when given); None:
    ``any-m0.5``, or :data:`VOC_MODEL` with ``voc_root``.
    ``precision``: for a model loaded by name (see :attr:`LabelCompleter.precision`).
    ``voc_root`` (with ``image_set``, ``year``): a Pascal VOC root instead of ``images_dir`` /
    ``labels_dir`` (pass None for those); the files are those of torchvision's ``VOCSegmentation``.
    ``max_pixels``: files with more pixels are reported, not decoded; ``max_batch_pixels``: a forward
    pass takes at most ``batch_size`` images and this many pixels (one larger image goes alone).
    Returns a :class:`Report`. Raises :class:`CompletionError` with ``strict=True`` at the first failure,
    ``ValueError`` / ``FileNotFoundError`` for arguments it cannot work with, :class:`OutputLockedError`
    when another run writes to ``out_dir`` (all before any output); :class:`OutputWriteError` when the
    outputs cannot be written, and :class:`Interrupted` after SIGINT / SIGTERM (the current files
    finished); both carry the written report as ``.report``.
    """
    _check_numbers(batch_size, num_workers, max_pixels, max_batch_pixels)
    missing_index, void_index, colors = _check_missing(missing_index), _check_void(void_index), load_colors(colors)
    images_dir, labels_dir, items, inputs = _items(images_dir, labels_dir, voc_root, image_set, year)
    out_dir = Path(out_dir).resolve()
    conf_dir = Path(confidence_dir).resolve() if confidence_dir is not None else None
    rank, world_size = resolve_rank(rank, world_size)
    mine = shard(items, rank, world_size)
    rpath = _report_path(report_path, out_dir, rank, world_size)
    names = {it.name for it in mine}
    files = [("input file", p) for it in items for p in (it.image, it.label) if p is not None]
    _check_output_paths(out_dir, conf_dir, rpath, inputs + files, names, in_place)
    model = model if model is not None else (VOC_MODEL if voc_root is not None else DEFAULT_MODEL)
    completer = _load_completer(model, device, precision)
    coding = _Coding.of(completer, missing_index, void_index, colors, in_place)

    report = _new_report(len(mine), rank, world_size, out_dir, rpath, model, completer, overwrite)
    report.labels_dir = str(labels_dir)
    reader = _Reader(mine, out_dir, conf_dir, coding, overwrite, max_pixels, completer)
    loop_args = (batch_size, max_batch_pixels, num_workers, progress)
    dirs = dict(out_dir=out_dir, conf_dir=conf_dir)
    complete = _Completion(completer, report, batch_size=batch_size, coding=coding, strict=strict, **dirs)
    locks = [(d, names | {rpath.name}) for d in (out_dir, conf_dir) if d is not None]
    return _run(report, locks, rank, world_size, rpath, lambda stop: _loop(reader, complete, stop, report, *loop_args))


def _loop(reader, complete, stop, report, batch_size, max_batch_pixels, num_workers, progress) -> None:
    """Read records in file order, group them by ``batch_size`` and ``max_batch_pixels``, complete and
    write each group; stops after a group when ``stop`` caught a signal."""
    loader = torch.utils.data.DataLoader(
        reader,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        worker_init_fn=functools.partial(die_with_parent, os.getpid()) if num_workers else None,
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        desc = f"completing (rank {report.rank}/{report.world_size})" if report.world_size > 1 else "completing"
        bar = tqdm(total=len(reader), desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True)
    todo: list[dict] = []

    def flush():
        complete(todo)
        if bar is not None:
            bar.update(len(todo))
            bar.set_postfix(done=report.done, skipped=report.skipped, failed=len(report.failed), refresh=False)
        todo.clear()

    try:
        for rec in loader:  # in file order: with strict, everything before the first failure is done
            if rec["status"] == "todo":
                if todo and (len(todo) >= batch_size or sum(map(_pixels, todo)) + _pixels(rec) > max_batch_pixels):
                    flush()
                todo.append(rec)
            else:
                if rec["status"] == "skip":
                    report.skipped += 1
                else:
                    flush()
                    _fail(report, rec["name"], rec["reason"], complete.strict)
                if bar is not None:
                    bar.update(1)
            if stop.signum is not None:
                break
        else:
            flush()
            report.finished = True
        flush()  # after a signal: what was read is finished, then the run stops
    finally:
        if bar is not None:
            bar.close()
