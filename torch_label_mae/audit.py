"""Find the wrong labels, not only the missing ones: leave-out audit and repair.

Every patch of a label is hidden in turn and predicted from the image and the rest of the label
(the masked-autoencoder idea used the other way round). Where the label disagrees with what its own
context predicts, it is suspect.

- **Leave-out masks** (:func:`leave_out_masks`): the model's patch grid is cut into ``block x block``
  blocks of patches, coloured like a checkerboard with ``num_masks`` colours (2: a checkerboard,
  4: two-by-two phases); each mask hides the patches of one colour. The masks are complementary:
  every patch is hidden in exactly one of them, and every hidden block keeps visible neighbours.
  ``shifts > 1`` repeats the pattern shifted by ``block // 2`` patches, so that each patch is
  predicted ``shifts`` times, from different contexts (the probabilities are averaged).
- **No leak.** For each mask the label is first set unknown on every pixel of its hidden patches
  (at the label's own resolution), then resized to the model grid; the label prior (nearest fill,
  random walk) is computed from that visible label only, at the model's size and again at full size.
  The given class of a hidden pixel never reaches the prediction of that pixel.
- **Score**: ``1 - p(given class)``, per pixel, from the leave-out probabilities (0 on pixels that
  are no class: void, out of range). ``predicted``: the most likely class.
- **Suspect regions**: 8-connected components of ``score > threshold`` of at least ``min_area`` (a
  fraction of the image's pixels), each with its area, bounding box, given class (the majority of
  the label there), predicted class (the majority of the prediction there) and mean score.
- **Image score**: the sum of the scores inside suspect regions over the number of labelled pixels
  (0: nothing suspect; close to 1: everything suspect and surely wrong).
- **Repair**: the pixels of the suspect regions take the predicted class; nothing else changes.

A *predictor* is anything that gives leave-out probabilities:
``predict(image [B, 3, H, W], label [B, H, W], hidden [B, L], missing [B, H, W]) -> probs [B, N, H, W]``,
where ``label`` is unknown (``ignore_index``) on ``missing`` (the hidden patches' pixels) and the
probabilities are read on ``missing`` only. :func:`model_predictor` wraps an L-MAE (class-specific);
a class-agnostic model plugs in the same way, returning probabilities over the ids of the label
(e.g. ``[B, N, H, W]`` with zeros for ids it does not use), as does :func:`random_walk_predictor`
(the random walker, the baseline of ``benchmarks/audit_corruptions.py``).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from .data import read_image, read_label
from .io import atomic_write, default_palette, full_palette, resize_image, resize_label, save_label_png

DEFAULT_THRESHOLD = 0.97  # chosen on CamVid train with seeded corruptions (docs/audit.md)
DEFAULT_MIN_AREA = 0.001  # suspect regions cover at least 0.1% of the image
DEFAULT_MASKS = 4
DEFAULT_BLOCK = 1
REPORT_NAME = "audit_report.json"
PICTURE_NAME = "worst.png"

Predictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = [
    "DEFAULT_THRESHOLD",
    "AuditReport",
    "AuditResult",
    "audit_batch",
    "audit_dataset",
    "leave_out_masks",
    "leave_out_probs",
    "model_predictor",
    "random_walk_predictor",
    "repair_label",
    "score_from_probs",
    "suspect_regions",
]


# ----------------------------------------------------------------------------------------------------
# leave-out masks and probabilities
# ----------------------------------------------------------------------------------------------------
def leave_out_masks(
    grid: tuple[int, int], num_masks: int = DEFAULT_MASKS, block: int = DEFAULT_BLOCK, shifts: int = 1
) -> torch.Tensor:
    """``[num_masks * shifts, gh * gw]`` bool: complementary sets of patches (see the module docstring).
    Within each shift, every patch is hidden exactly once."""
    if num_masks not in (1, 2, 4):
        raise ValueError(f"num_masks must be 1, 2 or 4, got {num_masks!r}")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be an integer >= 1 (patches), got {block!r}")
    if isinstance(shifts, bool) or not isinstance(shifts, int) or shifts < 1:
        raise ValueError(f"shifts must be an integer >= 1, got {shifts!r}")
    gh, gw = grid
    out = []
    for s in range(shifts):
        off = s * max(block // 2, 1)
        by = (torch.arange(gh) + off) // block  # [gh] block row of each patch row
        bx = (torch.arange(gw) + off) // block
        if num_masks == 1:
            phase = torch.zeros(gh, gw, dtype=torch.long)
        elif num_masks == 2:
            phase = (by[:, None] + bx[None, :]) % 2
        else:
            phase = (by[:, None] % 2) * 2 + bx[None, :] % 2
        out += [(phase == k).flatten() for k in range(num_masks)]
    return torch.stack(out)


def patch_pixels(hidden: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """``hidden [B, gh * gw]`` -> ``[B, H, W]`` bool: the pixels of the hidden patches at any size (each
    pixel belongs to the patch ``floor(y * gh / H), floor(x * gw / W)``)."""
    gh, gw = grid
    h, w = size
    ys = torch.arange(h, device=hidden.device) * gh // h
    xs = torch.arange(w, device=hidden.device) * gw // w
    return hidden.view(-1, gh, gw)[:, ys][:, :, xs]


def leave_out_probs(
    predict: Predictor,
    image: torch.Tensor,
    label: torch.Tensor,
    grid: tuple[int, int],
    num_classes: int,
    *,
    num_masks: int = DEFAULT_MASKS,
    block: int = DEFAULT_BLOCK,
    shifts: int = 1,
    ignore_index: int = 255,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pixel predicted while its patch is hidden: ``(probs [B, N, H, W], count [B, H, W])``,
    ``probs`` averaged over the ``count`` masks that hid each pixel. ``label [B, H, W]``: ids outside
    ``[0, N)`` are unknown to the predictor."""
    b, h, w = label.shape
    known = (label >= 0) & (label < num_classes)
    masks = leave_out_masks(grid, num_masks, block, shifts).to(label.device)
    probs = torch.zeros(b, num_classes, h, w, device=label.device)
    count = torch.zeros(b, h, w, device=label.device)
    for m in masks:
        hidden = m.expand(b, -1)
        missing = patch_pixels(hidden, grid, (h, w))
        visible = torch.where(missing | ~known, torch.full_like(label, ignore_index), label)
        p = predict(image, visible, hidden, missing).float()
        probs += torch.where(missing.unsqueeze(1), p, torch.zeros_like(p))
        count += missing.float()
    return probs / count.clamp(min=1).unsqueeze(1), count


