"""Plain-text reports of evaluation results."""

from __future__ import annotations

import math


def _pct(x) -> str:
    return "   n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:6.1f}"


def per_draw(res: dict, sep: str = " / ") -> str:
    """PA-mIoU of each hole draw of an :func:`~torch_label_mae.evaluate.evaluate` result, in percent
    (``"77.3 / 77.5 / 75.8"``); ``""`` for a single draw."""
    return sep.join(_pct(d["pa_miou"]).strip() for d in res.get("per_seed", []))


def format_report(res: dict, class_names: list[str] | None = None) -> str:
    """Headline figures and a per-class IoU table (hidden pixels = PA, whole image)."""
    lines = [
        f"{res.get('model', '')} on {res.get('data', '')} [{res.get('split', '')}], "
        f"protocol {res.get('protocol', '')}, "
        f"ratio {res.get('ratio', '')}: {res['images']} images, {res['images_per_s']:.1f} img/s",
        f"  PA-mIoU {_pct(res['pa_miou'])}   mIoU {_pct(res['miou'])}   pixel acc {_pct(res['pixel_acc'])}   "
        f"PA pixel acc {_pct(res['pa_pixel_acc'])}",
    ]
    if res.get("per_seed"):
        each = ", ".join(f"seed {r['seed']} {_pct(r['pa_miou']).strip()}" for r in res["per_seed"])
        lines.append(f"  hidden pixels of {len(res['per_seed'])} hole draws counted together; PA-mIoU per draw: {each}")
    lines.append(f"  {'class':20s} {'PA-IoU':>7s} {'IoU':>7s}")
    names = class_names or [str(i) for i in range(len(res["iou"]))]
    for name, pa, iou in zip(names, res["pa_iou"], res["iou"], strict=False):
        lines.append(f"  {name:20s} {_pct(pa)} {_pct(iou)}")
    return "\n".join(lines)
