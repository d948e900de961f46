"""``label-mae``: thin command-line front end; every command calls the Python API.

Commands: demo, complete, audit, fit, evaluate, train, degrade, show, list.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
from pathlib import Path

from .hub import DEFAULT_MODEL
from .outputs import OutputWriteError, check_outputs

SAMPLES = Path(__file__).resolve().parent / "samples"


def _add_folders(p: argparse.ArgumentParser, labels_help: str, out_help: str | None = None) -> None:
    """The required ``--images`` and ``--labels`` folders, and ``--out`` when ``out_help`` is given."""
    p.add_argument("--images", required=True, help="folder of images (<id>.jpg / .png / ...)")
    p.add_argument("--labels", required=True, help=labels_help)
    if out_help:
        p.add_argument("--out", required=True, help=out_help)


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        help="registered name (see `label-mae list`), dataset name, local folder or Hub repo id "
        f"(default: {DEFAULT_MODEL})",
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "float32", "bfloat16"],  # completer.PRECISIONS; literal: --help stays free of torch
        help="auto: bfloat16 on CUDA and on CPUs with AMX, float32 elsewhere (default: auto)",
    )


def _load(args):
    from .completer import LabelCompleter

    return LabelCompleter.from_pretrained(args.model or DEFAULT_MODEL, device=args.device, precision=args.precision)


def cmd_list(args) -> int:
    from .hub import bundled_dir, list_pretrained

    rows = [("name", "classes", "files", "ratio", "")]
    for name, e in list_pretrained().items():
        if e.weights is not None:  # a preset: another name's files
            where = f"{e.weights}'s files, " + ("bundled: loads offline" if e.offline else "Hub only")
        else:
            where = "bundled: works offline" if e.bundled else "Hub only: downloaded on first use"
        local = bundled_dir(e.files)
        if not e.offline and local is not None:
            where += f"; this source checkout reads {local}"
        kind = "class-specific"
        if e.class_agnostic:
            kind = f"class-agnostic, label set {e.label_set}" if e.label_set else "class-agnostic, any ids"
        rows.append((name, kind, f"{e.repo_id}@{e.revision}", f"{e.ratio:g}", f"({where})"))
    widths = [max(len(r[k]) for r in rows) for k in range(4)]
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths + [0], strict=True)).rstrip())
    return 0


def cmd_demo(args) -> int:
    """Break the bundled sample labels, complete them, compare with nearest fill, write a picture."""

    from .data import check_degrade_args, degrade, pair_files, read_image, read_label_and_palette
    from .evaluate import UNFILLED
    from .metrics import SegmentationMetrics
    from .propagation import nearest_fill
    from .viz import Row, hole_accuracy, save_picture

    check_degrade_args(args.ratio, args.block, "--block")
    completer = _load(args)
    n = completer.num_classes
    pairs = pair_files(SAMPLES / "images", SAMPLES / "labels")
    images, labels, brokens, missings = [], [], [], []
    palette = None
    for key, ip, lp in pairs:
        image, (label, own) = read_image(ip), read_label_and_palette(lp)
        palette = palette or own
        broken, missing = degrade(label, args.ratio, args.block, seed=key, mode="blocks")
        images.append(image), labels.append(label), brokens.append(broken), missings.append(missing)
    # the holes by their maps: a preset's own hole value (voc-m0.5: 254) is not the 255 degrade writes
    filled, conf = completer.complete_batch(images, brokens, missings, return_confidence=True)
    ours, near = (SegmentationMetrics(n, unfilled_index=UNFILLED) for _ in range(2))
    rows = []
    for (key, _, _), image, label, broken, missing, f, c in zip(
        pairs, images, labels, brokens, missings, filled, conf, strict=True
    ):
        nf = nearest_fill(broken.unsqueeze(0))[0]
        ours.update(f, label, missing)
        near.update(nf, label, missing)
        acc, _ = hole_accuracy(nf, label, missing)
        note = f"nearest fill {acc:.1%}" if acc is not None else ""
        rows.append(Row(image, broken, f, c, truth=label, name=key, note=note, holes=missing & (label != 255)))
    # the samples are CamVid's: a class-agnostic model's label set (voc-m0.5) would name them wrongly
    names = None if completer.config.class_agnostic else completer.class_names
    out, _ = save_picture(rows, args.out, palette=palette, class_names=names)
    a, b = ours.compute(), near.compute()
    print(
        f"model {args.model or DEFAULT_MODEL} on {len(pairs)} bundled CamVid samples, {args.ratio:.0%} of "
        f"{args.block}px blocks hidden:"
    )
    print(f"  PA-mIoU   L-MAE {100 * a['pa_miou']:5.1f}   nearest fill {100 * b['pa_miou']:5.1f}")
    print(f"  PA-acc    L-MAE {100 * a['pa_pixel_acc']:5.1f}   nearest fill {100 * b['pa_pixel_acc']:5.1f}")
    print(f"  picture (image | broken | completed | truth | error on holes | confidence): {out}")
    return 0


def cmd_evaluate(args) -> int:
    from .data import FolderDataset
    from .evaluate import completer_method, evaluate
    from .report import format_report

    check_outputs([("--json", args.json)], [("--data", args.data)])
    completer = _load(args)
    ds = FolderDataset(args.data, args.split)

    res = evaluate(
        completer_method(completer, args.batch_size),
        ds,
        ds.info.num_classes if completer.config.class_agnostic else completer.num_classes,
        protocol=args.protocol,
        ratio=args.ratio,
        seed=args.seed,
        batch_size=args.batch_size,
        limit=args.limit,
    )
    res["model"], res["data"], res["split"], res["protocol"], res["ratio"] = (
        args.model or DEFAULT_MODEL,
        str(args.data),
        args.split,
        args.protocol,
        args.ratio,
    )
    print(format_report(res, ds.info.classes))
    if args.json:
        from .io import atomic_write

        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(res, indent=2)))
    return 0


def _unit_float(text: str) -> float:
    """argparse type: a number in [0, 1] (argparse prints the message and exits with status 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _score_threshold(text: str) -> float:
    """argparse type of an audit threshold (``--threshold``, ``--repair``, ``--min-area``): a number in
    [0, 1) (a score is at most 1: a threshold of 1 would flag nothing)."""
    value = _unit_float(text)
    if value == 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1) (below 1), got {text}")
    return value