def model_predictor(completer) -> Predictor:
    """Leave-out probabilities of a :class:`~torch_label_mae.LabelCompleter`'s model (its precision and
    device). At another size than the model's, the model's correction is resized and the label prior
    is taken again at full size from the visible label, as :func:`~torch_label_mae.inference.complete_tensors`
    does."""
    model = completer.model
    cfg = model.config

    @torch.inference_mode()
    def predict(image, label, hidden, missing):
        size = cfg.size
        x = resize_image(image, size)
        lab = resize_label(label, size)
        lab = torch.where(patch_pixels(hidden, cfg.grid, size), torch.full_like(lab, cfg.ignore_index), lab)
        amp = completer.autocast_dtype()
        dev = image.device.type
        with torch.autocast(dev, dtype=amp or torch.float32, enabled=amp is not None):
            prior = model.prior(lab, image=x) if model.prior is not None else None
            logits = model(x, lab, hidden, prior).float()
            if tuple(label.shape[-2:]) != tuple(size):
                logits = model.resize_logits(logits, prior, image, label)
        return logits.float().softmax(1)

    return predict


def random_walk_predictor(num_classes: int, *, beta: float = 130.0, connectivity: int = 4, color: str = "rgb"):
    """The random walker (exact solve, scikit-image's edge weights ``exp(-beta * |dI|^2 / var)``) as a
    predictor: its class probabilities from the visible label only (the audit's baseline)."""
    from .propagation import random_walk_probabilities

    def predict(image, label, hidden, missing):
        known = (label >= 0) & (label < num_classes)
        prob, cls = random_walk_probabilities(
            image, label, known, num_classes, beta=beta, solver="direct", connectivity=connectivity, color=color
        )
        out = torch.zeros(label.shape[0], num_classes + 1, *label.shape[-2:], device=label.device)
        idx = torch.where(cls >= 0, cls, torch.full_like(cls, num_classes))  # padding -> a spare row
        idx = idx.clamp(max=num_classes)[:, :, None, None].expand_as(prob)
        out.scatter_add_(1, idx, prob)
        out = out[:, :num_classes]
        none = out.sum(1, keepdim=True) == 0  # no known pixel: uniform
        return torch.where(none, torch.full_like(out, 1.0 / num_classes), out)

    return predict


