"""Write a Hub model card (``hub/<name>/README.md``) from measured figures.

Evaluates the model on a validation split with both protocols (the library's ``evaluate``), reads the
baselines' JSON written by ``baselines.py`` on the same holes, and the training log::

    python benchmarks/baselines.py --data ../shared/data/camvid --json runs/baselines-camvid.json
    python benchmarks/baselines.py --data ../shared/data/camvid --protocol native \\
        --json runs/baselines-camvid-native.json
    python benchmarks/model_card.py --name camvid-m0.5 --data ../shared/data/camvid \\
        --baselines runs/baselines-camvid.json --baselines-native runs/baselines-camvid-native.json \\
        --log runs/camvid-refine/log.jsonl --recipe "label-mae train ..." --paper-figure "..."
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from torch_label_mae import LabelCompleter
from torch_label_mae.data import FolderDataset
from torch_label_mae.evaluate import completer_method, evaluate
from torch_label_mae.io import atomic_write
from torch_label_mae.report import per_draw


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _prior(cfg) -> str:
    walk = cfg.prior
    if walk is not None and walk.kind == "random_walk":
        solve = "solved exactly" if walk.solver == "direct" else f"{walk.sweeps} sweeps"
        graph = f"{walk.connectivity}-connected, {'L*a*b*' if walk.color == 'lab' else 'RGB'} edges"
        return f"random walk, beta {walk.beta:g}, {graph}, {solve}, soft"
    return "nearest-label fill"


def _seeds(result: dict) -> list[int]:
    """The hole seeds an :func:`~torch_label_mae.evaluate.evaluate` result was measured on (baselines JSON
    written before evaluate recorded them was measured on seed 0)."""
    return result.get("seeds", [0])


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True, help="registered name; the card goes to <hub>/<name>/README.md")
    ap.add_argument("--hub", default=str(Path(__file__).resolve().parents[1] / "hub"), help="model folders' parent")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--baselines", required=True, help="baselines.py JSON, paper protocol")
    ap.add_argument("--baselines-native", help="baselines.py JSON, native protocol")
    ap.add_argument("--log", help="training log.jsonl")
    ap.add_argument("--recipe", required=True, help="the training command")
    ap.add_argument("--paper-figure", default="", help="a sentence on the paper-faithful configuration's figure")
    ap.add_argument("--train-time", help="total training time, all stages (e.g. 'about an hour')")
    ap.add_argument("--notes", default="", help="extra limits / notes (markdown)")
    ap.add_argument(
        "--seed", type=int, nargs="+", default=[0], help="hole draws, as given to baselines.py (e.g. 0 1 2)"
    )
    ap.add_argument("--native-seed", type=int, nargs="+", default=[0], help="the same, native protocol")
    return ap.parse_args(argv)


def _trained(a: argparse.Namespace) -> str:
    """The "Trained on N images for T" phrase of the limits, from the train split and ``--train-time``."""
    trained = "Trained"
    if (Path(a.data) / "train").is_dir():
        trained += f" on {len(FolderDataset(a.data, 'train'))} images"
    if a.train_time:
        trained += f" for {a.train_time}"
    return trained


def _check_holes(path: str, name: str, result: dict, want: dict) -> None:
    """Refuse a baseline measured on other holes than the model's: another dataset, split, protocol or ratio."""
    got = {k: result.get(k) for k in want}
    if got != want:
        raise SystemExit(f"{path}: {name!r} was measured on {got}, the card's figures on {want} (rerun baselines.py)")


