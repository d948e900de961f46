"""Colour tables: labels coded as RGB colours (CamVid's and Cityscapes' colour labels, LabelMe exports)
read as class ids and written back in the same colours.

A :class:`ColorTable` maps colours to class ids. Three kinds of colours:

- **class colours**: ``colors[i]`` is the colour of class id ``i`` (the colour written for it); more
  colours may read as the same id (``aliases``, never written);
- **void colours** (``void``): the dataset's own ignore label (VOC's object borders, CamVid's and
  Cityscapes' "void"): kept as they are, never filled, and unknown context for the model;
- **the missing colour** (``missing``, white ``(255, 255, 255)`` unless the table says otherwise):
  the holes to fill.

Any other colour is an error that names it, with its pixel count.

Built-in tables (:data:`BUILTIN`, by name): ``camvid`` (the 11 classes of the SegNet CamVid version
in CamVid's own colours; void black), ``cityscapes`` (the 19 train ids in Cityscapes' colours; the
colours of the other Cityscapes classes are void) and ``voc`` (Pascal VOC's 21 classes in the VOC
colour map; the border colour ``(224, 224, 192)`` is void).

A table file is JSON, one of::

    {"name": "mine", "colors": [[128, 64, 128], [244, 35, 232], ...],     # index = class id
     "void": [0, 0, 0],                  # optional: one colour or a list of colours
     "missing": [255, 255, 255],         # optional: the colour of holes (default white)
     "aliases": [{"id": 1, "color": [0, 0, 192]}]}                         # optional

    {"classes": [{"id": 0, "color": [128, 64, 128], "name": "road"}, ...], "void": ..., "missing": ...}

    [{"id": 0, "color": [128, 64, 128]}, {"id": 1, "color": "#f423e8"}, ...]

Colours are ``[r, g, b]`` (integers 0..255) or ``"#rrggbb"``. In the ``classes`` / list forms, ids
must cover ``0..K-1``; an id listed twice reads both colours, and the first one is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .io import default_palette

RGB = tuple[int, int, int]
WHITE: RGB = (255, 255, 255)
VOID_ID = -1  # what :meth:`ColorTable.decode` returns for void pixels
MISSING_ID = -2  # ... and for pixels of the missing colour
_UNKNOWN = -3

__all__ = ["BUILTIN", "MISSING_ID", "VOID_ID", "ColorTable", "flattened_hint", "is_color_label", "load_colors"]


def _key(rgb: np.ndarray) -> np.ndarray:
    """``[..., 3]`` uint8 -> one int per colour, ``r << 16 | g << 8 | b``."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def gray_level(color: RGB) -> int:
    """The value Pillow's ``convert("L")`` gives ``color`` (ITU-R 601-2 luma, Pillow's rounding)."""
    r, g, b = color
    return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16