# ----------------------------------------------------------------------------------------------------
# scores, regions, repair
# ----------------------------------------------------------------------------------------------------
def score_from_probs(probs: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(score [B, H, W] in [0, 1], predicted [B, H, W])``: ``1 - p(given class)`` (0 where the label
    is no class of ``probs``) and the most likely class."""
    n = probs.shape[1]
    known = (label >= 0) & (label < n)
    given = probs.gather(1, torch.where(known, label, torch.zeros_like(label)).long().unsqueeze(1))[:, 0]
    score = torch.where(known, (1.0 - given).clamp(0, 1), torch.zeros_like(given))
    return score, probs.argmax(1)


def _majority(values: np.ndarray) -> int:
    ids, counts = np.unique(values, return_counts=True)
    return int(ids[np.argmax(counts)])


def suspect_regions(
    score: np.ndarray,
    label: np.ndarray,
    predicted: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    min_area: float = DEFAULT_MIN_AREA,
    class_names: Sequence[str] | None = None,
) -> tuple[list[dict], np.ndarray]:
    """``(regions, flagged [H, W] bool)``: 8-connected components of ``score > threshold`` covering at
    least ``min_area`` of the image, largest total score first; ``flagged`` is their union."""
    hot = np.asarray(score) > threshold
    comp, n = ndimage.label(hot, structure=np.ones((3, 3), dtype=bool))
    flagged = np.zeros(hot.shape, dtype=bool)
    if n == 0:
        return [], flagged
    areas = np.bincount(comp.ravel(), minlength=n + 1)
    least = max(1, int(np.ceil(min_area * hot.size)))
    regions = []
    boxes = ndimage.find_objects(comp)
    for i in range(1, n + 1):
        if areas[i] < least:
            continue
        sl = boxes[i - 1]
        inside = comp[sl] == i
        flagged[sl] |= inside
        given, pred = _majority(label[sl][inside]), _majority(predicted[sl][inside])
        mean = float(score[sl][inside].mean())
        r = {
            "area": int(areas[i]),
            "bbox": [int(sl[1].start), int(sl[0].start), int(sl[1].stop), int(sl[0].stop)],  # x0, y0, x1, y1
            "given_class": given,
            "predicted_class": pred,
            "score": round(mean, 4),
        }
        if class_names is not None:
            r["given_name"] = class_names[given] if 0 <= given < len(class_names) else str(given)
            r["predicted_name"] = class_names[pred] if 0 <= pred < len(class_names) else str(pred)
        regions.append(r)
    regions.sort(key=lambda r: -r["area"] * r["score"])
    return regions, flagged


def repair_label(label: np.ndarray, predicted: np.ndarray, flagged: np.ndarray, num_classes: int) -> np.ndarray:
    """A copy of ``label`` whose ``flagged`` pixels that are a class take the predicted class."""
    lab = np.asarray(label)
    known = (lab >= 0) & (lab < num_classes)
    return np.where(flagged & known, np.asarray(predicted).astype(lab.dtype), lab)


@dataclass
class AuditResult:
    """The audit of one label. ``score`` ``[H, W]`` float in [0, 1] (1 - p(given class)), ``predicted``
    ``[H, W]`` the leave-out class, ``regions`` (see :func:`suspect_regions`), ``flagged`` their union,
    ``repaired`` the label with the flagged pixels replaced, ``image_score`` and ``changed`` (pixels
    that differ between ``repaired`` and the label)."""

    score: np.ndarray
    predicted: np.ndarray
    regions: list[dict]
    flagged: np.ndarray
    repaired: np.ndarray
    image_score: float
    labelled: int
    changed: int
    threshold: float

    def score_png(self) -> np.ndarray:
        """The score as 8-bit grayscale: 0 = agrees with its context, 255 = surely wrong."""
        return np.round(np.clip(self.score, 0, 1) * 255).astype(np.uint8)

    def summary(self, max_regions: int = 20) -> dict:
        return {
            "image_score": round(self.image_score, 6),
            "labelled_pixels": self.labelled,
            "suspect_pixels": int(self.flagged.sum()),
            "changed_pixels": self.changed,
            "regions": self.regions[:max_regions],
            "num_regions": len(self.regions),
        }


def finish(
    score: np.ndarray,
    predicted: np.ndarray,
    label: np.ndarray,
    num_classes: int,
    threshold: float = DEFAULT_THRESHOLD,
    min_area: float = DEFAULT_MIN_AREA,
    class_names: Sequence[str] | None = None,
) -> AuditResult:
    """Regions, repair and image score of one label from its score and prediction."""
    regions, flagged = suspect_regions(score, label, predicted, threshold, min_area, class_names)
    repaired = repair_label(label, predicted, flagged, num_classes)
    labelled = int(((label >= 0) & (label < num_classes)).sum())
    image_score = float(score[flagged].sum() / max(labelled, 1))
    changed = int((repaired != label).sum())
    return AuditResult(score, predicted, regions, flagged, repaired, image_score, labelled, changed, threshold)


def _check_threshold(threshold, min_area) -> None:
    for what, v in (("threshold", threshold), ("min_area", min_area)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) < 1.0:
            raise ValueError(f"{what} must be a number in [0, 1), got {v!r}")


def audit_batch(
    completer,
    images: Sequence,
    labels: Sequence,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    min_area: float = DEFAULT_MIN_AREA,
    num_masks: int = DEFAULT_MASKS,
    block: int = DEFAULT_BLOCK,
    shifts: int = 1,
    batch_size: int | None = None,
    predictor: Predictor | None = None,
) -> list[AuditResult]:
    """Audit a list of labels with ``completer`` (see :meth:`LabelCompleter.audit`). Same-size labels
    are batched, ``batch_size`` at a time (default: 8 on the CPU, 64 on CUDA); ids outside
    ``[0, N)`` (void) are unknown to the model, never scored and never repaired."""
    from .io import image_to_tensor, label_to_tensor

    _check_threshold(threshold, min_area)
    if len(images) != len(labels):
        raise ValueError(f"got {len(images)} images but {len(labels)} labels")
    dev = completer.device
    if batch_size is None:
        batch_size = 64 if dev.type == "cuda" else 8
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n, cfg = completer.num_classes, completer.config
    predict = predictor or model_predictor(completer)
    pairs = []
    for i, (im, lab) in enumerate(zip(images, labels, strict=True)):
        img_t, lab_t = image_to_tensor(im, f"images[{i}]"), label_to_tensor(lab, f"labels[{i}]")
        if tuple(img_t.shape[-2:]) != tuple(lab_t.shape):
            raise ValueError(f"images[{i}] is {tuple(img_t.shape[-2:])} but labels[{i}] is {tuple(lab_t.shape)}")
        pairs.append((img_t, lab_t.long()))
    groups: dict = {}
    for i, (_, lab) in enumerate(pairs):
        groups.setdefault(tuple(lab.shape), []).append(i)
    results: list = [None] * len(pairs)
    for idx in groups.values():
        for s in range(0, len(idx), batch_size):
            chunk = idx[s : s + batch_size]
            ims = [pairs[i][0] for i in chunk]
            dtype = torch.uint8 if all(t.dtype == torch.uint8 for t in ims) else torch.float32
            img = torch.stack([t if t.dtype == dtype else t.float() / 255.0 for t in ims]).to(dev)
            lab = torch.stack([pairs[i][1] for i in chunk]).to(dev)
            probs, _ = leave_out_probs(predict, img, lab, cfg.grid, n, num_masks=num_masks, block=block, shifts=shifts)
            score, pred = score_from_probs(probs, lab)
            score, pred, lab_np = score.cpu().numpy(), pred.cpu().numpy(), lab.cpu().numpy()
            for j, i in enumerate(chunk):
                results[i] = finish(score[j], pred[j], lab_np[j], n, threshold, min_area, cfg.class_names)
    return results


# ----------------------------------------------------------------------------------------------------
# whole folders
# ----------------------------------------------------------------------------------------------------
@dataclass
class AuditReport:
    """What :func:`audit_dataset` did: ``images`` (one summary per label, worst first), ``failed``
    ``(file, reason)`` pairs, counts and where things went."""

    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    total: int = 0
    seconds: float = 0.0
    finished: bool = False
    model: str = ""
    settings: dict = field(default_factory=dict)
    images: list[dict] = field(default_factory=list)
    picture: str | None = None
    report_path: str | None = None
    out_dir: str | None = None

    @property
    def ok(self) -> bool:
        return self.finished and not self.failed

    def to_dict(self) -> dict:
        d = asdict(self)
        d["failed"] = [{"file": f, "reason": r} for f, r in self.failed]
        return d

    def summary(self) -> str:
        lines = [
            f"{self.done} audited, {self.skipped} already done (skipped), {len(self.failed)} failed of "
            f"{self.total} in {self.seconds:.1f} s" + ("" if self.finished else " [interrupted]")
        ]
        repair = self.settings.get("repair") is not None
        for r in self.images[:5]:
            top = r["regions"][0] if r["regions"] else None
            what = ""
            if top is not None:
                g, p = top.get("given_name", top["given_class"]), top.get("predicted_name", top["predicted_class"])
                what = f"; largest: {top['area']} px {g} -> {p} (score {top['score']:.2f})"
            changed = f", {r['changed_pixels']} px repaired" if repair else ""
            lines.append(
                f"  {r['file']}: score {r['image_score']:.4f}, {r['num_regions']} suspect regions{changed}{what}"
            )
        for f, why in self.failed[:10]:
            lines.append(f"  failed: {f}: {why}")
        if self.picture:
            lines.append(f"  picture of the worst: {self.picture}")
        lines.append(f"  report: {self.report_path}")
        return "\n".join(lines)


def _records_dir(out_dir: Path) -> Path:
    return out_dir / "records"


def _valid_outputs(out_dir: Path, name: str, shape, settings: dict) -> dict | None:
    """The stored summary of ``name`` when its record, score map (and repaired label, with repair) are
    complete and were made with the same settings; else None."""
    rec_path = _records_dir(out_dir) / (Path(name).stem + ".json")
    try:
        rec = json.loads(rec_path.read_text(encoding="utf-8"))
        if rec.get("settings") != settings:
            return None
        with Image.open(out_dir / "scores" / name) as im:
            if im.mode != "L" or im.size != (shape[1], shape[0]):
                return None
        if settings.get("repair") is not None:
            with Image.open(out_dir / "repaired" / name) as im:
                if im.mode != "P" or im.size != (shape[1], shape[0]):
                    return None
        return rec["summary"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _label_shape(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size[1], im.size[0]


def audit_dataset(
    images_dir: str | Path,
    labels_dir: str | Path,
    out_dir: str | Path,
    *,
    model=None,
    threshold: float = DEFAULT_THRESHOLD,
    repair: float | None = None,
    min_area: float = DEFAULT_MIN_AREA,
    num_masks: int = DEFAULT_MASKS,
    block: int = DEFAULT_BLOCK,
    shifts: int = 1,
    batch_size: int = 8,
    device=None,
    precision: str = "auto",
    worst: int = 8,
    overwrite: bool = False,
    progress: bool = True,
) -> AuditReport:
    """Audit every label of ``labels_dir`` (``<id>.png``, class ids; ids outside the model's classes are
    void) with its image ``images_dir/<id>.<ext>``.

    Writes ``out_dir/scores/<label name>`` (8-bit grayscale, 0 = agrees with its context, 255 = surely
    wrong), ``out_dir/records/<id>.json`` (one label's summary, for resuming), ``out_dir/audit_report.json``
    (every label, worst first) and ``out_dir/worst.png`` (image | label | suspect regions | proposed
    repair for the ``worst`` labels). ``threshold``: the score above which pixels are suspect;
    ``repair``: when given, labels with the suspect pixels above this threshold replaced by the
    leave-out prediction are written to ``out_dir/repaired/<label name>`` (palette kept).

    As :func:`~torch_label_mae.complete_dataset.complete_dataset`: inputs are never written (outputs
    inside an input folder are refused), one run per output folder (a lock), every file is written
    atomically, a rerun skips the labels whose outputs are complete and made with the same settings
    (``overwrite=True`` redoes them), unreadable or mismatched files are reported and the rest go on,
    and SIGINT / SIGTERM finish the batch in hand, write the report and raise ``Interrupted``.
    """
    from .complete_dataset import _load_completer, _too_large, list_pairs
    from .hub import DEFAULT_MODEL
    from .interrupt import GracefulStop, Interrupted
    from .outputs import OutputLock, check_outputs, remove_stale_temp_files

    _check_threshold(threshold, min_area)
    if repair is not None:
        _check_threshold(repair, min_area)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    items = list_pairs(images_dir, labels_dir)
    images_dir, labels_dir, out_dir = Path(images_dir).resolve(), Path(labels_dir).resolve(), Path(out_dir).resolve()
    inputs = [("images folder", images_dir), ("labels folder", labels_dir)]
    inputs += [("input file", p) for it in items for p in (it.image, it.label) if p is not None]
    if labels_dir == out_dir or images_dir == out_dir:
        raise ValueError(f"out_dir {out_dir} is an input folder; choose another folder")
    check_outputs([("out_dir", out_dir)], inputs)
    completer = _load_completer(model if model is not None else DEFAULT_MODEL, device, precision)
    n, names = completer.num_classes, completer.config.class_names
    settings = dict(
        threshold=threshold, repair=repair, min_area=min_area, num_masks=num_masks, block=block, shifts=shifts
    )
    report = AuditReport(total=len(items), model=str(model or DEFAULT_MODEL), settings=settings, out_dir=str(out_dir))
    rpath = out_dir / REPORT_NAME
    for d in ("scores", "records") + (("repaired",) if repair is not None else ()):
        (out_dir / d).mkdir(parents=True, exist_ok=True)
    summaries: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(OutputLock(out_dir))
        for d in ("scores", "records", "repaired"):
            remove_stale_temp_files(out_dir / d, {it.name for it in items} | {f"{it.key}.json" for it in items})
        stop = stack.enter_context(GracefulStop())
        start = time.perf_counter()
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(items), desc="auditing", unit="img", file=sys.stderr, dynamic_ncols=True)
        todo: list[tuple] = []

        def flush():
            if not todo:
                return
            try:
                results = audit_batch(
                    completer,
                    [t[1] for t in todo],
                    [t[2] for t in todo],
                    threshold=min(threshold, repair) if repair is not None else threshold,
                    min_area=min_area,
                    num_masks=num_masks,
                    block=block,
                    shifts=shifts,
                    batch_size=batch_size,
                )
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:
                for it, *_ in todo:
                    report.failed.append((it.name, f"audit failed: {e}"))
                todo.clear()
                return
            for (it, _, label, palette), res in zip(todo, results, strict=True):
                try:
                    summaries[it.name] = _write_outputs(it, label, palette, res, out_dir, settings, n, names)
                    report.done += 1
                except OSError as e:
                    report.failed.append((it.name, f"cannot write output: {e}"))
            if bar is not None:
                bar.update(len(todo))
            todo.clear()

        try:
            for it in items:
                if stop.signum is not None:
                    break
                if it.problem is not None:
                    report.failed.append((it.name, it.problem))
                    if bar is not None:
                        bar.update(1)
                    continue
                try:
                    for path, what in ((it.label, "label"), (it.image, "image")):
                        problem = _too_large(path, what, 25_000_000)
                        if problem is not None:
                            raise ValueError(problem)
                    shape = _label_shape(it.label)
                    old = None if overwrite else _valid_outputs(out_dir, it.name, shape, settings)
                    if old is not None:
                        summaries[it.name] = old
                        report.skipped += 1
                        if bar is not None:
                            bar.update(1)
                        continue
                    label = read_label(it.label)
                    with Image.open(it.label) as im:
                        palette = im.getpalette() if im.mode == "P" else None
                    image = read_image(it.image)
                    if tuple(image.shape[-2:]) != tuple(label.shape):
                        raise ValueError(
                            f"size mismatch: image {it.image.name} is {tuple(image.shape[-2:])} but label "
                            f"{it.label.name} is {tuple(label.shape)} (H, W)"
                        )
                except Exception as e:
                    report.failed.append((it.name, f"cannot read: {e}"))
                    if bar is not None:
                        bar.update(1)
                    continue
                todo.append((it, image, label, palette))
                if len(todo) >= batch_size:
                    flush()
            else:
                report.finished = True
            flush()
        finally:
            if bar is not None:
                bar.close()
            report.seconds = time.perf_counter() - start
            report.images = sorted(
                ({"file": k, **v} for k, v in summaries.items()), key=lambda r: (-r["image_score"], r["file"])
            )
            if report.finished and worst > 0 and report.images:
                try:
                    report.picture = str(
                        _worst_picture(completer, report, images_dir, labels_dir, out_dir, settings, worst)
                    )
                except Exception as e:  # a picture must not cost the report
                    report.failed.append((PICTURE_NAME, f"cannot draw the picture: {e}"))
            report.report_path = str(rpath)
            text = json.dumps(report.to_dict(), indent=2)
            atomic_write(rpath, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    if stop.signum is not None:
        raise Interrupted(stop.signum, report)
    return report


def _write_outputs(it, label, palette, res: AuditResult, out_dir: Path, settings, n, names) -> dict:
    lab = label.numpy()
    score_im = Image.fromarray(res.score_png(), mode="L")
    atomic_write(out_dir / "scores" / it.name, lambda tmp: score_im.save(tmp, format="PNG"))
    thr = settings["threshold"]
    view = finish(res.score, res.predicted, lab, n, thr, settings["min_area"], names) if res.threshold != thr else res
    summary = view.summary()
    if settings["repair"] is not None:
        fix = finish(res.score, res.predicted, lab, n, settings["repair"], settings["min_area"], names)
        assert not ((fix.repaired != lab) & ~fix.flagged).any()
        save_label_png(torch.from_numpy(fix.repaired), out_dir / "repaired" / it.name, palette)
        summary["changed_pixels"] = fix.changed
    else:
        summary["changed_pixels"] = 0
    rec = json.dumps({"settings": settings, "summary": summary})
    atomic_write(_records_dir(out_dir) / f"{Path(it.name).stem}.json", lambda tmp: Path(tmp).write_text(rec))
    return summary


# ----------------------------------------------------------------------------------------------------
# pictures: image | label | suspect regions | proposed repair
# ----------------------------------------------------------------------------------------------------
SUSPECT_COLOR = (255, 0, 255)
SHOWN_SCORE = 0.3  # the score is drawn where above this (the rest: the faded image)


def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=np.ones((3, 3), bool), iterations=2)


def render_audit(rows: Sequence[dict], *, palette=None, class_names=None, panel_width: int = 360) -> Image.Image:
    """One row per label: image | label | suspect regions (the score over the faded image, pale yellow
    = agrees .. dark red = surely wrong, suspect regions outlined in magenta) | proposed repair (the
    label with the suspect regions replaced, outlined). Scores below ``SHOWN_SCORE`` show the faded image.
    ``rows``: dicts with ``image``, ``label``,
    ``result`` (an :class:`AuditResult`) and ``name``."""
    from . import viz

    columns = ["image", "label", "score (orange 0.3 .. dark red 1), suspects", "proposed repair"]
    st = viz._style(panel_width, False)
    line = st.size + st.gap
    shapes, titles, classes = [], [], set()
    width = st.gap + len(columns) * (panel_width + st.gap)
    for r in rows:
        lab, res = np.asarray(r["label"]).astype(np.int64), r["result"]
        shapes.append((max(1, round(lab.shape[0] * panel_width / lab.shape[1])), panel_width))
        parts = [r["name"], f"image score {res.image_score:.4f}", f"{len(res.regions)} suspect regions"]
        for g in res.regions[:2]:
            gn, pn = g.get("given_name", g["given_class"]), g.get("predicted_name", g["predicted_class"])
            parts.append(f"{g['area']} px {gn} -> {pn} ({g['score']:.2f})")
        titles.append(viz._wrap(st.font, parts, width - 2 * st.gap))
        classes |= set(np.unique(lab[(lab >= 0) & (lab < 255)]).tolist())
        classes |= set(np.unique(res.repaired[(res.repaired >= 0) & (res.repaired < 255)]).tolist())
    entries = viz._legend_entries(sorted(classes), palette, class_names, False, True, False)
    entries.append(("suspect region", SUSPECT_COLOR))
    placed, legend_h = viz._legend_layout(entries, width - 2 * st.gap, st)
    height = st.gap + line + sum(len(t) * line + h + st.gap for t, (h, _) in zip(titles, shapes, strict=True))
    height += legend_h + st.gap
    canvas = Image.new("RGB", (width, height), viz.BACKGROUND)
    draw = viz.ImageDraw.Draw(canvas)
    for i, col in enumerate(columns):
        x = st.gap + i * (panel_width + st.gap)
        viz._text_mid(draw, (x, st.gap + st.size // 2), viz._fit(st.font, col, panel_width), st.font)
    y = st.gap + line
    for r, shape, title in zip(rows, shapes, titles, strict=True):
        for text in title:
            viz._text_mid(draw, (st.gap, y + st.size // 2), text, st.font)
            y += line
        res = r["result"]
        lab = viz._resize_nearest(np.asarray(r["label"]).astype(np.int64), shape)
        fixed = viz._resize_nearest(res.repaired.astype(np.int64), shape)
        flagged = viz._resize_nearest(res.flagged, shape)
        image = viz._resize_smooth(viz._image_rgb(r["image"]), shape)
        score = viz._resize_smooth(res.score.astype(np.float32), shape)
        none = np.zeros(shape, dtype=bool)
        heat = viz.heatmap(1.0 - score, (score > SHOWN_SCORE) | flagged, image)
        ring = _outline(flagged)
        heat[ring] = SUSPECT_COLOR
        rep = viz.colorize(fixed, palette, holes=none, void=(fixed < 0) | (fixed >= 255))
        rep[ring] = SUSPECT_COLOR
        panels = [image, viz.colorize(lab, palette, holes=none, void=(lab < 0) | (lab >= 255)), heat, rep]
        for i, p in enumerate(panels):
            canvas.paste(Image.fromarray(p), (st.gap + i * (panel_width + st.gap), y))
        y += shape[0] + st.gap
    viz._draw_legend(canvas, draw, placed, st.gap, y, st)
    return canvas


def _worst_picture(completer, report, images_dir, labels_dir, out_dir, settings, worst: int) -> Path:
    from .complete_dataset import list_pairs

    by_name = {it.name: it for it in list_pairs(images_dir, labels_dir)}
    chosen = [r["file"] for r in report.images[:worst] if r["file"] in by_name]
    images = [read_image(by_name[f].image) for f in chosen]
    labels = [read_label(by_name[f].label) for f in chosen]
    thr = settings["repair"] if settings["repair"] is not None else settings["threshold"]
    results = audit_batch(
        completer,
        images,
        labels,
        threshold=thr,
        min_area=settings["min_area"],
        num_masks=settings["num_masks"],
        block=settings["block"],
        shifts=settings["shifts"],
    )
    with Image.open(by_name[chosen[0]].label) as im:
        palette = im.getpalette() if im.mode == "P" else None
    rows = [
        {"image": im, "label": lab.numpy(), "result": res, "name": f}
        for f, im, lab, res in zip(chosen, images, labels, results, strict=True)
    ]
    canvas = render_audit(
        rows, palette=full_palette(palette) if palette else default_palette(), class_names=completer.config.class_names
    )
    path = out_dir / PICTURE_NAME
    atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))
    return path
