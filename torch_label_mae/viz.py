"""Pictures a person understands at a glance: one row per label, one column per view, a legend.

A row is ``image | input label | completed | ground truth | error on holes | confidence`` (the truth,
error and confidence columns only when known). Colours:

- classes: the labels' palette (the legend names the classes present in the shown rows);
- ``hole (to fill)``: magenta / white diagonal stripes (the pixels the completer fills);
- ``void``: light grey (pixels that are no class: void in the truth, or ``void_index`` when holes
  are marked with another value);
- error on holes: green where the completed id equals the truth, red where it differs, the image in
  faded grey elsewhere (not scored); the row title gives the PA accuracy (share of green);
- confidence of the filled pixels: dark red (0) .. orange .. pale yellow (1), with a colour bar to
  its right; the image in faded grey elsewhere.

The audit's picture (:func:`render_audit`) is drawn the same way: ``image | label | score and suspect
regions | proposed repair``.

Drawing uses Pillow, numpy and scipy's erosion (the outlines); titles use a scalable TrueType font when
Pillow has one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from .io import atomic_write, full_palette

HOLE_COLOR = (255, 0, 255)  # magenta stripes ...
HOLE_STRIPE = (255, 255, 255)  # ... on white
VOID_COLOR = (200, 200, 200)  # light grey: no palette class of CamVid / VOC uses it
RIGHT_COLOR = (40, 170, 60)
WRONG_COLOR = (230, 20, 20)
BACKGROUND = (255, 255, 255)
TEXT_COLOR = (0, 0, 0)
HATCH_PERIOD = 8  # px of the hole stripes, at display resolution
SUSPECT_COLOR = (255, 0, 255)  # the audit's suspect regions, outlined
SHOWN_SCORE = 0.3  # the audit's score is drawn where above this (the rest: the faded image)

COLUMN_TITLES = {
    "image": "image",
    "input": "input label",
    "completed": "completed",
    "truth": "ground truth",
    "error": "error on holes",
    "confidence": "confidence on holes",
}


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _image_rgb(image) -> np.ndarray:
    """Image as ``uint8 [H, W, 3]`` from a PIL image, ``[H, W, 3]`` array or ``[3, H, W]`` tensor."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] in (1, 3):
        image = image.permute(1, 2, 0)
    arr = _np(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr[..., :3]


def _palette_array(palette: Sequence[int] | None) -> np.ndarray:
    return np.array(full_palette(palette), dtype=np.uint8).reshape(256, 3)  # drawn as the PNGs are written


def colorize(
    label,
    palette: Sequence[int] | None = None,
    *,
    holes=None,
    void=None,
    missing_index: int = 255,
    void_index: int = 255,
) -> np.ndarray:
    """Class ids ``[H, W]`` -> RGB ``[H, W, 3]`` uint8, holes and void drawn apart.

    ``holes``: boolean map of the pixels to fill, drawn as magenta / white diagonal stripes (default:
    ``label == missing_index``). ``void``: boolean map of pixels that are no class, drawn light grey
    (default: ``label == void_index`` when that differs from ``missing_index``, else none). Void wins
    where both are set. Other ids take their ``palette`` colour (default: Pascal VOC's colour map).
    """
    arr = _np(label).astype(np.int64)
    rgb = _palette_array(palette)[np.clip(arr, 0, 255)]
    holes = arr == missing_index if holes is None else _np(holes).astype(bool)
    if void is None:
        void = arr == void_index if void_index != missing_index else np.zeros(arr.shape, dtype=bool)
    void = _np(void).astype(bool)
    yy, xx = np.indices(arr.shape)
    stripe = ((yy + xx) // (HATCH_PERIOD // 2)) % 2 == 0
    rgb[holes & stripe] = HOLE_COLOR
    rgb[holes & ~stripe] = HOLE_STRIPE
    rgb[void] = VOID_COLOR
    return rgb


HEAT_STOPS = (  # confidence -> colour: black-red (unsure) .. orange .. pale yellow (sure)
    (0.0, (40, 0, 0)),
    (0.35, (180, 20, 0)),
    (0.7, (250, 140, 0)),
    (1.0, (255, 240, 130)),
)


def heatmap(conf, where=None, image=None) -> np.ndarray:
    """Confidence ``[H, W]`` in [0, 1] -> RGB: dark red (0) .. orange .. pale yellow (1), see
    ``HEAT_STOPS``. With ``where`` (boolean map), pixels outside it show the image faded to light
    grey (plain light grey without ``image``), as in :func:`error_map`."""
    c = np.clip(np.nan_to_num(_np(conf).astype(np.float32)), 0, 1)
    xs = [s for s, _ in HEAT_STOPS]
    rgb = np.stack([np.interp(c, xs, [col[k] for _, col in HEAT_STOPS]) for k in range(3)], -1)
    rgb = rgb.round().astype(np.uint8)
    if where is not None:
        outside = ~_np(where).astype(bool)
        rgb[outside] = _faded(image, c.shape)[outside]
    return rgb


def _faded(image, shape: tuple[int, ...]) -> np.ndarray:
    """The image in faded grey (150..252), or plain light grey (225) without an image."""
    if image is None:
        return np.full((*shape, 3), 225, dtype=np.uint8)
    g = _image_rgb(image).astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.repeat((150 + 0.4 * g).astype(np.uint8)[..., None], 3, axis=2)


def hole_accuracy(completed, truth, holes, void_index: int = 255) -> tuple[float | None, int]:
    """PA accuracy: the share of hole pixels (void in the truth left out) whose completed id equals
    the truth. Returns ``(accuracy or None when no pixel is scored, number of scored pixels)``."""
    t = _np(truth)
    scored = _np(holes).astype(bool) & (t != void_index)
    n = int(scored.sum())
    return (float((_np(completed)[scored] == t[scored]).mean()) if n else None), n


def error_map(completed, truth, holes, image=None, void_index: int = 255) -> np.ndarray:
    """RGB ``[H, W, 3]``: green where the completed id equals the truth on a hole, red where it
    differs, elsewhere (not scored: known pixels, void in the truth) the image faded to light grey
    (plain light grey without ``image``)."""
    t = _np(truth)
    scored = _np(holes).astype(bool) & (t != void_index)
    rgb = _faded(image, t.shape)
    right = _np(completed) == t
    rgb[scored & right] = RIGHT_COLOR
    rgb[scored & ~right] = WRONG_COLOR
    return rgb


def hole_void_maps(broken, truth=None, missing_index: int = 255, void_index: int = 255):
    """``(holes, void)`` boolean maps of an input label: holes are its ``missing_index`` pixels,
    void its ``void_index`` pixels when that differs from ``missing_index``; with the ``truth``,
    missing pixels that are void in the truth count as void, not as holes."""
    b = _np(broken)
    to_fill = b == missing_index
    void = (b == void_index) & ~to_fill if void_index != missing_index else np.zeros(b.shape, dtype=bool)
    if truth is not None:
        tvoid = _np(truth) == void_index
        void = void | (to_fill & tvoid)
        to_fill = to_fill & ~tvoid
    return to_fill, void


def pick_spread(names: Sequence[str], n: int) -> list[str]:
    """``n`` names evenly spaced over ``sorted(names)``: the first and the last when ``n >= 2``, the
    middle one when ``n == 1``, all of them when ``n >= len(names)``."""
    s = sorted(names)
    if n >= len(s):
        return s
    if n <= 0:
        return []
    if n == 1:
        return [s[(len(s) - 1) // 2]]
    return [s[round(i * (len(s) - 1) / (n - 1))] for i in range(n)]


def pick_worst(scores: Mapping[str, float | None], n: int) -> list[str]:
    """The ``n`` names with the lowest scores (ties by name); names scored ``None`` (nothing to
    score) come last."""
    order = sorted(scores, key=lambda k: (scores[k] is None, scores[k] if scores[k] is not None else 0.0, k))
    return order[: max(n, 0)]


def load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """A scalable font of ``size`` px: Pillow's bundled one (Pillow >= 10.1 with FreeType), else
    DejaVu Sans when installed, else Pillow's small bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError, AttributeError):  # Pillow < 10.1 or no FreeType
        pass
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except (OSError, ImportError):
        return ImageFont.load_default()


def _text_width(font, text: str) -> int:
    box = font.getbbox(text)
    return int(box[2] - box[0])


def _fit(font, text: str, width: int) -> str:
    """``text`` cut with an ellipsis so that it fits ``width`` px."""
    if _text_width(font, text) <= width:
        return text
    while text and _text_width(font, text + "...") > width:
        text = text[:-1]
    return text + "..."


@dataclass
class Row:
    """One row of a picture. ``image``: PIL image, ``[H, W, 3]`` array or ``[3, H, W]`` tensor;
    ``broken``: the input label (ids, holes = ``missing_index``); ``completed``: the completer's
    output; ``confidence``: ``[H, W]`` in [0, 1] or None; ``truth``: the complete label or None (adds
    the ground truth and error columns); ``name``: shown in the row title, followed by ``note``;
    ``holes`` / ``void``: boolean maps overriding :func:`hole_void_maps` (e.g. ``degrade``'s map)."""

    image: Any
    broken: Any
    completed: Any
    confidence: Any = None
    truth: Any = None
    name: str = ""
    note: str = ""
    holes: Any = None
    void: Any = None


@dataclass
class _Style:
    panel_width: int
    font: Any
    small: Any
    size: int
    gap: int
    bar: int = 0  # colour bar width (0: none)
    bar_text: int = 0

    @property
    def colorbar_width(self) -> int:
        return self.gap + self.bar + self.gap // 2 + self.bar_text if self.bar else 0


def _style(panel_width: int, with_bar: bool) -> _Style:
    size = max(11, round(panel_width / 20))
    st = _Style(panel_width, load_font(size), load_font(max(10, round(size * 0.8))), size, max(4, panel_width // 50))
    if with_bar:
        st.bar = max(10, panel_width // 24)
        st.bar_text = _text_width(st.small, "0.5") + st.gap // 2
    return st


def _resize_nearest(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of any ``[H, W, ...]`` array (ids, masks) to ``shape`` (H, W)."""
    h, w = arr.shape[:2]
    ys = (np.arange(shape[0]) * h // shape[0]).clip(0, h - 1)
    xs = (np.arange(shape[1]) * w // shape[1]).clip(0, w - 1)
    return arr[ys][:, xs]


def _resize_smooth(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an RGB uint8 image or a float map to ``shape`` (H, W)."""
    if arr.shape[:2] == shape:
        return arr
    im = Image.fromarray(arr) if arr.dtype == np.uint8 else Image.fromarray(arr.astype(np.float32))  # mode F
    return np.asarray(im.resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def _check_sizes(row: Row, shape: tuple[int, ...]) -> None:
    """``ValueError`` naming the row and the map whose size is not the label's: a picture would stretch it."""
    maps = {"image": _image_rgb(row.image).shape[:2], "completed label": _np(row.completed).shape}
    for what in ("confidence", "truth", "holes", "void"):
        if getattr(row, what) is not None:
            maps[what] = _np(getattr(row, what)).shape
    for what, hw in maps.items():
        if tuple(hw) != tuple(shape):
            raise ValueError(f"row {row.name!r}: the {what} is {tuple(hw)} (H, W) but the label is {tuple(shape)}")


def _row_maps(row: Row, missing_index: int, void_index: int) -> dict[str, Any]:
    """Native-resolution arrays of a row: ids, hole / void maps, accuracy."""
    broken, completed = _np(row.broken).astype(np.int64), _np(row.completed).astype(np.int64)
    truth = None if row.truth is None else _np(row.truth).astype(np.int64)
    _check_sizes(row, broken.shape)
    holes, void = hole_void_maps(broken, truth, missing_index, void_index)
    holes = holes if row.holes is None else _np(row.holes).astype(bool)
    void = void if row.void is None else _np(row.void).astype(bool)
    holes = holes & ~void
    out = {"broken": broken, "completed": completed, "truth": truth, "holes": holes, "void": void}
    out["acc"], out["scored"] = (None, 0) if truth is None else hole_accuracy(completed, truth, holes, void_index)
    return out


def _present(m: dict[str, Any], void_index: int, missing_index: int) -> set[int]:
    """Class ids drawn in a row's label panels (holes and void left out)."""
    ids = set(np.unique(m["broken"][~(m["holes"] | m["void"])]).tolist())
    done = m["completed"]
    ids |= set(np.unique(done[(done != void_index) & (done != missing_index)]).tolist())
    if m["truth"] is not None:
        ids |= set(np.unique(m["truth"][m["truth"] != void_index]).tolist())
    return {i for i in ids if 0 <= i <= 255}


def _row_panels(row: Row, m: dict[str, Any], columns: Sequence[str], shape, palette, indices: tuple[int, int]) -> dict:
    """Display-size RGB panels of a row, keyed by column (columns the row cannot fill are left out);
    ``indices``: ``(missing_index, void_index)``."""
    missing_index, void_index = indices
    ids = {k: None if m[k] is None else _resize_nearest(m[k], shape) for k in ("broken", "completed", "truth")}
    holes, void = _resize_nearest(m["holes"], shape), _resize_nearest(m["void"], shape)
    image = _resize_smooth(_image_rgb(row.image), shape)
    none = np.zeros(shape, dtype=bool)
    panels = {
        "image": image,
        "input": colorize(ids["broken"], palette, holes=holes, void=void),
        "completed": colorize(ids["completed"], palette, holes=none, void=ids["completed"] == void_index),
    }
    if ids["truth"] is not None:
        panels["truth"] = colorize(ids["truth"], palette, holes=none, void=ids["truth"] == void_index)
        panels["error"] = error_map(ids["completed"], ids["truth"], holes, image, void_index)
    if row.confidence is not None and "confidence" in columns:
        filled = holes | (ids["broken"] == missing_index)  # what the completer filled, void included
        conf = _resize_smooth(_np(row.confidence).astype(np.float32), shape)
        panels["confidence"] = heatmap(conf, filled, image)
    return panels


def _draw_colorbar(canvas: Image.Image, draw: ImageDraw.ImageDraw, x: int, y: int, h: int, st: _Style) -> tuple:
    """A vertical colour bar (1 at the top, 0 at the bottom) with ticks 0, 0.5, 1; returns its box."""
    ramp = np.linspace(1.0, 0.0, h, dtype=np.float32)[:, None].repeat(st.bar, axis=1)
    canvas.paste(Image.fromarray(heatmap(ramp)), (x, y))
    draw.rectangle((x - 1, y - 1, x + st.bar, y + h), outline=TEXT_COLOR)
    tx = x + st.bar + st.gap // 2
    for value, text in ((1.0, "1"), (0.5, "0.5"), (0.0, "0")):
        ty = y + round((1 - value) * (h - 1))
        draw.line((x + st.bar, ty, tx - 1, ty), fill=TEXT_COLOR)
        box = st.small.getbbox(text)
        top = min(max(ty - (box[1] + box[3]) // 2, y - box[1]), y + h - box[3])
        draw.text((tx, top), text, fill=TEXT_COLOR, font=st.small)
    return (x, y, x + st.bar, y + h)


def _text_mid(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font) -> None:
    """Draw ``text`` starting at ``x``, centred vertically on ``y`` (works with bitmap fonts too)."""
    box = font.getbbox(text)
    draw.text((xy[0], xy[1] - (box[1] + box[3]) // 2), text, fill=TEXT_COLOR, font=font)


def _legend_entries(classes: Sequence[int], palette, class_names, holes: bool, void: bool, error: bool) -> list:
    """``(text, swatch)`` pairs; a swatch is an RGB tuple or ``"hatch"``."""
    pal = _palette_array(palette)
    names = list(class_names or [])
    entries = [(names[i] if i < len(names) else f"class {i}", tuple(int(v) for v in pal[i])) for i in classes]
    if holes:
        entries.append(("hole (to fill)", "hatch"))
    if void:
        entries.append(("void", VOID_COLOR))
    if error:
        entries += [("right (on holes)", RIGHT_COLOR), ("wrong (on holes)", WRONG_COLOR)]
    return entries


def _legend_layout(entries: Sequence, width: int, st: _Style) -> tuple[list, int]:
    """Flow the legend entries into lines of ``width`` px: ``([(x, y, text, swatch)], height)``."""
    sw, x, y, placed = st.size, 0, 0, []
    line = st.size + st.gap
    for text, swatch in entries:
        w = sw + st.gap // 2 + _text_width(st.font, text)
        if x and x + w > width:
            x, y = 0, y + line
        placed.append((x, y, text, swatch))
        x += w + 2 * st.gap
    return placed, (y + line if placed else 0)


def _draw_legend(canvas: Image.Image, draw, placed: Sequence, x0: int, y0: int, st: _Style) -> list:
    """Draw the laid-out legend; returns ``[(text, swatch box)]``."""
    boxes = []
    for x, y, text, swatch in placed:
        box = (x0 + x, y0 + y, x0 + x + st.size - 1, y0 + y + st.size - 1)
        if swatch == "hatch":
            hatch = colorize(np.zeros((st.size, st.size), dtype=np.int64), holes=np.ones((st.size, st.size), bool))
            canvas.paste(Image.fromarray(hatch), box[:2])
        else:
            draw.rectangle(box, fill=swatch)
        draw.rectangle(box, outline=(90, 90, 90))
        _text_mid(draw, (box[2] + 1 + st.gap // 2, (box[1] + box[3]) // 2), text, st.font)
        boxes.append((text, box))
    return boxes


def _columns(rows: Sequence[Row]) -> list[str]:
    cols = ["image", "input", "completed"]
    if any(r.truth is not None for r in rows):
        cols += ["truth", "error"]
    if any(r.confidence is not None for r in rows):
        cols.append("confidence")
    return cols


TITLE_SEP = "  ·  "


def _row_title(row: Row, m: dict[str, Any]) -> list[str]:
    """The parts of a row's title: name, share of holes, PA accuracy on holes, note."""
    parts = [row.name] if row.name else []
    parts.append(f"holes {m['holes'].mean():.0%} of pixels")
    if m["acc"] is not None:
        parts.append(f"PA accuracy on holes {m['acc']:.1%}")
    return parts + ([row.note] if row.note else [])


def _wrap(font, parts: Sequence[str], width: int) -> list[str]:
    """Join ``parts`` with ``TITLE_SEP`` into lines of at most ``width`` px (a part too long is cut)."""
    lines: list[str] = []
    for part in parts:
        if lines and _text_width(font, lines[-1] + TITLE_SEP + part) <= width:
            lines[-1] += TITLE_SEP + part
        else:
            lines.append(_fit(font, part, width))
    return lines


def render(
    rows: Sequence[Row],
    *,
    palette: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    missing_index: int = 255,
    void_index: int = 255,
    panel_width: int = 400,
) -> tuple[Image.Image, dict[str, Any]]:
    """Draw ``rows`` (see :class:`Row`) as one picture: column titles, per row a title (name, share of
    holes, PA accuracy on holes when the truth is known) and its panels scaled to ``panel_width`` px,
    a colour bar right of each confidence panel, and a legend of the classes present in the rows
    (``class_names[id]`` when known, else ``class <id>``), holes, void and the error colours.

    Returns ``(picture, layout)``; ``layout`` holds ``columns``, ``classes`` (ids in the legend),
    ``legend`` (``[(text, swatch box)]``), ``boxes`` (per row ``{column: (x0, y0, x1, y1)}``, x1 / y1
    exclusive), ``colorbars`` (per row, a box or None), ``titles`` and ``accuracy`` (per row).
    """
    if not rows:
        raise ValueError("nothing to draw: no rows")
    columns = _columns(rows)
    st = _style(panel_width, "confidence" in columns)
    maps = [_row_maps(r, missing_index, void_index) for r in rows]
    classes = sorted(set().union(*(_present(m, void_index, missing_index) for m in maps)))
    shapes = [(max(1, round(m["broken"].shape[0] * panel_width / m["broken"].shape[1])), panel_width) for m in maps]
    width = st.gap + len(columns) * (panel_width + st.gap) + st.colorbar_width
    line = st.size + st.gap
    any_void = any(m["void"].any() for m in maps) or any(m["truth"] is not None for m in maps)
    entries = _legend_entries(
        classes, palette, class_names, any(m["holes"].any() for m in maps), any_void, "error" in columns
    )
    placed, legend_h = _legend_layout(entries, width - 2 * st.gap, st)
    titles = [_wrap(st.font, _row_title(r, m), width - 2 * st.gap) for r, m in zip(rows, maps, strict=True)]
    height = st.gap + line + sum(len(t) * line + h + st.gap for t, (h, _) in zip(titles, shapes, strict=True))
    height += legend_h + st.gap if placed else 0
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for i, col in enumerate(columns):
        x = st.gap + i * (panel_width + st.gap)
        _text_mid(draw, (x, st.gap + st.size // 2), _fit(st.font, COLUMN_TITLES[col], panel_width), st.font)
    layout: dict[str, Any] = {"columns": columns, "classes": classes, "boxes": [], "colorbars": [], "titles": []}
    layout["accuracy"] = [m["acc"] for m in maps]
    y = st.gap + line
    for row, m, shape, title in zip(rows, maps, shapes, titles, strict=True):
        for text in title:
            _text_mid(draw, (st.gap, y + st.size // 2), text, st.font)
            y += line
        panels, boxes, bar = _row_panels(row, m, columns, shape, palette, (missing_index, void_index)), {}, None
        for i, col in enumerate(columns):
            if col in panels:
                x = st.gap + i * (panel_width + st.gap)
                canvas.paste(Image.fromarray(panels[col]), (x, y))
                boxes[col] = (x, y, x + shape[1], y + shape[0])
        if "confidence" in boxes:
            bar = _draw_colorbar(canvas, draw, boxes["confidence"][2] + st.gap, y, shape[0], st)
        layout["boxes"].append(boxes), layout["colorbars"].append(bar), layout["titles"].append(TITLE_SEP.join(title))
        y += shape[0] + st.gap
    layout["legend"] = _draw_legend(canvas, draw, placed, st.gap, y, st)
    return canvas, layout


def save_picture(rows: Sequence[Row], path: str | Path, **kwargs: Any) -> tuple[Path, dict[str, Any]]:
    """:func:`render` the rows and write the picture atomically, in the format its name ends in (``.png``,
    ``.jpg``, ``.webp``, ...: any Pillow writes; another name is a ``ValueError`` before anything is drawn);
    returns ``(path, layout)``."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise ValueError(f"{path}: a picture's name ends in a format Pillow writes, e.g. .png or .jpg")
    canvas, layout = render(rows, **kwargs)
    atomic_write(path, lambda tmp: canvas.save(tmp, format=fmt))
    return Path(path), layout


def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=np.ones((3, 3), bool), iterations=2)


def render_audit(rows: Sequence[dict], *, palette=None, class_names=None, panel_width: int = 360) -> Image.Image:
    """One row per label: image | label | suspect regions (the score over the faded image, pale yellow
    = agrees .. dark red = surely wrong, suspect regions outlined in magenta) | proposed repair (the
    label with the suspect regions replaced, outlined). Scores below ``SHOWN_SCORE`` show the faded image.
    ``rows``: dicts with ``image``, ``label``, ``result`` (an :class:`AuditResult`: the suspect regions),
    ``name`` and optionally ``repair`` (the :class:`AuditResult` at the repair threshold; default ``result``)."""
    columns = ["image", "label", "score (orange 0.3 .. dark red 1), suspects", "proposed repair"]
    st = _style(panel_width, False)
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
        titles.append(_wrap(st.font, parts, width - 2 * st.gap))
        classes |= set(np.unique(lab[(lab >= 0) & (lab < 255)]).tolist())
        fix = r.get("repair", res).repaired
        classes |= set(np.unique(fix[(fix >= 0) & (fix < 255)]).tolist())
    entries = _legend_entries(sorted(classes), palette, class_names, False, True, False)
    entries.append(("suspect region", SUSPECT_COLOR))
    placed, legend_h = _legend_layout(entries, width - 2 * st.gap, st)
    height = st.gap + line + sum(len(t) * line + h + st.gap for t, (h, _) in zip(titles, shapes, strict=True))
    height += legend_h + st.gap
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for i, col in enumerate(columns):
        x = st.gap + i * (panel_width + st.gap)
        _text_mid(draw, (x, st.gap + st.size // 2), _fit(st.font, col, panel_width), st.font)
    y = st.gap + line
    for r, shape, title in zip(rows, shapes, titles, strict=True):
        for text in title:
            _text_mid(draw, (st.gap, y + st.size // 2), text, st.font)
            y += line
        res, fix = r["result"], r.get("repair", r["result"])
        lab = _resize_nearest(np.asarray(r["label"]).astype(np.int64), shape)
        fixed = _resize_nearest(fix.repaired.astype(np.int64), shape)
        flagged = _resize_nearest(res.flagged, shape)
        image = _resize_smooth(_image_rgb(r["image"]), shape)
        score = _resize_smooth(res.score.astype(np.float32), shape)
        none = np.zeros(shape, dtype=bool)
        heat = heatmap(1.0 - score, (score > SHOWN_SCORE) | flagged, image)
        ring = _outline(flagged)
        heat[ring] = SUSPECT_COLOR
        rep = colorize(fixed, palette, holes=none, void=(fixed < 0) | (fixed >= 255))
        rep[_outline(_resize_nearest(fix.flagged, shape))] = SUSPECT_COLOR
        panels = [image, colorize(lab, palette, holes=none, void=(lab < 0) | (lab >= 255)), heat, rep]
        for i, p in enumerate(panels):
            canvas.paste(Image.fromarray(p), (st.gap + i * (panel_width + st.gap), y))
        y += shape[0] + st.gap
    _draw_legend(canvas, draw, placed, st.gap, y, st)
    return canvas
