"""``label-mae``: thin command-line front end; every command calls the Python API.

Commands: demo, complete, evaluate, train, degrade, show, list.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent / "samples"


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        help="registered name (see `label-mae list`), dataset name, local folder or Hub repo id (default: camvid-m0.5)",
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")


def _load(args):
    from .completer import LabelCompleter
    from .hub import DEFAULT_MODEL

    return LabelCompleter.from_pretrained(args.model or DEFAULT_MODEL, device=args.device)


def cmd_list(args) -> int:
    from .hub import bundled_dir, list_pretrained

    for name, e in list_pretrained().items():
        where = "bundled" if bundled_dir(name) else "hub"
        print(f"{name:16s} {e.repo_id}@{e.revision}  ratio {e.ratio:g}  ({where})")
    return 0


def cmd_demo(args) -> int:
    """Break the bundled sample labels, complete them, compare with nearest fill, write a picture."""
    import torch

    from .data import degrade, pair_files, read_image, read_label
    from .metrics import SegmentationMetrics
    from .prior import nearest_fill
    from .viz import save_grid, side_by_side

    completer = _load(args)
    n = completer.num_classes
    pairs = pair_files(SAMPLES, SAMPLES)
    images, labels, brokens, missings = [], [], [], []
    for key, ip, lp in pairs:
        image, label = read_image(ip), read_label(lp)
        broken, missing = degrade(label, args.ratio, args.block, seed=key, mode="blocks")
        images.append(image), labels.append(label), brokens.append(broken), missings.append(missing)
    filled, conf = completer.complete_batch(images, brokens, return_confidence=True)
    ours, near = SegmentationMetrics(n), SegmentationMetrics(n)
    rows = []
    for image, label, broken, missing, f, c in zip(images, labels, brokens, missings, filled, conf, strict=True):
        nf = nearest_fill(broken.unsqueeze(0))[0]
        ours.update(f, label, missing)
        near.update(nf, label, missing)
        rows.append(side_by_side(image, broken, f, c))
    out = save_grid(rows, args.out)
    a, b = ours.compute(), near.compute()
    print(
        f"model {args.model or 'camvid-m0.5'} on {len(pairs)} bundled CamVid samples, {args.ratio:.0%} of "
        f"{args.block}px blocks hidden:"
    )
    print(f"  PA-mIoU   L-MAE {100 * a['pa_miou']:5.1f}   nearest fill {100 * b['pa_miou']:5.1f}")
    print(f"  PA-acc    L-MAE {100 * a['pa_pixel_acc']:5.1f}   nearest fill {100 * b['pa_pixel_acc']:5.1f}")
    print(f"  picture (image | broken | completed | confidence): {out}")
    del torch
    return 0


def cmd_evaluate(args) -> int:
    from .data import FolderDataset
    from .evaluate import evaluate
    from .report import format_report

    completer = _load(args)
    ds = FolderDataset(args.data, args.split)

    def method(images, labels, missing):
        return completer.complete_batch(images, labels, missing, batch_size=args.batch_size)

    res = evaluate(
        method,
        ds,
        completer.num_classes,
        protocol=args.protocol,
        ratio=args.ratio,
        seed=args.seed,
        batch_size=args.batch_size,
        limit=args.limit,
    )
    res["model"], res["data"], res["split"], res["protocol"], res["ratio"] = (
        args.model or "camvid-m0.5",
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


def cmd_degrade(args) -> int:
    from .data import degrade_folder

    n = degrade_folder(
        args.labels, args.out, ratio=args.ratio, block=args.block, seed=args.seed, missing_index=args.missing_index
    )
    print(f"wrote {n} degraded labels to {args.out}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="label-mae",
        description="Complete broken semantic-segmentation labels with L-MAE (label masked autoencoder).",
    )
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND")

    p = sub.add_parser("demo", help="complete the bundled sample labels and write a side-by-side picture")
    _add_model(p)
    p.add_argument("--out", default="label-mae-demo.png", help="picture to write (default: %(default)s)")
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of blocks to hide (default: %(default)s)")
    p.add_argument("--block", type=int, default=32, help="hole size in pixels (default: %(default)s)")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("evaluate", help="PA-mIoU / mIoU / accuracy of a model on a dataset split")
    _add_model(p)
    p.add_argument("--data", required=True, help="dataset root (dataset.json, <split>/images, <split>/labels)")
    p.add_argument("--split", default="val")
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of patches hidden (default: %(default)s)")
    p.add_argument(
        "--protocol",
        choices=["paper", "native"],
        default="paper",
        help="paper: 224x224, 16px patches; native: original size, 32px blocks",
    )
    p.add_argument("--seed", type=int, default=0, help="degradation seed (holes are seeded per image id)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, help="evaluate the first N images only")
    p.add_argument("--json", help="also write the results as JSON here")
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("degrade", help="write a degraded copy of a label folder (holes = --missing-index)")
    p.add_argument("--labels", required=True, help="folder of label PNGs")
    p.add_argument("--out", required=True, help="output folder (must differ from --labels)")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--block", type=int, default=32, help="hole size in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--missing-index", type=int, default=255)
    p.set_defaults(fn=cmd_degrade)

    sub.add_parser("train", help="train a model (see `label-mae train --help`)", add_help=False)

    p = sub.add_parser("list", help="list the registered pretrained models")
    p.set_defaults(fn=cmd_list)

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:  # its own parser (also the entry point under torchrun)
        from .train import main_train

        main_train(argv[1:])
        return 0
    args = ap.parse_args(argv)
    if not getattr(args, "fn", None):
        ap.print_help()
        return 0
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"label-mae {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
