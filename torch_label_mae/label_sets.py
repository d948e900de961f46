"""Label sets: the class lists and label conventions of public datasets, for the class-agnostic presets.

A class-agnostic model (``any-m0.5``) takes labels of any class list. A :class:`LabelSet` says what a
dataset's labels mean around it: the class names (ids ``0..num_classes-1``), the colour table of its
RGB labels, its own ignore label (``void_index``: kept as it is, never filled) and the value that marks
the holes to fill (``missing_index``). The registered presets ``voc-m0.5``, ``cityscapes-m0.5`` and
``ade20k-m0.5`` (:mod:`torch_label_mae.hub`) are ``any-m0.5``'s weights with one of :data:`LABEL_SETS`:
ids outside the set are refused, and the missing and void indices default to the set's
(:func:`resolve_indices`). A label set changes no weight: the model completes from the ids a label
shows, whatever their names.

Built-ins: ``voc`` (Pascal VOC's 21 classes; 255 = the object borders), ``cityscapes`` (the 19 train
ids; 255 = every other class) and ``ade20k`` (the 150 classes of the ADE20K SceneParsing benchmark,
ids reduced by one: the original 0 "other" becomes 255). Each marks holes with 254.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

DEFAULT_MISSING_INDEX = 255  # the holes' value when neither the caller nor a label set says otherwise


@dataclass(frozen=True)
class LabelSet:
    """A dataset's classes and label conventions.

    ``class_names[i]`` is the name of class id ``i``; ``colors``: the name of a built-in colour table of
    :mod:`torch_label_mae.colors` for its RGB labels (None: none); ``void_index``: its own ignore label
    (None: none); ``missing_index``: the value that marks holes. Both are 0..255, outside the class ids,
    and differ."""

    name: str
    class_names: tuple[str, ...]
    colors: str | None = None
    void_index: int | None = 255
    missing_index: int = 254

    def __post_init__(self) -> None:
        from .colors import BUILTIN  # a name: a label set is saved as JSON, and never names a file to read

        if self.colors is not None and (not isinstance(self.colors, str) or self.colors not in BUILTIN):
            raise ValueError(f"label set {self.name!r}: colors must be a built-in table {sorted(BUILTIN)} or None")
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if not self.class_names or not all(isinstance(c, str) and c for c in self.class_names):
            raise ValueError(f"label set {self.name!r}: class_names must be a non-empty list of names")
        most = 255 if self.void_index is None else 254  # the missing index (and void) are ids above the classes
        if self.num_classes > most:
            raise ValueError(
                f"label set {self.name!r}: {self.num_classes} classes; a label set has at most {most} (its missing "
                f"index{'' if self.void_index is None else ' and void index'} must be ids above them, at most 255)"
            )
        for what, v in (("void_index", self.void_index), ("missing_index", self.missing_index)):
            if v is None and what == "void_index":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or not self.num_classes <= v <= 255:
                raise ValueError(
                    f"label set {self.name!r}: {what} must be an integer in {self.num_classes}..255 (not a class id), "
                    f"got {v!r}"
                )
        if self.void_index == self.missing_index:
            raise ValueError(f"label set {self.name!r}: void_index and missing_index are both {self.void_index}")

    @property
    def num_classes(self) -> int:
        """How many classes the set has (ids ``0..num_classes-1``)."""
        return len(self.class_names)

    def to_dict(self) -> dict:
        """The set as JSON-ready values (``label_set.json`` beside a saved model)."""
        return asdict(self) | {"class_names": list(self.class_names)}

    @classmethod
    def from_dict(cls, d) -> LabelSet:
        """The inverse of :meth:`to_dict`, checked: a JSON object of the set's keys (``name`` and
        ``class_names`` required) with values as :class:`LabelSet` takes them; ``ValueError`` otherwise."""
        keys = {f.name for f in fields(cls)}
        if not isinstance(d, dict) or not {"name", "class_names"} <= set(d) <= keys:
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise ValueError(
                f"a label set is a JSON object of the keys {sorted(keys)} (name, class_names required), got {got}"
            )
        if not isinstance(d["name"], str):
            raise ValueError(f"label set: name must be a string, got {d['name']!r}")
        if not isinstance(d["class_names"], list):
            raise ValueError(f"label set {d['name']!r}: class_names must be a list of names")
        return cls(**d)


def load_label_set(spec) -> LabelSet | None:
    """None, a :class:`LabelSet` or the name of a built-in (:data:`LABEL_SETS`) -> a LabelSet or None."""
    if spec is None or isinstance(spec, LabelSet):
        return spec
    if isinstance(spec, str):
        if spec.lower() in LABEL_SETS:
            return LABEL_SETS[spec.lower()]
        raise ValueError(f"unknown label set {spec!r}; built-in: {sorted(LABEL_SETS)}, or pass a LabelSet")
    raise TypeError(f"label_set must be a LabelSet, a built-in name or None, got {type(spec).__name__}")


def resolve_indices(
    label_set: LabelSet | None, missing_index: int | None, void_index: int | None
) -> tuple[int, int | None]:
    """The ``(missing_index, void_index)`` a completion uses: the ones given, else the label set's, else
    :data:`DEFAULT_MISSING_INDEX` and no void. The set's void index is not used when the caller marks
    holes with that very value (``missing_index=255`` on VOC labels: the borders are filled, as asked)."""
    if label_set is None:
        return (DEFAULT_MISSING_INDEX if missing_index is None else missing_index), void_index
    if void_index is None and label_set.void_index != missing_index:
        void_index = label_set.void_index
    return (label_set.missing_index if missing_index is None else missing_index), void_index


VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

# the 19 train ids of Cityscapes (cityscapesScripts' labels.py, trainId 0..18)
CITYSCAPES_CLASSES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)

# ADEChallengeData2016's objectInfo150 order (the first name of each entry), ids 0..149 after
# reduce_zero_label; the names used by mmsegmentation's ADE20KDataset
ADE20K_CLASSES = (
    *("wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass"),
    *("cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair"),
    *("car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field"),
    *("armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion"),
    *("base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper"),
    *("fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow"),
    *("screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower"),
    *("book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair"),
    *("boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier"),
    *("awning", "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole"),
    *("land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship"),
    *("fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel"),
    *("basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank"),
    *("trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket"),
    *("sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen"),
    *("plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag"),
)

LABEL_SETS: dict[str, LabelSet] = {
    s.name: s
    for s in (
        LabelSet("voc", VOC_CLASSES, colors="voc", void_index=255, missing_index=254),
        LabelSet("cityscapes", CITYSCAPES_CLASSES, colors="cityscapes", void_index=255, missing_index=254),
        LabelSet("ade20k", ADE20K_CLASSES, colors=None, void_index=255, missing_index=254),
    )
}