def _evaluate(a: argparse.Namespace, completer: LabelCompleter, ds: FolderDataset) -> list[tuple[str, dict, dict]]:
    """The model evaluated per protocol next to its baselines' JSON -> ``[(protocol, ours, baselines)]``."""
    method = completer_method(completer)
    rows = []
    for protocol, bpath, seeds in (("paper", a.baselines, a.seed), ("native", a.baselines_native, a.native_seed)):
        if protocol == "native" and not bpath:
            continue
        base = json.loads(Path(bpath).read_text())
        for name, r in base.items():  # before the model's (long) evaluation; the order is the table's
            _check_holes(bpath, name, r, dict(dataset=ds.info.name, split=a.split, protocol=protocol, ratio=0.5))
            if _seeds(r) != seeds:
                raise SystemExit(f"{bpath}: {name!r} was measured on hole seeds {_seeds(r)}, not {seeds} (in order)")
            if r.get("images") != len(ds) * len(seeds):
                raise SystemExit(
                    f"{bpath}: {name!r} counts {r.get('images')} images, not {len(ds)} x {len(seeds)} draws"
                )
        ours = evaluate(method, ds, ds.info.num_classes, protocol=protocol, seed=seeds)
        print(f"{a.name} {protocol}: PA-mIoU {_pct(ours['pa_miou'])}", file=sys.stderr)
        rows.append((protocol, ours, base))
    return rows


def _intro_lines(a: argparse.Namespace, dataset: str, cfg, n_params: int) -> list[str]:
    """The card's front matter, usage, model description and training recipe."""
    return [
        "---",
        "library_name: torch-label-mae",
        "license: apache-2.0",
        "tags: [image-segmentation, label-completion, l-mae]",
        f"datasets: [{dataset}]",
        "metrics: [mean_iou]",
        "---",
        "",
        f"# {a.name}: L-MAE label completer for {dataset}",
        "",
        f"Fills missing pixels of {dataset} segmentation labels ({cfg.num_classes} classes: "
        f"{', '.join(cfg.class_names or [])}) from the image and the remaining labels.",
        "",
        "```python",
        "from torch_label_mae import LabelCompleter",
        "",
        f'completer = LabelCompleter.from_pretrained("{a.name}")',
        "fixed = completer.complete(image, label)  # pixels == 255 are filled",
        "```",
        "",
        "## Model",
        "",
        f"L-MAE (`{n_params / 1e6:.2f}M` parameters): encoder {cfg.encoder_depth} x {cfg.encoder_dim}, decoder "
        f"{cfg.decoder_depth} x {cfg.decoder_dim}, {cfg.patch_size} px patches at {cfg.size[0]}x{cfg.size[1]}, "
        f"IPS {'on' if cfg.ips else 'off'}, label prior ({_prior(cfg)}) {'on' if cfg.prior is not None else 'off'}, "
        "refinement off. "
        f"Trained for mask ratio {cfg.mask_ratio}. Weights stored as float16 safetensors (loaded as float32).",
        "",
        "## Training recipe",
        "",
        "```",
        a.recipe,
        "```",
        "",
    ]


def _log_lines(log_path: str | None, dataset: str) -> list[str]:
    """Epochs, steps and validation PA-mIoU per epoch from the training log (none without a finished epoch)."""
    if not log_path:
        return []
    log = [json.loads(line) for line in Path(log_path).read_text().splitlines()]
    done = [r for r in log if not r.get("partial")]
    if not done:
        return []
    last = done[-1]
    return [
        f"{last['epoch']} epochs, {last['step']} steps on {dataset} train (CPU). "
        f"Validation PA-mIoU per epoch: "
        + ", ".join(f"{_pct(r['val_pa_miou'])}" for r in done if r.get("val_pa_miou") is not None)
        + ". The shipped weights are the last epoch's (no selection on the validation split).",
        "",
    ]


def _table_row(protocol: str, name: str, r: dict, bold: bool = False) -> str:
    """One method's row of the validation table."""
    each = per_draw(r) or _pct(r["pa_miou"])
    pa = f"**{_pct(r['pa_miou'])}**" if bold else _pct(r["pa_miou"])
    return f"| {protocol} | {name} | {pa} | {_pct(r['miou'])} | {_pct(r['pixel_acc'])} | {each} |"


