"""Audit benchmark: seeded corruptions of true labels, found and repaired by the leave-out audit.

Images and labels are resized to the model's 224 x 224 (the paper protocol's size). Half of the
images (drawn per image id and ``--seed``) get one corruption of each kind, in turn (one kind per
run of the audit; the other half stay clean). Kinds (every draw seeded by the image id, the seed
and the kind; sizes are at 224 px):

- ``swap``: a connected region of one class (0.5% to 15% of the image) takes another class present
  in the image (any other class when the image has one class only);
- ``border2`` / ``border4``: one class (1% to 60% of the image) is dilated by 2 / 4 px (a disk) into
  its labelled neighbours: its borders move outward by that much;
- ``erase``: an object (a connected region of 0.3% to 10% of the image, not the largest class) is
  erased into its surroundings (nearest fill from the pixels around it);
- ``blob``: one to three ellipses (radii 6 to 20 px) of a class present in the image (any class
  when only one is) other than the class under their centre are painted over the label;
- ``clean``: no corruption at all (every image clean): what the audit does to a clean dataset.

Methods, each given the same leave-out protocol (4 complementary masks, single patches in the 2 x 2 phases; each
pixel predicted once while hidden, from the image and the visible label only):

- ``model``: the L-MAE's leave-out probabilities, score ``1 - p(given class)``;
- ``rw``: the random walker (exact solve, scikit-image's 4-connected RGB edge weights, beta 130)
  instead of the model, same score;
- ``cleanlab``: ``cleanlab.segmentation.filter.find_label_issues(labels, pred_probs)`` given the
  model's leave-out probabilities; its issue mask is its score (0 / 1), and it repairs with the
  model's most likely class.

Figures per kind and method: pixel-level average precision and AUROC of the score against the
corrupted pixels (labelled pixels of every image), region-level precision and recall at the
threshold (a suspect region counts as right when at least 20% of its pixels are corrupted; a
corrupted region of at least ``min_area`` pixels counts as found when at least 20% of it is flagged),
image-level average precision of ranking the corrupted images first (by the image score; cleanlab:
the share of issue pixels), and the whole-label mIoU against the truth before and after repair.

Run (benchmark-only dependencies: ``pip install -e ".[bench]"``)::

    python benchmarks/audit_corruptions.py --data ../shared/data/camvid --split val --model camvid-m0.5
    python benchmarks/audit_corruptions.py --data ../shared/data/ccp --split val --model ccp-rw-m0.5 --limit 50
    python benchmarks/audit_corruptions.py --data ../shared/data/camvid --split train --sweep 0.5 0.7 0.8 0.9 0.95 0.98
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
from scipy import ndimage

KINDS = ("clean", "swap", "border2", "border4", "erase", "blob")
METHODS = ("model", "rw", "cleanlab")
VOID = 255


# ----------------------------------------------------------------------------------------------------
# corruptions
# ----------------------------------------------------------------------------------------------------
def _components(label: np.ndarray, lo: float, hi: float, skip_largest: bool = False):
    """Connected regions of single classes covering ``lo`` to ``hi`` of the image: ``[(class, mask)]``."""
    n = label.size
    classes, counts = np.unique(label[label != VOID], return_counts=True)
    largest = classes[np.argmax(counts)] if len(classes) else None
    out = []
    for c in classes:
        if skip_largest and c == largest:
            continue
        comp, k = ndimage.label(label == c)
        areas = np.bincount(comp.ravel())
        for i in range(1, k + 1):
            if lo * n <= areas[i] <= hi * n:
                out.append((int(c), comp == i))
    return out


def _disk(r: int) -> np.ndarray:
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= r * r


def corrupt(label: np.ndarray, kind: str, rng: np.random.Generator, num_classes: int) -> np.ndarray:
    """A corrupted copy of ``label`` (``[H, W]`` ids, 255 void); the same label when nothing fits."""
    lab = label.copy()
    present = [int(c) for c in np.unique(lab[lab != VOID])]
    if not present:
        return lab

    def other(c: int) -> int:
        choices = [k for k in present if k != c] or [k for k in range(num_classes) if k != c]
        return int(rng.choice(choices))

    if kind == "swap":
        comps = _components(lab, 0.005, 0.15)
        if comps:
            c, m = comps[rng.integers(len(comps))]
            lab[m] = other(c)
    elif kind in ("border2", "border4"):
        r = int(kind[-1])
        classes, counts = np.unique(lab[lab != VOID], return_counts=True)
        ok = [int(c) for c, n in zip(classes, counts, strict=True) if 0.01 * lab.size <= n <= 0.6 * lab.size]
        if ok:
            c = int(rng.choice(ok))
            grown = ndimage.binary_dilation(lab == c, structure=_disk(r)) & (lab != VOID)
            lab[grown] = c
    elif kind == "erase":
        comps = _components(lab, 0.003, 0.10, skip_largest=True)
        if comps:
            _, m = comps[rng.integers(len(comps))]
            known = ~m & (lab != VOID)
            if known.any():
                _, (iy, ix) = ndimage.distance_transform_edt(~known, return_indices=True)
                lab[m] = lab[iy[m], ix[m]]
    elif kind == "blob":
        h, w = lab.shape
        yy, xx = np.ogrid[:h, :w]
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = int(rng.integers(h)), int(rng.integers(w))
            ry, rx = rng.integers(6, 21, size=2)
            theta = rng.uniform(0, np.pi)
            dy, dx = yy - cy, xx - cx
            u, v = dx * np.cos(theta) + dy * np.sin(theta), -dx * np.sin(theta) + dy * np.cos(theta)
            m = (u / rx) ** 2 + (v / ry) ** 2 <= 1
            under = int(lab[cy, cx]) if lab[cy, cx] != VOID else present[0]
            lab[m & (lab != VOID)] = other(under)
    elif kind != "clean":
        raise ValueError(f"unknown corruption kind {kind!r}")
    return lab


def corrupted_set(labels, keys, kind: str, seed: int, num_classes: int):
    """``(corrupted labels, corrupted? per image)``: half of the images (drawn per id) get ``kind``."""
    from torch_label_mae.data import seed_for

    out, flags = [], []
    for lab, key in zip(labels, keys, strict=True):
        rng = np.random.default_rng([seed_for(key, seed), KINDS.index(kind)])
        pick = rng.random() < 0.5
        bad = corrupt(lab, kind, rng, num_classes) if pick and kind != "clean" else lab.copy()
        out.append(bad)
        flags.append(bool((bad != lab).any()))
    return out, flags


# ----------------------------------------------------------------------------------------------------
# scoring
# ----------------------------------------------------------------------------------------------------
def leave_out(predict, images, labels, grid, num_classes, batch_size: int, full: bool = False, shifts: int = 1):
    """Leave-out ``(score, predicted[, probs])`` per image (numpy), with ``shifts`` grid shifts."""
    from torch_label_mae.audit import leave_out_probs, score_from_probs

    scores, preds, probs = [], [], []
    for s in range(0, len(images), batch_size):
        img = torch.stack(images[s : s + batch_size])
        lab = torch.from_numpy(np.stack(labels[s : s + batch_size])).long()
        p, count = leave_out_probs(predict, img, lab, grid, num_classes, shifts=shifts)
        assert bool((count >= 1).all()), "a pixel was never hidden"
        sc, pr = score_from_probs(p, lab)
        scores += list(sc.numpy())
        preds += list(pr.numpy())
        if full:
            probs += list(p.numpy().astype(np.float32))
    return (scores, preds, probs) if full else (scores, preds)


def _ap_auc(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    if y.all() or not y.any():
        return float("nan"), float("nan")
    return float(average_precision_score(y, s)), float(roc_auc_score(y, s))


def _miou(preds, truths, n: int) -> float:
    from torch_label_mae.metrics import SegmentationMetrics

    m = SegmentationMetrics(n)
    for p, t in zip(preds, truths, strict=True):
        m.update(torch.from_numpy(np.asarray(p)).long(), torch.from_numpy(np.asarray(t)).long())
    return float(m.compute()["miou"])


def figures(scores, preds, corrupted, truths, flags, n: int, threshold: float, min_area: float, binary=None):
    """The benchmark's figures for one method on one kind. ``binary``: per image a flagged mask given
    directly (cleanlab) instead of regions of ``score > threshold``."""
    from torch_label_mae.audit import finish, repair_label

    ys, ss, repaired, img_scores = [], [], [], []
    tp_regions = n_regions = found = n_true = 0
    for i, (sc, pr, lab, truth) in enumerate(zip(scores, preds, corrupted, truths, strict=True)):
        valid = (lab != VOID) & (truth != VOID)
        wrong = (lab != truth) & valid
        ys.append(wrong[valid])
        if binary is None:
            res = finish(sc, pr, lab, n, threshold, min_area)
            flagged, fixed, img_score = res.flagged, res.repaired, res.image_score
            ss.append(sc[valid])
        else:
            flagged = binary[i] & (lab != VOID)
            fixed = repair_label(lab, pr, flagged, n)
            img_score = float(flagged.sum() / max(1, (lab != VOID).sum()))
            ss.append(flagged[valid].astype(np.float32))
        repaired.append(fixed)
        img_scores.append(img_score)
        least = max(1, int(np.ceil(min_area * lab.size)))
        comp, k = ndimage.label(flagged, structure=np.ones((3, 3), bool))
        for j in range(1, k + 1):
            m = comp == j
            if m.sum() < least:
                continue
            n_regions += 1
            tp_regions += wrong[m].mean() >= 0.2
        comp, k = ndimage.label(wrong, structure=np.ones((3, 3), bool))
        for j in range(1, k + 1):
            m = comp == j
            if m.sum() < least:
                continue
            n_true += 1
            found += flagged[m].mean() >= 0.2
    y, s = np.concatenate(ys), np.concatenate(ss)
    ap, auc = _ap_auc(y, s)
    img_ap = _ap_auc(np.array(flags), np.array(img_scores))[0]
    return {
        "pixel_ap": ap,
        "pixel_auroc": auc,
        "region_precision": tp_regions / n_regions if n_regions else float("nan"),
        "region_recall": found / n_true if n_true else float("nan"),
        "regions": n_regions,
        "image_ap": img_ap,
        "miou_before": _miou(corrupted, truths, n),
        "miou_after": _miou(repaired, truths, n),
        "corrupted_pixels": float(y.mean()),
        "changed_pixels": float(np.mean([(f != c).mean() for f, c in zip(repaired, corrupted, strict=True)])),
    }


def cleanlab_mask(labels, probs) -> list[np.ndarray]:
    from cleanlab.segmentation.filter import find_label_issues

    lab = np.stack(labels).astype(np.int64)
    pp = np.stack(probs)
    void = lab == VOID
    lab = np.where(void, pp.argmax(1), lab)  # void: its most likely class (never an issue; not scored)
    issues = find_label_issues(lab, pp, n_jobs=1, verbose=False)
    return list(issues & ~void)


# ----------------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    """Parse and check the command line."""
    from torch_label_mae.audit import DEFAULT_MIN_AREA, DEFAULT_SHIFTS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--model", default="camvid-m0.5")
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--threshold", type=float, help="default: the model's own (audit.default_threshold)")
    ap.add_argument("--min-area", type=float, default=DEFAULT_MIN_AREA)
    ap.add_argument("--sweep", type=float, nargs="+", help="model only: mIoU before / after repair per threshold")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shifts", type=int, choices=[1, 2, 4], default=DEFAULT_SHIFTS, help="leave-out grid shifts")
    ap.add_argument("--limit", type=int, help="the first N images only (after --every)")
    ap.add_argument("--every", type=int, default=1, help="every K-th image only (choices on a spread of train)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json")
    a = ap.parse_args(argv)

    if a.every < 1:
        ap.error(f"--every must be >= 1, got {a.every}")
    return a


def read_images(ds, picked: list[int], size) -> tuple[list[torch.Tensor], list[np.ndarray], list[str]]:
    """The ``picked`` samples resized to the model's ``size`` -> ``(images, true labels, keys)``."""
    from torch_label_mae.io import resize_image, resize_label

    images, truths, keys = [], [], []
    for i in picked:
        image, label, key = ds[i]
        images.append(resize_image(image.unsqueeze(0), size)[0])
        truths.append(resize_label(label.unsqueeze(0), size)[0].numpy().astype(np.int64))
        keys.append(key)
    return images, truths, keys