def _repair_threshold(text: str) -> float | str:
    """argparse type of ``--repair``: a number in [0, 1), or ``auto`` (the audit's threshold)."""
    return text if text == "auto" else _score_threshold(text)


def _int_in(text: str, lo: int, hi: int | None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < lo or (hi is not None and value > hi):
        raise argparse.ArgumentTypeError(f"must be {f'in {lo}..{hi}' if hi is not None else f'>= {lo}'}, got {text}")
    return value


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_in(text, 1, None)


def _byte(text: str) -> int:
    """argparse type: an integer in 0..255."""
    return _int_in(text, 0, 255)


def _label_value(text: str) -> int:
    """argparse type: a value a label PNG can hold (8, 16 or 32 bits): an integer in 0..2^31 - 1."""
    return _int_in(text, 0, 2**31 - 1)


def cmd_degrade(args) -> int:
    from .data import degrade_folder

    with warnings.catch_warnings(record=True) as caught:  # told as the command's, not as a code location
        warnings.simplefilter("always")
        n = degrade_folder(
            args.labels, args.out, ratio=args.ratio, block=args.block, seed=args.seed, missing_index=args.missing_index
        )
    for w in caught:
        print(f"label-mae degrade: warning: {w.message}", file=sys.stderr)
    empty = "" if n else f" (nothing to do: no label PNG in {args.labels})"
    print(f"wrote {n} degraded labels to {args.out}{empty}")
    return 0


# complete_dataset's argument names -> label-mae complete's flags, for its messages (and in_place=True: --in-place)
_FLAGS = {
    "out_dir": "--out",
    "confidence_dir": "--confidence-dir",
    "batch_size": "--batch-size",
    "num_workers": "--num-workers",
    "max_pixels": "--max-pixels",
    "max_batch_pixels": "--max-batch-pixels",
    "missing_index": "--missing-index",
    "void_index": "--void-index",
    "voc_root": "--voc",
    "val_fraction": "--val-fraction",
    "val_images": "--val-images",
    "images_dir": "--images",
    "labels_dir": "--labels",
}


def _cli_words(message: str) -> str:
    """A message of the Python API in the words of the command line (flags for argument names)."""
    names = "|".join(re.escape(k) for k in _FLAGS)
    message = message.replace("in_place=True", "--in-place")
    message = re.sub(rf"\b({names})=(?=[\w.-])", lambda m: _FLAGS[m.group(1)] + " ", message)  # name=value
    message = re.sub(rf"\b({names})\b(?!=)", lambda m: _FLAGS[m.group(1)], message)
    return re.sub(r"^report ", "--report ", message)


def cmd_complete(args) -> int:
    from .complete_dataset import CompletionError, Interrupted, complete_dataset

    if args.voc is not None and (args.images is not None or args.labels is not None):
        raise ValueError("--voc cannot be combined with --images / --labels")
    if args.voc is None and (args.images is None or args.labels is None):
        raise ValueError("give --images and --labels (or --voc ROOT --image-set SET)")
    try:
        report = complete_dataset(
            args.images,
            args.labels,
            args.out,
            model=args.model,
            missing_index=args.missing_index,
            void_index=args.void_index,
            colors=args.colors,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            device=args.device,
            precision=args.precision,
            confidence_dir=args.confidence_dir,
            overwrite=args.overwrite,
            in_place=args.in_place,
            strict=args.strict,
            report_path=args.report,
            progress=not args.quiet,
            voc_root=args.voc,
            image_set=args.image_set,
            max_pixels=args.max_pixels,
            max_batch_pixels=args.max_batch_pixels,
        )
    except CompletionError as e:
        print(f"label-mae complete: stopped at the first failure (--strict): {e}", file=sys.stderr)
        return 1
    except OutputWriteError as e:  # the outputs cannot be written: what was done, and why it stopped
        print(e.report.summary() if e.report is not None else f"label-mae complete: error: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:  # SIGINT / SIGTERM: the current files were finished, the report written
        print(e.report.summary(), file=sys.stderr)
        print(f"label-mae complete: {e}; rerun the same command to finish", file=sys.stderr)
        return e.exit_code
    except ValueError as e:  # an argument refused: say it with the command's flags
        raise ValueError(_cli_words(str(e))) from None
    print(report.summary())
    return 0 if report.ok else 1


def cmd_audit(args) -> int:
    from .audit_dataset import audit_dataset
    from .interrupt import Interrupted

    try:
        report = audit_dataset(
            args.images,
            args.labels,
            args.out,
            model=args.model or DEFAULT_MODEL,
            threshold=args.threshold,
            repair=args.repair,
            min_area=args.min_area,
            num_masks=args.masks,
            shifts=args.shifts,
            batch_size=args.batch_size,
            device=args.device,
            precision=args.precision,
            worst=args.worst,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except Interrupted as e:
        print(e.report.summary(), file=sys.stderr)
        print(f"label-mae audit: {e}; rerun the same command to finish", file=sys.stderr)
        return e.exit_code
    except ValueError as e:
        raise ValueError(_cli_words(str(e))) from None
    print(report.summary())
    return 0 if report.ok else 1


def _show_conventions(args) -> tuple[list[str] | None, int]:
    """``(class names, missing index)`` of `show`: the names from --classes (a dataset.json), else
    --model's, else none; the holes' index from --missing-index, else --model's (its label set's), else 255."""
    completer = None
    if args.model:
        from .completer import LabelCompleter

        completer = LabelCompleter.from_pretrained(args.model, device="cpu")
    missing = args.missing_index
    if missing is None:
        missing = completer.conventions()[0] if completer is not None else 255
    return _show_class_names(args, completer), missing


def _show_class_names(args, completer) -> list[str] | None:
    """Class names for the legend of `show`: from --classes (a dataset.json), else ``completer``'s, else None."""
    if args.classes:
        try:
            names = json.loads(Path(args.classes).read_text()).get("classes")
        except (OSError, ValueError, AttributeError) as e:
            raise ValueError(f"--classes {args.classes}: cannot read a JSON object with 'classes' ({e})") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"--classes {args.classes}: 'classes' must be a list of names")
        return names
    return completer.class_names if completer is not None else None


def _show_keys(args, labels: Path, completed: Path, truth: Path | None, missing: int) -> list[str]:
    """The ids `show` draws: --files, else --limit of the completed PNGs, spread evenly over the
    sorted names or the worst (lowest PA accuracy on holes, needs --truth)."""
    from .data import read_label
    from .viz import hole_accuracy, hole_void_maps, pick_spread, pick_worst

    if args.files:
        return [Path(f).stem for f in args.files]
    keys = sorted(p.stem for p in completed.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))
    pick = args.pick or ("worst" if truth is not None else "spread")
    if pick == "spread":
        return pick_spread(keys, args.limit)
    if truth is None:
        raise ValueError("--pick worst needs --truth (the labels to score against)")
    scores = {}
    for key in keys:
        if (truth / f"{key}.png").is_file() and (labels / f"{key}.png").is_file():
            t, done, lab = (read_label(d / f"{key}.png") for d in (truth, completed, labels))
            if not t.shape == done.shape == lab.shape:
                raise ValueError(
                    f"{truth / f'{key}.png'}: the truth is {t.shape} (H, W) but the label is {lab.shape} and the "
                    f"completed label {done.shape}"
                )
            holes, _ = hole_void_maps(lab, t, missing)
            scores[key] = hole_accuracy(done, t, holes)[0]
    return pick_worst(scores, args.limit)


def cmd_show(args) -> int:
    import numpy as np
    from PIL import Image

    from .data import IMAGE_EXTS, read_image, read_label, read_label_and_palette
    from .viz import Row, save_picture

    images, labels, completed = Path(args.images), Path(args.labels), Path(args.completed)
    truth = Path(args.truth) if args.truth else None
    for d in (images, labels, completed, truth):
        if d is not None and not d.is_dir():
            raise FileNotFoundError(f"{d}: no such folder")
    check_outputs(
        [("--out", args.out)],
        [
            ("--images", images),
            ("--labels", labels),
            ("--completed", completed),
            ("--confidence-dir", args.confidence_dir),
            ("--truth", truth),
        ],
    )
    (names, missing), rows, palette = _show_conventions(args), [], None
    keys = _show_keys(args, labels, completed, truth, missing)
    if not keys:
        raise ValueError(f"{completed}: no completed label PNGs to show")
    for key in keys:
        found = [p for p in (images / f"{key}{e}" for e in IMAGE_EXTS) if p.is_file()]
        if not found:
            raise FileNotFoundError(f"{images}: no image for {key!r}")
        label_path, done_path = labels / f"{key}.png", completed / f"{key}.png"
        label, own = read_label_and_palette(label_path)
        palette = palette or own
        conf = None
        if args.confidence_dir:
            with Image.open(Path(args.confidence_dir) / f"{key}.png") as im:
                conf = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
        t = read_label(truth / f"{key}.png") if truth is not None else None
        rows.append(Row(read_image(found[0]), label, read_label(done_path), conf, t, name=key))
    out, layout = save_picture(
        rows,
        args.out,
        palette=palette,
        class_names=names,
        missing_index=missing,
        panel_width=args.panel_width,
    )
    print(f"wrote {out} ({len(rows)} rows: {' | '.join(layout['columns'])}): {' '.join(keys)}")
    return 0


COMPLETE_EPILOG = """\
examples:
  # complete every label of a folder pair (pixels = 255 are missing); outputs keep names and palettes
  label-mae complete --images data/images --labels data/labels --out data/completed

  # your own model, confidence maps, 4 reader processes, on the GPU
  label-mae complete --images data/images --labels data/labels --out data/completed \\
      --model runs/mine/best --confidence-dir data/confidence --num-workers 4 --device cuda

  # Pascal VOC (torchvision layout: ROOT/VOCdevkit/VOC2012/...); holes marked 254, borders (255) kept
  label-mae complete --voc ~/data --image-set train --out voc-completed
  # the same with another model: give VOC's conventions
  label-mae complete --voc ~/data --image-set train --out voc-completed --model runs/mine/best \
      --void-index 255 --missing-index 254

  # colour-coded labels (RGB PNGs in CamVid's colours, white = missing): RGB PNGs out
  label-mae complete --images data/images --labels data/colour-labels --out data/completed --colors camvid

  # several processes / GPUs: each rank takes every k-th file and writes completion_report.rank<k>.json
  torchrun --standalone --nproc-per-node 2 -m torch_label_mae complete --images I --labels L --out O

Rerunning the same command skips outputs that are already complete and valid (--overwrite redoes
them); a killed run loses nothing. Files that cannot be completed (unreadable, size mismatch, ids out
of range, unpaired) are listed with the reason in the JSON report (default OUT/completion_report.json)
and the exit status is 1; --strict stops at the first one instead.
"""

SHOW_EPILOG = """\
examples:
  label-mae show --images data/images --labels data/broken --completed data/completed --out check.png
  label-mae show --images data/images --labels data/broken --completed data/completed \\
      --confidence-dir data/confidence --files 0001TP_006690 0001TP_006720 --out check.png
  # the 6 worst completions, scored against the complete labels, with class names
  label-mae show --images data/images --labels data/broken --completed data/completed \\
      --truth data/labels --limit 6 --classes data/dataset.json --out worst.png
"""


def cmd_fit(args) -> int:
    from .fit_dataset import fit_dataset

    try:
        fit_dataset(
            args.images,
            args.labels,
            args.out,
            init=args.init,
            minutes=args.minutes,
            missing_index=args.missing_index,
            void_index=args.void_index,
            colors=args.colors,
            val_fraction=args.val_fraction,
            val_images=args.val_images,
            batch_size=args.batch_size,
            seed=args.seed,
            resume=args.resume,
            max_steps=args.max_steps,
            threads=args.threads,
            progress=not args.quiet,
            agnostic=args.agnostic,
            hide_unknown=args.hide_unknown,
        )
    except ValueError as e:
        raise ValueError(_cli_words(str(e))) from None
    return 0


def main(argv=None) -> int:
    ap = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:  # its own parser (also the entry point under torchrun)
        from .train import main_train

        main_train(argv[1:])
        return 0
    args = ap.parse_args(argv)
    if not getattr(args, "fn", None):  # bare `label-mae`: usage and an error, as argparse does
        ap.print_usage(sys.stderr)
        print("label-mae: error: a command is required; `label-mae --help` lists them", file=sys.stderr)
        return 2
    formatting = warnings.formatwarning  # a warning reads as the command's, not as a line of the package
    warnings.formatwarning = lambda message, category, *_, **__: (
        f"label-mae {args.cmd}: {'warning' if category is UserWarning else category.__name__}: {message}\n"
    )
    try:
        return args.fn(args)
    except BrokenPipeError:  # output piped into e.g. `head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:  # Ctrl-C outside a run that stops cleanly (e.g. while loading)
        again = "; rerun with --resume to continue" if args.cmd == "fit" else ""
        print(f"label-mae {args.cmd}: interrupted{again}", file=sys.stderr)
        return 130
    except OutputWriteError as e:  # the outputs cannot be written: not a usage error
        print(f"label-mae {args.cmd}: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"label-mae {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path that cannot be written or read: a folder, a file in the way, no permission
        path = e.filename2 or e.filename  # a rename's target, not the temp file beside it
        where = f"{path}: " if path else ""
        print(f"label-mae {args.cmd}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = formatting


def build_parser() -> argparse.ArgumentParser:
    """The ``label-mae`` parser with every command but ``train`` (which has its own)."""
    ap = argparse.ArgumentParser(
        prog="label-mae",
        description="Complete broken semantic-segmentation labels with L-MAE (label masked autoencoder).",
    )
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")
    _add_demo(sub)
    _add_evaluate(sub)
    _add_degrade(sub)
    _add_complete(sub)
    _add_audit(sub)
    _add_fit(sub)
    _add_show(sub)
    sub.add_parser("train", help="train a model (see `label-mae train --help`)", add_help=False)
    _add_list(sub)
    return ap


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="complete the bundled sample labels and write a side-by-side picture")
    _add_model(p)
    p.add_argument("--out", default="label-mae-demo.png", help="picture to write (default: %(default)s)")
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of blocks to hide (default: %(default)s)")
    p.add_argument("--block", type=int, default=32, help="hole size in pixels (default: %(default)s)")
    p.set_defaults(fn=cmd_demo)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="PA-mIoU / mIoU / accuracy of a model on a dataset split")
    _add_model(p)
    p.add_argument("--data", required=True, help="dataset root (dataset.json, <split>/images, <split>/labels)")
    p.add_argument("--split", default="val", help="split folder under --data (default: %(default)s)")
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of patches hidden (default: %(default)s)")
    p.add_argument(
        "--protocol",
        choices=["paper", "native"],
        default="paper",
        help="paper: 224x224, 16px patches; native: original size, 32px blocks (default: %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=int,
        nargs="+",
        default=[0],
        help="degradation seed(s) (holes are seeded per image id); several: every image once per seed, "
        "counted together, with each draw's PA-mIoU (e.g. --seed 0 1 2; default: 0)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: %(default)s)")
    p.add_argument("--limit", type=_positive_int, help="evaluate the first N images only")
    p.add_argument("--json", help="also write the results as JSON here")
    p.set_defaults(fn=cmd_evaluate)


def _add_degrade(sub) -> None:
    p = sub.add_parser("degrade", help="write a degraded copy of a label folder (holes = --missing-index)")
    p.add_argument("--labels", required=True, help="folder of label PNGs")
    p.add_argument("--out", required=True, help="output folder (must differ from --labels)")
    p.add_argument(
        "--ratio", type=_unit_float, default=0.5, help="fraction of blocks to hide, 0..1 (default: %(default)s)"
    )
    p.add_argument("--block", type=_positive_int, default=32, help="hole size in pixels, >= 1 (default: %(default)s)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the holes, combined with each file's id (default: %(default)s)"
    )
    p.add_argument(
        "--missing-index", type=_byte, default=255, help="id written into the holes, 0..255 (default: %(default)s)"
    )
    p.set_defaults(fn=cmd_degrade)


def _add_complete(sub) -> None:
    p = sub.add_parser(
        "complete",
        help="complete every label of a dataset folder (resumable, atomic, sharded under torchrun)",
        description="Complete the missing pixels (--missing-index) of every label of a dataset and write\n"
        "palette PNGs with the same names and sizes to --out. Inputs are never modified.",
        epilog=COMPLETE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("input (either --images and --labels, or --voc)")
    src.add_argument("--images", help="folder of images (<id>.jpg / .png / ...)")
    src.add_argument("--labels", help="folder of label PNGs (<id>.png, class ids, --missing-index = missing)")
    src.add_argument(
        "--voc",
        metavar="ROOT",
        help="Pascal VOC root (ROOT/VOCdevkit/VOC2012), instead of --images/--labels; its default model is "
        "voc-m0.5 (holes 254, VOC's 255 borders kept)",
    )
    src.add_argument("--image-set", default="train", help="VOC image set: train, val, trainval (default: %(default)s)")
    p.add_argument("--out", required=True, help="output folder for the completed labels (not inside --labels)")
    _add_model(p)
    p.add_argument(
        "--missing-index",
        type=_label_value,
        default=None,
        help="label value of missing pixels, >= 0 (default: the model's: 254 for the dataset presets voc-m0.5, "
        "cityscapes-m0.5, ade20k-m0.5, else 255)",
    )
    p.add_argument(
        "--void-index",
        type=_byte,
        default=None,
        help="the dataset's own ignore label, 0..255, kept as it is (never filled); must differ from "
        "--missing-index, e.g. --void-index 255 --missing-index 254 for Pascal VOC's borders (default: the "
        "model's: 255 for the dataset presets, else none)",
    )
    p.add_argument(
        "--colors",
        metavar="NAME|FILE",
        help="colour table for RGB labels: camvid, cityscapes, voc or a JSON file (see torch_label_mae.colors); "
        "RGB labels are read through it (white = missing unless the table says otherwise) and written as RGB PNGs "
        "(default: the model's: voc for voc-m0.5, cityscapes for cityscapes-m0.5, else none)",
    )
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: %(default)s)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader reader processes (default: %(default)s)")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=25_000_000,  # complete_dataset.MAX_PIXELS; literal: --help stays free of torch
        help="files with more pixels are reported as too large, not decoded (default: %(default)s)",
    )
    p.add_argument(
        "--max-batch-pixels",
        type=int,
        default=16 * 1024 * 1024,  # complete_dataset.MAX_BATCH_PIXELS
        help="at most this many pixels per forward pass, with --batch-size images at most; one larger "
        "image goes alone (default: %(default)s)",
    )
    p.add_argument("--confidence-dir", help="also write confidence maps (8-bit grayscale PNGs, 255 = certain) here")
    p.add_argument("--overwrite", action="store_true", help="redo outputs that already exist and are valid")
    p.add_argument(
        "--in-place", action="store_true", help="allow --out to be the labels folder or inside it (replaces labels)"
    )
    p.add_argument("--strict", action="store_true", help="stop at the first file that cannot be completed")
    p.add_argument("--report", help="JSON report path (default: OUT/completion_report.json; .rank<k> per rank)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_complete)


def _add_audit(sub) -> None:
    p = sub.add_parser(
        "audit",
        help="find the wrong labels of a dataset folder: scores, suspect regions, pictures, optional repair",
        description="Predict every patch of every label from the image and the rest of the label while it\n"
        "is hidden, and report where the label disagrees with its context: OUT/audit_report.json (worst\n"
        "first), OUT/scores/<label name> (8-bit, 0 = agrees, 255 = surely wrong), OUT/worst.png and, with\n"
        "--repair, OUT/repaired/<label name>. Inputs are never modified; a rerun resumes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_folders(
        p, "folder of label PNGs (<id>.png, class ids; other ids are void)", "output folder (not an input folder)"
    )
    _add_model(p)
    p.add_argument(
        "--threshold",
        type=_score_threshold,
        default=None,
        help="score (1 - probability of the given class) above which pixels are suspect, in [0, 1) (default: the "
        "model's own, chosen on its training data; docs/audit.md)",
    )
    p.add_argument(
        "--repair",
        type=_repair_threshold,
        nargs="?",
        const="auto",
        default=None,
        metavar="THRESHOLD",
        help="also write repaired labels to OUT/repaired: suspect pixels above THRESHOLD (no value: --threshold's) "
        "take the predicted class (default: no repair)",
    )
    p.add_argument(
        "--min-area",
        type=_score_threshold,
        default=0.001,  # audit.DEFAULT_MIN_AREA
        help="smallest suspect region, as a fraction of the image's pixels (default: %(default)s)",
    )
    p.add_argument(
        "--masks", type=int, choices=[2, 4], default=4, help="leave-out masks per label (default: %(default)s)"
    )
    p.add_argument(
        "--shifts",
        type=int,
        choices=[1, 2, 4],
        default=4,  # audit.DEFAULT_SHIFTS
        help="leave-out passes with the patch grid moved by half a patch; each pixel is predicted from that "
        "many cuts into patches, averaged (1: fastest; default: %(default)s)",
    )
    p.add_argument("--batch-size", type=_positive_int, default=8, help="images per forward pass (default: %(default)s)")
    p.add_argument(
        "--worst",
        type=lambda text: _int_in(text, 0, None),
        default=8,
        help="labels drawn in OUT/worst.png, 0: no picture (default: %(default)s)",
    )
    p.add_argument("--overwrite", action="store_true", help="redo labels whose outputs exist and are valid")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_audit)


def _add_fit(sub) -> None:
    p = sub.add_parser(
        "fit",
        help="adapt a model to a dataset on its own broken labels, then complete with --model OUT",
        description="Train a model on the known pixels of a label folder (hidden and reconstructed, as L-MAE\n"
        "trains; the holes are never targets), with training holes shaped like the labels' own, within\n"
        "a time budget. A share of the known pixels is held out and scores the fitted model, the model it\n"
        "started from and the random walker; the fitted model is written to OUT (config.json,\n"
        "model.safetensors, README.md, fit.json) where it beats the start there with 95% confidence, the\n"
        "start model otherwise. Stopped: rerun with --resume.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_folders(p, "folder of label PNGs with holes (<id>.png)", "output model folder (not an input folder)")
    p.add_argument("--init", default="any-m0.5", help="model to start from: name or folder (default: %(default)s)")
    p.add_argument("--minutes", type=float, default=10.0, help="training time budget (default: %(default)s)")
    p.add_argument(
        "--agnostic",
        action="store_true",
        help="keep a class-agnostic --init so: one correction for every class alike, not a head per class",
    )
    p.add_argument(
        "--hide-unknown",
        action="store_true",
        help="train with every patch that touches a hole or a held-out pixel hidden, as completion hides the "
        "patches with holes (void's stay visible); recommended for labels at their own size (docs/fit.md)",
    )
    p.add_argument("--missing-index", type=_byte, default=255, help="value of the holes (default: %(default)s)")
    p.add_argument("--void-index", type=_byte, default=None, help="the labels' own ignore value, never trained on")
    p.add_argument("--colors", default=None, help="colour table of RGB labels: camvid | cityscapes | voc | FILE.json")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of the known pixels held out to score the models (default: %(default)s)",
    )
    p.add_argument("--val-images", type=_positive_int, default=32, help="labels that hold out (default: %(default)s)")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="training batch (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out blocks and training (default: 0)")
    p.add_argument("--resume", action="store_true", help="continue the fit in OUT (the budget counts over resumes)")
    p.add_argument("--max-steps", type=_positive_int, default=None, help="stop after this many steps (smoke runs)")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch threads of the fit (default: every core)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(fn=cmd_fit)