def _figures_lines(a: argparse.Namespace, ds: FolderDataset, cfg, rows) -> list[str]:
    """The validation section: the hole draws, the table of every method, per-class PA-IoU, how to reproduce."""
    lines = [
        f"## Validation figures ({ds.info.name} {a.split}, {len(ds)} images, ratio 0.5, holes seeded per image id)",
        "",
        "Same holes for every method; PA-mIoU = mIoU over the hidden pixels (void excluded), confusion "
        "accumulated over the split. `paper` = 224x224, 16 px patches; `native` = original size, 32 px blocks.",
    ]
    for protocol, seeds in (("paper", a.seed), ("native", a.native_seed if a.baselines_native else [])):
        if len(seeds) > 1:
            lines += [
                f"`{protocol}`: each image is degraded {len(seeds)} times (hole seeds {', '.join(map(str, seeds))}) "
                "and the hidden pixels of all the draws are counted together, since which patches one draw hides "
                "moves PA-mIoU by several points on 100 images; the last column is each draw alone.",
            ]
        elif seeds:
            lines += [f"`{protocol}`: one draw of holes (seed {seeds[0]})."]
    lines += [
        "",
        "| protocol | method | PA-mIoU | mIoU | pixel acc | PA-mIoU per draw |",
        "|---|---|---|---|---|---|",
    ]
    for protocol, ours, base in rows:
        lines.append(_table_row(protocol, f"**{a.name}**", ours, bold=True))
        lines += [_table_row(protocol, name, r) for name, r in base.items()]
    lines += ["", "Per-class PA-IoU (paper protocol):", "", "| class | PA-IoU |", "|---|---|"]
    ours = rows[0][1]
    for name, v in zip(cfg.class_names or [], ours["pa_iou"], strict=False):
        lines.append(f"| {name} | {'n/a' if v != v else _pct(v)} |")
    lines += [
        "",
        "Reproduce: `label-mae evaluate --model "
        + a.name
        + " --data <root> --split val --protocol paper --seed "
        + " ".join(map(str, a.seed))
        + "`",
        "",
    ]
    return lines


def _limits_lines(trained: str, dataset: str, cfg, rows) -> list[str]:
    """The limits section, with the model's standing against the best baseline of each protocol."""
    standing = []
    for protocol, ours, base in rows:
        best_name, best = max(base.items(), key=lambda kv: kv[1]["pa_miou"])
        gap = 100 * (ours["pa_miou"] - best["pa_miou"])
        standing.append(f"{abs(gap):.1f} points {'above' if gap >= 0 else 'below'} {best_name} ({protocol} protocol)")
    return [
        "## Limits",
        "",
        f"- {trained} on 2 CPU cores: far from the paper's 250M-parameter, "
        "400-epoch GPU models. Against the best classical baseline measured here it is " + "; ".join(standing) + ".",
        "- Works at 224x224 internally; thin structures lost by the resize are restored by taking the "
        f"label prior ({_prior(cfg)}) at full resolution, but predictions inside large holes are coarse.",
        "- Only this dataset's classes; a label with ids outside them is refused.",
        "- Data: " + dataset + " (research dataset; cite it; not redistributed here).",
    ]


def card_text(a: argparse.Namespace, completer: LabelCompleter, ds: FolderDataset, rows, trained: str) -> str:
    """The whole card (markdown) from the evaluated ``rows`` and the options."""
    cfg = completer.config
    n_params = sum(p.numel() for p in completer.parameters())
    lines = _intro_lines(a, ds.info.name, cfg, n_params)
    lines += _log_lines(a.log, ds.info.name)
    lines += _figures_lines(a, ds, cfg, rows)
    if a.paper_figure:
        lines += ["## The paper-faithful configuration", "", a.paper_figure, ""]
    lines += _limits_lines(trained, ds.info.name, cfg, rows)
    if a.notes:
        lines += ["", a.notes]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """Evaluate the model, build its card from the figures and write it to <hub>/<name>/README.md."""
    a = parse_args(argv)
    folder = Path(a.hub) / a.name
    completer = LabelCompleter.from_folder(folder, device="cpu")
    ds = FolderDataset(a.data, a.split)
    trained = _trained(a)
    rows = _evaluate(a, completer, ds)
    text = card_text(a, completer, ds, rows, trained)
    atomic_write(folder / "README.md", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    print(f"wrote {folder / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