def print_header(a: argparse.Namespace, dataset: str, count: int, size) -> None:
    """The run's settings line and the table's header (the sweep's or the methods')."""
    print(
        f"{dataset} [{a.split}] {count} images at {size[0]}x{size[1]}, model {a.model}, threshold "
        f"{a.threshold:g}, min area {a.min_area:g}, grid shifts {a.shifts}, seed {a.seed}",
        flush=True,
    )
    if a.sweep:
        print(f"{'kind':8s} " + " ".join(f"{t:>13g}" for t in a.sweep) + "   (mIoU after - before, points)")
    else:
        print(
            f"{'kind':8s} {'method':9s} {'pix AP':>7s} {'AUROC':>7s} {'reg P':>6s} {'reg R':>6s} {'img AP':>7s} "
            f"{'mIoU before':>11s} {'after':>6s} {'gain':>6s} {'s':>5s}"
        )


def sweep_kind(a: argparse.Namespace, kind: str, predict, images, corrupted, truths, flags, grid, n: int) -> dict:
    """The model's figures on one kind at every ``--sweep`` threshold; prints the mIoU gains as a row."""
    results = {}
    sc, pr = leave_out(predict, images, corrupted, grid, n, a.batch_size, shifts=a.shifts)
    row = []
    for t in a.sweep:
        f = figures(sc, pr, corrupted, truths, flags, n, t, a.min_area)
        results[str(t)] = f
        row.append(f"{100 * (f['miou_after'] - f['miou_before']):+13.2f}")
    print(f"{kind:8s} " + " ".join(row), flush=True)
    return results


