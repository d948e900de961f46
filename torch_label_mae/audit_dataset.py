"""Auditing a whole dataset folder with :func:`torch_label_mae.audit.audit_batch`: the report ranked worst
first, score maps, repaired labels and a picture of the worst labels; resumable and safe like
:mod:`torch_label_mae.complete_dataset` (inputs never written, one writer per folder, atomic outputs)."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from .audit import (
    DEFAULT_BLOCK,
    DEFAULT_MASKS,
    DEFAULT_MIN_AREA,
    DEFAULT_SHIFTS,
    DEFAULT_THRESHOLD,
    IMAGE_SCORE_QUANTILE,
    AuditResult,
    _check_threshold,
    audit_batch,
    audited_classes,
    default_threshold,
    finish,
)
from .data import list_pairs, read_image, read_label_and_palette
from .hub import weights_digest
from .io import atomic_write, full_palette, save_label_png
from .outputs import OutputLock, RunReport, check_outputs, read_json_object, remove_stale_temp_files

REPORT_NAME = "audit_report.json"
PICTURE_NAME = "worst.png"

__all__ = ["AuditReport", "audit_dataset"]


# ----------------------------------------------------------------------------------------------------
# whole folders
# ----------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class AuditReport(RunReport):
    """What :func:`audit_dataset` did (:class:`~torch_label_mae.outputs.RunReport`): ``images`` (one
    summary per label, worst first), the ``model``, its ``settings`` and the ``picture`` of the worst
    (``picture_labels``: ``[file, state of its files]`` of the labels it shows)."""

    model: str = ""
    settings: dict = field(default_factory=dict)
    images: list[dict] = field(default_factory=list)
    picture: str | None = None
    picture_labels: list[list[str]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"{self.done} audited, {self.skipped} already done (skipped), {len(self.failed)} failed of "
            f"{self.total} in {self.seconds:.1f} s" + ("" if self.finished else " [interrupted]"),
            *self.empty_note(),
        ]
        repair = self.settings.get("repair") is not None
        for r in self.images[:5]:
            top = r["regions"][0] if r["regions"] else None
            what = ""
            if top is not None:
                g, p = top.get("given_name", top["given_class"]), top.get("predicted_name", top["predicted_class"])
                what = f"; worst region: {top['area']} px {g} -> {p} (score {top['score']:.2f})"
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


def _input_digest(it) -> str:
    """The size and modification time of a label's file and its image's (read from the directory, no file
    read): a label or image edited, copied or touched since its record was written is audited again."""
    stats = [path.stat() for path in (it.label, it.image)]
    return " ".join(f"{s.st_size}:{s.st_mtime_ns}" for s in stats)


def _valid_outputs(out_dir: Path, name: str, shape, settings: dict, inputs: str) -> dict | None:
    """The stored summary of ``name`` when its record, score map (and repaired label, with repair) are
    complete and were made with the same settings from the same files (``inputs``: their digest); else None."""
    rec_path = _records_dir(out_dir) / (Path(name).stem + ".json")
    rec = read_json_object(rec_path) or {}
    try:
        if rec.get("settings") != settings or rec.get("inputs") != inputs:
            return None
        with Image.open(out_dir / "scores" / name) as im:
            if im.mode != "L" or im.size != (shape[1], shape[0]):
                return None
        if settings.get("repair") is not None:
            with Image.open(out_dir / "repaired" / name) as im:
                # a 16-bit repair reads as mode I before Pillow 10.3
                if im.mode not in ("P", "I;16", "I") or im.size != (shape[1], shape[0]):
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
    threshold: float | None = None,
    repair: float | str | None = None,
    min_area: float = DEFAULT_MIN_AREA,
    num_masks: int = DEFAULT_MASKS,
    block: int = DEFAULT_BLOCK,
    shifts: int = DEFAULT_SHIFTS,
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
    repair for the ``worst`` labels). ``threshold``: the score above which pixels are suspect (None: the
    model's, :func:`~torch_label_mae.audit.default_threshold`); ``repair``: when given (``"auto"``: the
    threshold), labels with the suspect pixels above this threshold replaced by the
    leave-out prediction are written to ``out_dir/repaired/<label name>`` (palette kept); without it, the
    repaired file an earlier run left for a label audited again is removed.

    As :func:`~torch_label_mae.complete_dataset.complete_dataset`: inputs are never written (outputs
    inside an input folder are refused), one run per output folder (a lock), every file is written
    atomically, a rerun skips the labels whose outputs are complete and made with the same settings
    (``overwrite=True`` redoes them), unreadable or mismatched files are reported and the rest go on,
    and SIGINT / SIGTERM finish the batch in hand, write the report and raise ``Interrupted``.
    """
    from .complete_dataset import _load_completer
    from .hub import DEFAULT_MODEL

    _check_threshold(DEFAULT_THRESHOLD if threshold is None else threshold, min_area)  # min_area too, up front
    if repair is not None and repair != "auto":
        _check_threshold(repair, min_area, name="repair")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(worst, bool) or not isinstance(worst, int) or worst < 0:
        raise ValueError(f"worst must be an integer >= 0 (0: no picture), got {worst!r}")
    items = list_pairs(images_dir, labels_dir)
    images_dir, labels_dir, out_dir = Path(images_dir).resolve(), Path(labels_dir).resolve(), Path(out_dir).resolve()
    inputs = [("images folder", images_dir), ("labels folder", labels_dir)]
    inputs += [("input file", p) for it in items for p in (it.image, it.label) if p is not None]
    if labels_dir == out_dir or images_dir == out_dir:
        raise ValueError(f"out_dir {out_dir} is an input folder; choose another folder")
    written = [("out_dir", out_dir), *((f"out_dir/{d}", out_dir / d) for d in ("scores", "repaired", "records"))]
    check_outputs(written + [("report", out_dir / REPORT_NAME), ("picture", out_dir / PICTURE_NAME)], inputs)
    completer = _load_completer(model if model is not None else DEFAULT_MODEL, device, precision)
    threshold = default_threshold(completer) if threshold is None else threshold
    repair = threshold if repair == "auto" else repair
    settings = dict(
        threshold=threshold,
        repair=repair,
        min_area=min_area,
        num_masks=num_masks,
        block=block,
        shifts=shifts,
        image_score=IMAGE_SCORE_QUANTILE,  # records of an earlier image score: redone, not skipped
        model=weights_digest(completer.model),  # another model, same settings: redone, not skipped
        label_set=completer.label_set.to_dict() if completer.label_set is not None else None,  # classes, names
    )
    report = AuditReport(total=len(items), model=str(model or DEFAULT_MODEL), settings=settings, out_dir=str(out_dir),
                         labels_dir=str(labels_dir))  # fmt: skip
    run = _AuditRun(completer, report, out_dir, settings, batch_size, overwrite)
    run.run(items, progress, (images_dir, labels_dir) if worst > 0 else None, worst)
    return report