def _add_show(sub) -> None:
    p = sub.add_parser(
        "show",
        help="picture of completed labels (image | input | completed | truth | error | confidence) with a legend",
        description="Write one picture with a row per file: image | input label (holes hatched magenta,\n"
        "void grey) | completed label (| ground truth | error on holes with --truth) (| confidence with\n"
        "--confidence-dir), each row titled with its share of holes (and PA accuracy with --truth),\n"
        "and a legend of the classes shown.",
        epilog=SHOW_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_folders(p, "folder of the broken (input) label PNGs")
    p.add_argument("--completed", required=True, help="folder of completed label PNGs (label-mae complete --out)")
    p.add_argument("--confidence-dir", help="folder of confidence PNGs (label-mae complete --confidence-dir)")
    p.add_argument(
        "--truth",
        metavar="DIR",
        help="folder of the complete (ground truth) labels: adds the truth and error columns and the PA "
        "accuracy on holes per row (default: none)",
    )
    p.add_argument("--out", required=True, help="picture to write, in the format its name ends in (.png, .jpg, ...)")
    p.add_argument(
        "--files", nargs="+", metavar="ID", help="ids or file names to show (default: --limit picked by --pick)"
    )
    p.add_argument(
        "--limit", type=_positive_int, default=4, help="rows when --files is not given (default: %(default)s)"
    )
    p.add_argument(
        "--pick",
        choices=["spread", "worst"],
        default=None,
        help="which files when --files is not given: spread = evenly spaced over the sorted names (first "
        "and last included), worst = lowest PA accuracy on holes (needs --truth) "
        "(default: worst with --truth, else spread)",
    )
    p.add_argument(
        "--missing-index",
        type=_byte,
        default=None,
        help="value of the holes in --labels; when it is not 255, 255 is drawn as void (default: --model's, "
        "e.g. 254 for voc-m0.5 or a fit's own, else 255)",
    )
    names = p.add_mutually_exclusive_group()
    names.add_argument(
        "--classes",
        metavar="FILE",
        help='class names for the legend from a JSON file with "classes" (e.g. dataset.json) '
        "(default: none, ids shown)",
    )
    names.add_argument(
        "--model",
        help="class names for the legend from this model's config: registered name, folder or Hub repo id "
        "(default: none, ids shown)",
    )
    p.add_argument(
        "--panel-width", type=_positive_int, default=400, help="width of each panel in px (default: %(default)s)"
    )
    p.set_defaults(fn=cmd_show)


def _add_list(sub) -> None:
    p = sub.add_parser("list", help="list the registered pretrained models")
    p.set_defaults(fn=cmd_list)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