def print_method_row(kind: str, method: str, f: dict) -> None:
    """One method's figures on one kind, as a row of the table."""
    print(
        f"{kind:8s} {method:9s} {f['pixel_ap']:7.3f} {f['pixel_auroc']:7.3f} {f['region_precision']:6.2f} "
        f"{f['region_recall']:6.2f} {f['image_ap']:7.3f} {100 * f['miou_before']:11.2f} "
        f"{100 * f['miou_after']:6.2f} {100 * (f['miou_after'] - f['miou_before']):+6.2f} {f['seconds']:5.0f}",
        flush=True,
    )


def score_kind(a: argparse.Namespace, kind: str, predictors, images, corrupted, truths, flags, grid, n: int) -> dict:
    """Every ``--methods`` method's figures on one kind, at ``--threshold``; prints a row per method."""
    results = {}
    model_out = None
    for method in a.methods:
        t0 = time.perf_counter()
        if method in ("model", "cleanlab"):
            if model_out is None:
                model_out = leave_out(
                    predictors["model"],
                    images,
                    corrupted,
                    grid,
                    n,
                    a.batch_size,
                    "cleanlab" in a.methods,
                    a.shifts,
                )
            sc, pr = model_out[0], model_out[1]
            binary = cleanlab_mask(corrupted, model_out[2]) if method == "cleanlab" else None
        else:
            sc, pr = leave_out(predictors["rw"], images, corrupted, grid, n, a.batch_size, shifts=a.shifts)
            binary = None
        f = figures(sc, pr, corrupted, truths, flags, n, a.threshold, a.min_area, binary)
        f["seconds"] = time.perf_counter() - t0
        results[method] = f
        print_method_row(kind, method, f)
    return results