class _AuditRun:
    """One ``audit_dataset`` run: reads the labels in order, audits them in batches, writes the outputs
    and, at the end, the picture of the worst and the report."""

    def __init__(self, completer, report: AuditReport, out_dir: Path, settings: dict, batch_size: int, overwrite):
        self.completer, self.report, self.out_dir, self.settings = completer, report, out_dir, settings
        self.batch_size, self.overwrite = batch_size, overwrite
        self.summaries: dict[str, dict] = {}
        self.todo: list[tuple] = []
        self.bar = None

    def _tick(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def _read(self, it) -> tuple | None:
        """``(item, image, label, palette, inputs digest)`` to audit, or None when valid outputs exist (skipped)."""
        from .complete_dataset import MAX_PIXELS, _too_large

        for path, what in ((it.label, "label"), (it.image, "image")):
            problem = _too_large(path, what, MAX_PIXELS, "complete_dataset.MAX_PIXELS")
            if problem is not None:
                raise ValueError(problem)
        inputs = _input_digest(it)
        old = None
        if not self.overwrite:
            old = _valid_outputs(self.out_dir, it.name, _label_shape(it.label), self.settings, inputs)
        if old is not None:
            self.summaries[it.name] = old
            return None
        label, palette = read_label_and_palette(it.label)
        image = read_image(it.image)
        if tuple(image.shape[-2:]) != tuple(label.shape):
            raise ValueError(
                f"size mismatch: image {it.image.name} is {tuple(image.shape[-2:])} but label "
                f"{it.label.name} is {tuple(label.shape)} (H, W)"
            )
        return it, image, label, palette, inputs

    def _flush(self) -> None:
        """Audit the labels read so far and write their outputs."""
        todo, st, report = self.todo, self.settings, self.report
        if not todo:
            return
        try:
            results = audit_batch(
                self.completer,
                [t[1] for t in todo],
                [t[2] for t in todo],
                threshold=min(st["threshold"], st["repair"]) if st["repair"] is not None else st["threshold"],
                min_area=st["min_area"],
                num_masks=st["num_masks"],
                block=st["block"],
                shifts=st["shifts"],
                batch_size=self.batch_size,
                files=[t[0].name for t in todo],
            )
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:
            report.failed += [(it.name, f"audit failed: {e}") for it, *_ in todo]
            todo.clear()
            return
        n, names = audited_classes(self.completer), self.completer.class_names
        for (it, _, label, palette, inputs), res in zip(todo, results, strict=True):
            try:
                self.summaries[it.name] = _write_outputs(it, label, palette, res, self.out_dir, (st, inputs), n, names)
                report.done += 1
            except (OSError, ValueError) as e:
                report.failed.append((it.name, f"cannot write output: {e}"))
        self._tick(len(todo))
        todo.clear()

    def _loop(self, items, stop) -> None:
        for it in items:
            if stop.signum is not None:
                return
            if it.problem is not None:
                self.report.failed.append((it.name, it.problem))
                self._tick()
                continue
            try:
                rec = self._read(it)
            except Exception as e:
                self.report.failed.append((it.name, f"cannot read: {e}"))
                self._tick()
                continue
            if rec is None:
                self.report.skipped += 1
                self._tick()
                continue
            self.todo.append(rec)
            if len(self.todo) >= self.batch_size:
                self._flush()
        self.report.finished = True

    def run(self, items, progress: bool, folders, worst: int) -> None:
        """Audit ``items`` under the output folder's lock; SIGINT / SIGTERM finish the batch in hand, write
        the report and raise :class:`~torch_label_mae.interrupt.Interrupted`."""
        from .interrupt import GracefulStop, Interrupted

        out_dir, report = self.out_dir, self.report
        for d in ("scores", "records") + (("repaired",) if self.settings["repair"] is not None else ()):
            (out_dir / d).mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            stack.enter_context(OutputLock(out_dir))
            for d in ("scores", "records", "repaired"):
                remove_stale_temp_files(out_dir / d, {it.name for it in items} | {f"{it.key}.json" for it in items})
            stop = stack.enter_context(GracefulStop())
            start = time.perf_counter()
            if progress:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=len(items), desc="auditing", unit="img", file=sys.stderr, dynamic_ncols=True)
            try:
                self._loop(items, stop)
                self._flush()
            finally:
                if self.bar is not None:
                    self.bar.close()
                stopped = stop.signum is not None  # before the picture: it is left for the rerun
                self._finish(None if stopped else folders, worst, start)
        if stopped:  # (a stop while the picture is drawn comes after the work: nothing is left to do)
            raise Interrupted(stop.signum, report)

    def _finish(self, folders, worst: int, start: float) -> None:
        """The labels worst first, the picture of the worst (when finished and ``folders`` are given) and
        the report, written; ``start``: the run's start (``time.perf_counter``)."""
        report, out_dir = self.report, self.out_dir
        report.images = sorted(
            ({"file": k, **v} for k, v in self.summaries.items()), key=lambda r: (-r["image_score"], r["file"])
        )
        if report.finished and folders is not None and report.images:
            try:
                path = _worst_picture(self.completer, report, *folders, out_dir, self.settings, worst)
                report.picture = str(path)
            except Exception as e:  # a picture must not cost the report
                report.failed.append((PICTURE_NAME, f"cannot draw the picture: {e}"))
        report.seconds = time.perf_counter() - start
        rpath = out_dir / REPORT_NAME
        report.report_path = str(rpath)
        text = json.dumps(report.to_dict(), indent=2)
        atomic_write(rpath, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _write_outputs(it, label, palette, res: AuditResult, out_dir: Path, run: tuple[dict, str], n, names) -> dict:
    """Write one label's score map, repaired label (with repair) and, last, its record (``run``: the
    settings and the inputs' digest); returns its summary."""
    settings, inputs = run
    lab = label.numpy()
    score_im = Image.fromarray(res.score_png(), mode="L")
    atomic_write(out_dir / "scores" / it.name, lambda tmp: score_im.save(tmp, format="PNG"))
    thr = settings["threshold"]
    view = finish(res.score, res.predicted, lab, n, thr, settings["min_area"], names) if res.threshold != thr else res
    summary = view.summary()
    if settings["repair"] is not None:
        fix = finish(res.score, res.predicted, lab, n, settings["repair"], settings["min_area"], names)
        if ((fix.repaired != lab) & ~fix.flagged).any():  # finish() never does this (tests/test_audit.py)
            raise RuntimeError(f"{it.name}: a repair changed pixels it did not flag; nothing written for it")
        save_label_png(torch.from_numpy(fix.repaired), out_dir / "repaired" / it.name, palette)
        summary["changed_pixels"] = fix.changed
    else:
        summary["changed_pixels"] = 0
        (out_dir / "repaired" / it.name).unlink(missing_ok=True)  # an earlier run's repair: not this run's
    rec = json.dumps({"settings": settings, "inputs": inputs, "summary": summary})
    atomic_write(_records_dir(out_dir) / f"{Path(it.name).stem}.json", lambda tmp: Path(tmp).write_text(rec))
    return summary


# ----------------------------------------------------------------------------------------------------
# pictures: image | label | suspect regions | proposed repair
# ----------------------------------------------------------------------------------------------------
def _worst_picture(completer, report, images_dir, labels_dir, out_dir, settings, worst: int) -> Path:
    """Draw ``worst.png`` of the first ``worst`` labels of the report (audited again: their score maps
    are 8-bit): suspect regions at the report's threshold, the repair at the repair threshold."""
    by_name = {it.name: it for it in list_pairs(images_dir, labels_dir)}
    chosen = [r["file"] for r in report.images[:worst] if r["file"] in by_name]
    path = out_dir / PICTURE_NAME
    shown = [[f, _input_digest(by_name[f])] for f in chosen]  # the labels and the state of their files
    old = _read_report(out_dir)
    if old.get("settings") == settings and old.get("picture_labels") == shown and path.is_file():
        report.picture_labels = shown  # the picture there shows these labels as they are
        return path
    images = [read_image(by_name[f].image) for f in chosen]
    read = [read_label_and_palette(by_name[f].label) for f in chosen]
    labels = [label for label, _ in read]
    thr, repair, n, names = settings["threshold"], settings["repair"], audited_classes(completer), completer.class_names
    kw = {k: settings[k] for k in ("min_area", "num_masks", "block", "shifts")}
    results, rows = audit_batch(completer, images, labels, threshold=thr, files=chosen, **kw), []
    for f, im, lab, res in zip(chosen, images, labels, results, strict=True):
        row = {"image": im, "label": lab.numpy(), "result": res, "name": f}
        if repair is not None and repair != thr:
            row["repair"] = finish(res.score, res.predicted, row["label"], n, repair, settings["min_area"], names)
        rows.append(row)
    from .viz import render_audit

    canvas = render_audit(rows, palette=full_palette(read[0][1] if read else None), class_names=names)
    atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))
    report.picture_labels = shown
    return path


def _read_report(out_dir: Path) -> dict:
    """The report an earlier run left in ``out_dir`` ({} when none is readable)."""
    return read_json_object(out_dir / REPORT_NAME) or {}