@dataclass(frozen=True)
class ColorTable:
    """RGB colours <-> class ids; see the module docstring. ``colors[i]`` is class ``i``'s colour."""

    colors: tuple[RGB, ...]
    void: tuple[RGB, ...] = ()
    missing: RGB = WHITE
    aliases: tuple[tuple[RGB, int], ...] = ()
    name: str = "custom"
    _lookup: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        where = f"colour table {self.name!r}"
        norm = lambda c, what: _color(c, f"{where}: {what}")  # noqa: E731
        object.__setattr__(self, "colors", tuple(norm(c, f"colors[{i}]") for i, c in enumerate(self.colors)))
        object.__setattr__(self, "void", tuple(norm(c, f"void[{i}]") for i, c in enumerate(self.void)))
        object.__setattr__(self, "missing", norm(self.missing, "missing"))
        object.__setattr__(self, "aliases", tuple((norm(c, "aliases"), int(i)) for c, i in self.aliases))
        if not self.colors:
            raise ValueError(f"{where}: no class colours")
        owner: dict[RGB, str] = {}
        entries = [(c, f"class {i}") for i, c in enumerate(self.colors)] + [(c, f"class {i}") for c, i in self.aliases]
        entries += [(c, "void") for c in self.void] + [(self.missing, "missing")]
        for c, what in entries:
            if c in owner and owner[c] != what:
                raise ValueError(f"{where}: colour {c} is both {owner[c]} and {what}; a colour must mean one thing")
            owner.setdefault(c, what)
        for c, i in self.aliases:
            if not 0 <= i < len(self.colors):
                raise ValueError(
                    f"{where}: alias {c} -> id {i} is not a class id of the table (0..{len(self.colors) - 1})"
                )
        lookup = {int(_key(np.array(c))): i for i, c in enumerate(self.colors)}
        lookup.update({int(_key(np.array(c))): i for c, i in self.aliases})
        lookup.update({int(_key(np.array(c))): VOID_ID for c in self.void})
        lookup[int(_key(np.array(self.missing)))] = MISSING_ID
        object.__setattr__(self, "_lookup", lookup)

    @property
    def num_classes(self) -> int:
        """How many class colours the table has (ids ``0..num_classes-1``)."""
        return len(self.colors)

    def decode(self, rgb, name: str = "label") -> np.ndarray:
        """``HxWx3`` uint8 colours -> ``int64 [H, W]`` class ids, :data:`VOID_ID` on void colours and
        :data:`MISSING_ID` on the missing colour. Raises ``ValueError`` naming ``name``, each unknown
        colour and its pixel count (the five commonest)."""
        arr = np.asarray(rgb)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"{name}: a colour label must be HxWx3 uint8, got {arr.dtype} {arr.shape}")
        uniq, inv = np.unique(_key(arr), return_inverse=True)
        lut = np.array([self._lookup.get(int(k), _UNKNOWN) for k in uniq], dtype=np.int64)
        unknown = np.flatnonzero(lut == _UNKNOWN)
        if unknown.size:
            counts = np.bincount(inv.ravel(), minlength=len(uniq))[unknown]
            order = np.argsort(-counts, kind="stable")[:5]
            listed = ", ".join(f"{_rgb_of(int(uniq[unknown[j]]))} x {int(counts[j])}" for j in order)
            more = f" and {unknown.size - 5} more" if unknown.size > 5 else ""
            raise ValueError(
                f"{name}: {int(counts.sum())} pixels have {unknown.size} colours that are not in the colour table "
                f"{self.name!r}: {listed}{more} (colour x pixels); add them to the table or paint them with "
                f"its missing colour {self.missing}"
            )
        return lut[inv.reshape(arr.shape[:2])]

    def encode(self, ids) -> np.ndarray:
        """``[H, W]`` ids (class ids, :data:`VOID_ID`, :data:`MISSING_ID`) -> ``HxWx3`` uint8 colours (the
        first void colour for :data:`VOID_ID`)."""
        ids = ids.numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
        n = self.num_classes
        bad = (ids >= n) | (ids < MISSING_ID) | ((ids == VOID_ID) & (not self.void))
        if bad.any():
            vals = sorted(np.unique(ids[bad]).tolist())[:5]
            raise ValueError(f"ids {vals} have no colour in the colour table {self.name!r} ({n} classes)")
        lut = np.array([*self.colors, self.missing, self.void[0] if self.void else WHITE], dtype=np.uint8)
        return lut[np.where(ids == MISSING_ID, n, np.where(ids == VOID_ID, n + 1, ids))]

    def gray_levels(self) -> set[int]:
        """What the class and void colours become under ``convert("L")``."""
        return {gray_level(c) for c in (*self.colors, *self.void)}

    # -- files -------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data, name: str = "custom") -> ColorTable:
        """A table from the parsed JSON of a table file (see the module docstring)."""
        if isinstance(data, list):
            data = {"classes": data}
        if not isinstance(data, dict):
            raise ValueError(
                f"{name}: a colour table is a JSON object or a list of {{'id', 'color'}}, got {data!r:.60}"
            )
        unknown = sorted(set(data) - {"name", "colors", "classes", "void", "missing", "aliases"})
        if unknown:
            raise ValueError(
                f"{name}: unknown keys {unknown}; expected colors or classes, void, missing, aliases, name"
            )
        if ("colors" in data) == ("classes" in data):
            raise ValueError(f"{name}: give exactly one of 'colors' (a list indexed by id) or 'classes'")
        if "colors" in data:
            colors, aliases = _list(data["colors"], f"{name}: colors"), []
        else:
            colors, aliases = _classes(data["classes"], name)
        aliases += [
            (_color(e.get("color"), f"{name}: aliases[{k}]"), _id(e, f"{name}: aliases[{k}]"))
            for k, e in enumerate(_entries(data.get("aliases", []), f"{name}: aliases"))
        ]
        void = data.get("void") or []
        void = [void] if _is_one_color(void) else _list(void, f"{name}: void")
        missing = data.get("missing", WHITE)
        return cls(tuple(colors), tuple(void), missing, tuple(aliases), str(data.get("name", name)))

    @classmethod
    def from_json(cls, path: str | Path) -> ColorTable:
        """A table from a JSON file; ``ValueError`` naming the file and the entry at fault."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: cannot read the colour table ({e})") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(data, name=str(path))

    def to_dict(self) -> dict:
        """The table as the JSON object :meth:`from_dict` reads."""
        return {
            "name": self.name,
            "colors": [list(c) for c in self.colors],
            "void": [list(c) for c in self.void],
            "missing": list(self.missing),
            "aliases": [{"id": i, "color": list(c)} for c, i in self.aliases],
        }


def _rgb_of(key: int) -> RGB:
    return (key >> 16) & 255, (key >> 8) & 255, key & 255


def _is_one_color(value) -> bool:
    return isinstance(value, str) or (
        isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, int) for v in value)
    )


def _color(value, where: str) -> RGB:
    """``[r, g, b]`` or ``"#rrggbb"`` -> an ``(r, g, b)`` tuple of ints in 0..255."""
    if isinstance(value, str):
        text = value.strip()
        if len(text) == 7 and text[0] == "#":
            try:
                return _color([int(text[i : i + 2], 16) for i in (1, 3, 5)], where)
            except ValueError:
                pass
        raise ValueError(f"{where}: expected '#rrggbb', got {value!r}")
    ok = isinstance(value, (list, tuple, np.ndarray)) and len(value) == 3
    ok = ok and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)
    if not ok:
        raise ValueError(f"{where}: expected [r, g, b] with integers in 0..255, got {value!r}")
    return int(value[0]), int(value[1]), int(value[2])


def _list(value, where: str) -> list[RGB]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{where}: expected a list of colours, got {value!r:.60}")
    return [_color(c, f"{where}[{i}]") for i, c in enumerate(value)]


def _entries(value, where: str) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        raise ValueError(f"{where}: expected a list of {{'id': ..., 'color': ...}} objects, got {value!r:.60}")
    return value


def _id(entry: dict, where: str) -> int:
    i = entry.get("id")
    if isinstance(i, bool) or not isinstance(i, int) or i < 0:
        raise ValueError(f"{where}: 'id' must be an integer >= 0, got {i!r}")
    return i


def _classes(value, name: str) -> tuple[list[RGB], list[tuple[RGB, int]]]:
    """``[{"id", "color"}, ...]`` -> (colour per id 0..K-1, aliases: later colours of an id)."""
    first: dict[int, RGB] = {}
    aliases = []
    for k, e in enumerate(_entries(value, f"{name}: classes")):
        i, c = _id(e, f"{name}: classes[{k}]"), _color(e.get("color"), f"{name}: classes[{k}] color")
        if i in first:
            aliases.append((c, i))
        else:
            first[i] = c
    gaps = sorted(set(range(max(first, default=-1) + 1)) - set(first))
    if not first or gaps:
        raise ValueError(f"{name}: class ids must cover 0..K-1 without gaps; missing ids {gaps[:10]}")
    return [first[i] for i in range(len(first))], aliases


# ----------------------------------------------------------------------------------------------------
# built-in tables
# ----------------------------------------------------------------------------------------------------
_VOC = default_palette()
BUILTIN: dict[str, ColorTable] = {
    # sky, building, pole, road, pavement, tree, sign_symbol, fence, car, pedestrian, bicyclist (CamVid's
    # label_colors.txt; pavement = Sidewalk; SegNet's pictures paint it (60, 40, 222): read as pavement too)
    "camvid": ColorTable(
        colors=(
            (128, 128, 128),
            (128, 0, 0),
            (192, 192, 128),
            (128, 64, 128),
            (0, 0, 192),
            (128, 128, 0),
            (192, 128, 128),
            (64, 64, 128),
            (64, 0, 128),
            (64, 64, 0),
            (0, 128, 192),
        ),
        void=((0, 0, 0),),
        aliases=(((60, 40, 222), 4),),
        name="camvid",
    ),
    # the 19 train ids; void: every other Cityscapes class's colour (polegroup and license plate share
    # the colours of pole and car, and read as those)
    "cityscapes": ColorTable(
        colors=(
            (128, 64, 128),
            (244, 35, 232),
            (70, 70, 70),
            (102, 102, 156),
            (190, 153, 153),
            (153, 153, 153),
            (250, 170, 30),
            (220, 220, 0),
            (107, 142, 35),
            (152, 251, 152),
            (70, 130, 180),
            (220, 20, 60),
            (255, 0, 0),
            (0, 0, 142),
            (0, 0, 70),
            (0, 60, 100),
            (0, 80, 100),
            (0, 0, 230),
            (119, 11, 32),
        ),
        void=(
            (0, 0, 0),
            (111, 74, 0),
            (81, 0, 81),
            (250, 170, 160),
            (230, 150, 140),
            (180, 165, 180),
            (150, 100, 100),
            (150, 120, 90),
            (0, 0, 90),
            (0, 0, 110),
        ),
        name="cityscapes",
    ),
    "voc": ColorTable(
        colors=tuple(tuple(_VOC[3 * i : 3 * i + 3]) for i in range(21)),
        void=((224, 224, 192),),
        name="voc",
    ),
}


def load_colors(spec) -> ColorTable | None:
    """``None`` (no table), a :class:`ColorTable`, a built-in name (:data:`BUILTIN`), a path to a JSON
    table file or a parsed table (dict / list) -> a :class:`ColorTable` (or None)."""
    if spec is None or isinstance(spec, ColorTable):
        return spec
    if isinstance(spec, (dict, list)):
        return ColorTable.from_dict(spec)
    if isinstance(spec, str) and spec.lower() in BUILTIN:
        return BUILTIN[spec.lower()]
    if isinstance(spec, (str, Path)):
        if not Path(spec).is_file():
            raise ValueError(f"colors: {spec!r} is neither a built-in table {sorted(BUILTIN)} nor a JSON file")
        return ColorTable.from_json(spec)
    raise TypeError(f"colors must be a ColorTable, a table name, a JSON file path or None, got {type(spec).__name__}")


def is_color_label(label) -> bool:
    """Whether ``label`` is colour-coded: a PIL 'RGB' (or opaque 'RGBA', as Cityscapes' colour PNGs)
    image, an ``HxWx3`` uint8 numpy array or a ``3xHxW`` uint8 tensor."""
    if isinstance(label, Image.Image):
        return label.mode in ("RGB", "RGBA")
    if isinstance(label, np.ndarray):
        return label.ndim == 3 and label.shape[2] == 3 and label.dtype == np.uint8
    if isinstance(label, torch.Tensor):
        return label.ndim == 3 and label.shape[0] == 3 and label.dtype == torch.uint8
    return False


def color_label_to_array(label, name: str = "label") -> np.ndarray:
    """A colour label (see :func:`is_color_label`) -> ``HxWx3`` uint8 numpy (a copy for tensors).
    Raises ``ValueError`` naming ``name`` for an 'RGBA' image with transparent pixels."""
    if isinstance(label, Image.Image):
        arr = np.array(label)
        if label.mode == "RGBA":
            clear = int((arr[..., 3] != 255).sum())
            if clear:
                raise ValueError(
                    f"{name}: {clear} pixels of this RGBA colour label are not opaque; a colour is a class"
                )
            arr = arr[..., :3].copy()
        return arr
    if isinstance(label, torch.Tensor):
        return label.detach().cpu().permute(1, 2, 0).numpy().copy()
    return np.asarray(label)


def color_label_like(rgb: np.ndarray, like):
    """``HxWx3`` uint8 -> the type of the colour label ``like`` (PIL 'RGB', numpy ``HxWx3``, tensor
    ``3xHxW`` on ``like``'s device)."""
    if isinstance(like, Image.Image):
        out = Image.fromarray(rgb, mode="RGB")
        return out.convert("RGBA") if like.mode == "RGBA" else out  # opaque, as it came
    if isinstance(like, torch.Tensor):
        out = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous().to(like.device)
        return type(like)(out) if type(like) is not torch.Tensor else out
    return rgb


def flattened_hint(values, colors: ColorTable | None = None) -> str:
    """A hint for a label whose out-of-range ``values`` (at least two distinct) are all gray levels of
    one table's colours: a colour label flattened with ``convert("L")``. ``""`` when they are not."""
    values = set(int(v) for v in values)
    if len(values) < 2:
        return ""
    for table in ([colors] if colors is not None else []) + list(BUILTIN.values()):
        if values <= table.gray_levels():
            how = f"colors={table.name!r}" if table.name in BUILTIN else "colors=<its colour table>"
            return (
                f"; this looks like a colour label converted to grayscale (the values are gray levels of the "
                f"{table.name} colours): pass the label unconverted (a palette PNG as it is, an RGB label with {how})"
            )
    return ""