def main(argv=None) -> int:
    """Corrupt, audit and repair every ``--kinds`` kind with every method; print the table, write the JSON."""
    from torch_label_mae import LabelCompleter
    from torch_label_mae.audit import default_threshold, model_predictor, random_walk_predictor
    from torch_label_mae.data import FolderDataset

    a = parse_args(argv)
    completer = LabelCompleter.from_pretrained(a.model, device="cpu")
    a.threshold = default_threshold(completer) if a.threshold is None else a.threshold
    cfg = completer.config
    n, size = cfg.num_classes, cfg.size
    ds = FolderDataset(a.data, a.split)
    picked = list(range(0, len(ds), a.every))[: a.limit]
    images, truths, keys = read_images(ds, picked, size)
    predictors = {"model": model_predictor(completer), "rw": random_walk_predictor(n)}
    print_header(a, ds.info.name, len(picked), size)
    results: dict = {}
    for kind in a.kinds:
        corrupted, flags = corrupted_set(truths, keys, kind, a.seed, n)
        if a.sweep:
            results[kind] = sweep_kind(a, kind, predictors["model"], images, corrupted, truths, flags, cfg.grid, n)
        else:
            results[kind] = score_kind(a, kind, predictors, images, corrupted, truths, flags, cfg.grid, n)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"args": vars(a), "results": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
