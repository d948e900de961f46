"""``label-mae fit`` on a degraded dataset split: PA-mIoU on its holes against minutes of fitting.

The split's labels are degraded (seeded per label id), the fit sees the degraded labels only, and every
method completes the same holes, scored against the original labels:

- ``native`` protocol: the labels at their own size, ``--ratio`` of 32 px blocks hidden;
- ``paper`` protocol: images and labels resized to 224 x 224 first (bilinear / nearest), ``--ratio``
  of the 16 px patches hidden.

Holes are written as 254 and the datasets' own void (255) is passed as ``void_index``. One fit is
continued with ``--resume`` to each budget of ``--minutes`` in turn (the cosine restarts over the
larger budget); after each, the fitted model (``fit-run/last``) and the kept model (``OUT``) complete
the holes. Beside them, on the same holes: the starting model zero-shot, nearest fill, scikit-image's
random walker (beta 2000) and the project's exact 16-connected L*a*b* walk (beta 2000). The fit's own
held-out estimate is printed too: whether it predicts the gain on the real holes.

Run (scikit-image is a benchmark extra: ``pip install -e ".[bench]"``; ``--work`` must be outside
the dataset)::

    python benchmarks/fit_curve.py --data ../shared/data/camvid --split val --work /tmp/fit-camvid
    python benchmarks/fit_curve.py --data ../shared/data/marsscapes --init runs/agnostic/leave-out-16 \\
        --work /tmp/fit-mars
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from common import nearest_fill, random_walker
from PIL import Image

from torch_label_mae import LabelCompleter
from torch_label_mae.data import FolderDataset, degrade, seed_for
from torch_label_mae.evaluate import completer_method, walk_method
from torch_label_mae.fit_dataset import fit_dataset
from torch_label_mae.io import resize_image, resize_label, save_label_png
from torch_label_mae.metrics import SegmentationMetrics

HOLE, VOID = 254, 255


def prepare(a) -> tuple[Path, Path, list, int]:
    """Write the degraded labels (and, for the paper protocol, the resized images) under ``--work``.
    Returns the images folder, the degraded labels folder, ``[(name, truth)]`` and the class count."""
    if a.limit is not None and a.protocol == "native":
        raise SystemExit("--limit needs --protocol paper (the native protocol reads the split's image folder)")
    ds = FolderDataset(a.data, a.split)
    work = Path(a.work)
    images = Path(a.data) / a.split / "images" if a.protocol == "native" else work / "images"
    broken_dir = work / "broken"
    for d in (images, broken_dir):
        if d.parent == work:  # this script's own folders: a rerun of other holes or --limit starts them anew
            shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True, exist_ok=True)
    truths = []
    for i in range(len(ds) if a.limit is None else min(a.limit, len(ds))):
        image, label, key = ds[i]
        block = 32
        if a.protocol == "paper":
            image = (resize_image(image[None], (224, 224))[0] * 255).round().to(torch.uint8)
            label, block = resize_label(label[None], (224, 224))[0], 16
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(images / f"{key}.png")
        broken, _ = degrade(label, a.ratio, block, seed=seed_for(key, a.seed), mode="blocks", ignore_index=HOLE)
        broken = torch.where(label == VOID, VOID, broken)  # void stays void
        save_label_png(broken, broken_dir / f"{key}.png")
        truths.append((key, label))
    return images, broken_dir, truths, ds.info.num_classes


def load(images: Path, broken_dir: Path, truths: list) -> list[tuple]:
    """``[(image float [3,H,W], label with holes and void 255, holes, truth)]``."""
    from torch_label_mae.data import read_image, read_label

    out = []
    for key, truth in truths:
        path = next(p for p in images.iterdir() if p.stem == key)
        broken = read_label(broken_dir / f"{key}.png")
        holes = broken == HOLE
        out.append((read_image(path).float() / 255, torch.where(holes, VOID, broken), holes, truth))
    return out


def score(method, samples, num_classes: int, batch: int = 8) -> float:
    """PA-mIoU (percent) of ``method`` on the holes."""
    m = SegmentationMetrics(num_classes)
    for i in range(0, len(samples), batch):
        part = samples[i : i + batch]
        preds = method([s[0] for s in part], [s[1] for s in part], [s[2] for s in part])
        for (_, _, holes, truth), pred in zip(part, preds, strict=True):
            m.update(pred.cpu(), truth, holes)
    return 100 * m.compute()["pa_miou"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--work", required=True, help="folder for the degraded labels, the fit and results.json")
    ap.add_argument("--init", default="any-m0.5")
    ap.add_argument("--protocol", choices=("native", "paper"), default="native")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0, help="hole draw")
    ap.add_argument("--minutes", type=float, nargs="+", default=[2.5, 5.0, 10.0])
    ap.add_argument("--limit", type=int, default=None, help="first N labels (paper protocol)")
    ap.add_argument("--agnostic", action="store_true", help="fit --agnostic: keep a class-agnostic --init so")
    ap.add_argument("--hide-unknown", action="store_true", help="fit --hide-unknown")
    a = ap.parse_args(argv)
    images, broken_dir, truths, n = prepare(a)
    samples = load(images, broken_dir, truths)
    methods = {
        "nearest fill": lambda: nearest_fill,
        "random walker b2000": lambda: random_walker(2000.0),
        "walk 16-conn lab b2000": lambda: walk_method(solver="direct", connectivity=16, color="lab"),
        f"zero-shot {a.init}": lambda: completer_method(LabelCompleter.from_pretrained(a.init)),
    }
    cache = Path(a.work) / "anchors.json"  # a rerun on the same holes reuses them, on any others not
    holes = dict(data=str(Path(a.data).resolve()), split=a.split, protocol=a.protocol, ratio=a.ratio, seed=a.seed,
                 limit=a.limit, images=len(samples))  # fmt: skip
    stored = json.loads(cache.read_text()) if cache.is_file() else {}
    rows = stored.get("rows", {}) if stored.get("holes") == holes else {}
    for name, method in methods.items():
        if name not in rows:
            rows[name] = score(method(), samples, n)
            cache.write_text(json.dumps(dict(holes=holes, rows=rows), indent=2))
        print(f"{name:28s} {rows[name]:6.2f}", flush=True)
    curve, out = [], Path(a.work) / "fit"
    shutil.rmtree(out, ignore_errors=True)  # a new curve: the first budget starts a new fit
    for i, minutes in enumerate(sorted(a.minutes)):
        t = time.time()
        rep = fit_dataset(images, broken_dir, out, init=a.init, minutes=minutes, missing_index=HOLE,
                          void_index=VOID, seed=a.seed, resume=i > 0, progress=False, agnostic=a.agnostic,
                          hide_unknown=a.hide_unknown)  # fmt: skip
        fitted = score(completer_method(LabelCompleter.from_pretrained(str(out / "fit-run" / "last"))), samples, n)
        kept = fitted if rep["kept"] == "fitted" else rows[f"zero-shot {a.init}"]  # the same weights
        est = {k: round(100 * rep[k]["pa_miou"], 2) for k in ("fitted", "zero_shot", "random_walker")}
        curve.append(dict(minutes=minutes, steps=rep["training"]["steps"], fitted=fitted, kept=kept,
                          kept_model=rep["kept"], held_out=est, gain=rep["gain"], wall_s=time.time() - t))  # fmt: skip
        print(json.dumps(curve[-1]), flush=True)
    result = dict(vars(a), anchors=rows, curve=curve, holes=rep["holes"], training=rep["training"])
    (Path(a.work) / "results.json").write_text(json.dumps(result, indent=2))
    print(f"\n{a.data} {a.split}, {a.protocol} protocol, ratio {a.ratio}, hole draw {a.seed}, {len(samples)} labels")
    print("| minutes | steps | fitted | kept | " + " | ".join(rows) + " |")
    for c in curve:
        anchors = " | ".join(f"{v:.1f}" for v in rows.values())
        kept = f"{c['kept']:.1f} ({c['kept_model']})"
        print(f"| {c['minutes']:g} | {c['steps']} | {c['fitted']:.1f} | {kept} | {anchors} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
