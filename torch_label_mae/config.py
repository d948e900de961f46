"""LMAEConfig: everything needed to build an :class:`~torch_label_mae.model.LMAE`, validated; the one
place where the model's options, their defaults and their limits are defined.

``config.json`` (version 2) holds the paper's fields, a ``prior`` section and ``version``::

    {"version": 2, "img_size": 224, ..., "mask_ratio": 0.5, "class_names": [...],
     "prior": null | {"kind": "nearest", "scale": null}
            | {"kind": "random_walk", "scale": null, "beta": 2000.0, "sweeps": 40, "solver": "sor",
               "connectivity": 4, "color": "rgb"}}

Version 1 configs (no ``version``; the prior as flat keys ``label_prior``, ``prior_kind``, ``prior_scale``,
``prior_beta``, ...) load with their meaning kept; the same flat keys are accepted as overrides on top of
a version 2 config (``train --set label_prior=true prior_kind=random_walk``). Options removed since
version 1 (:data:`REMOVED`) are accepted at their old default only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import ClassVar

from .combiner import FEATURE_COUNTS
from .propagation import COLORS, CONNECTIVITIES, DEFAULT_BETA, DEFAULT_SWEEPS, SOLVERS

CONFIG_VERSION = 2

# Limits of every size in an LMAEConfig: far above the paper's largest model (ViT-L-like, about 250M
# parameters: dim 1024, depth 24, decoder 512 x 8, 16 px patches at 224 px), low enough that a corrupt or
# hostile config.json is refused before anything is allocated.
MAX_DEPTH = 64  # encoder_depth, decoder_depth
MAX_DIM = 8192  # encoder_dim, decoder_dim
MAX_HEADS = 256  # encoder_heads, decoder_heads
MAX_MLP_RATIO = 16.0  # mlp_ratio, in (0, 16]
MAX_NUM_CLASSES = 4096  # num_classes (ADE20K-full has 3688)
MAX_PATCH_SIZE = 64  # patch_size
MAX_IMG_SIZE = 8192  # each side of img_size
MAX_NUM_PATCHES = 65536  # (H / p) * (W / p), e.g. a 256 x 256 grid
MAX_PRIOR_SWEEPS = 100_000  # prior.sweeps
MAX_PRIOR_BETA = 1e6  # prior.beta, in (0, 1e6]
MAX_PRIOR_SCALE = 1e4  # prior.scale, None or in (0, 1e4]
MAX_COMBINER_WIDTH = 1024  # prior.combiner: the prior combiner's hidden width, 0 (none) to 1024
MAX_INDEX = 2**31 - 1  # ignore_index in [-2^31, 2^31 - 1] (an int32 label value)
MAX_CLASS_NAME_LENGTH = 256  # characters of each class name
MAX_ELEMENTS = 2_000_000_000  # parameters + buffers of the whole model (8 GB in float32)
MAX_POSITIONS = 1 << 26  # num_patches * (encoder_dim + decoder_dim): the sin-cos positions (256 MB in float32)
MAX_CONFIG_BYTES = 1 << 20  # size of a config.json file

SIZE_LIMITS: dict[str, tuple[int, int]] = {
    "patch_size": (1, MAX_PATCH_SIZE),
    "num_classes": (1, MAX_NUM_CLASSES),
    "encoder_depth": (1, MAX_DEPTH),
    "encoder_dim": (1, MAX_DIM),
    "encoder_heads": (1, MAX_HEADS),
    "decoder_depth": (0, MAX_DEPTH),
    "decoder_dim": (1, MAX_DIM),
    "decoder_heads": (1, MAX_HEADS),
    "ignore_index": (-MAX_INDEX - 1, MAX_INDEX),
    "prior.sweeps": (0, MAX_PRIOR_SWEEPS),
    "prior.combiner": (0, MAX_COMBINER_WIDTH),
}
"""Inclusive ``[low, high]`` of every int field (``img_size``: :data:`MAX_IMG_SIZE`); ``prior.*``: of the
prior section."""
FLOAT_LIMITS: dict[str, tuple[str, float, float, str]] = {
    "mlp_ratio": ("(", 0.0, MAX_MLP_RATIO, "]"),
    "drop_path": ("[", 0.0, 1.0, ")"),
    "mask_ratio": ("(", 0.0, 1.0, ")"),
    "prior.beta": ("(", 0.0, MAX_PRIOR_BETA, "]"),
    "prior.scale": ("(", 0.0, MAX_PRIOR_SCALE, "]"),  # or None (the default scale)
    "audit_threshold": ("[", 0.0, 1.0, ")"),  # or None (the audit's global default)
}
"""Interval of every float field (``"("``: open end); each must also be finite."""
NULLABLE_FLOATS = frozenset({"audit_threshold"})  # fields of LMAEConfig that may also be None

# options of version 1 removed because no shipped model used them (docs/training.md has what they
# measured), with their old defaults: a config that holds one at its default loads as before
REMOVED = {"prior_stride": 1, "prior_affinity_dim": 0, "refine_dim": 0, "refine_kind": "local"}
# version 1's flat prior keys -> the prior section's keys
FLAT_PRIOR_KEYS = {
    "prior_kind": "kind",
    "prior_scale": "scale",
    "prior_beta": "beta",
    "prior_sweeps": "sweeps",
    "prior_solver": "solver",
    "prior_connectivity": "connectivity",
    "prior_color": "color",
}


def _fail(owner: str, name: str, value, why: str):
    shown = repr(value)
    shown = shown if len(shown) <= 80 else f"{shown[:60]}... ({len(shown)} characters)"  # a huge value, cut
    raise ValueError(f"{owner}.{name}={shown}: {why}")


def _check_int(owner: str, name: str, value, limits: tuple[int, int]) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        _fail(owner, name, value, "must be an int")
    lo, hi = limits
    if not lo <= value <= hi:
        _fail(owner, name, value, f"must be in [{lo}, {hi}]")


def _check_float(owner: str, name: str, value, limits, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    either = " or None" if allow_none else ""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        _fail(owner, name, value, "must be a finite number" + either)
    left, lo, hi, right = limits
    above = lo < value if left == "(" else lo <= value
    below = value < hi if right == ")" else value <= hi
    if not (above and below):
        _fail(owner, name, value, f"must be in {left}{lo:g}, {hi:g}{right}{either}")


def _check_choice(owner: str, name: str, value, choices) -> None:
    if not isinstance(value, type(choices[0])) or isinstance(value, bool) or value not in choices:
        _fail(owner, name, value, f"must be one of {choices}")


@dataclass(frozen=True)
class NearestPrior:
    """The nearest-label fill of the hidden pixels (:func:`torch_label_mae.propagation.nearest_fill`), a
    hard prior. ``scale``: its initial weight in the logits; None: ``log(9 (N - 1))`` (probability 0.9)."""

    kind: ClassVar[str] = "nearest"
    scale: float | None = None

    def __post_init__(self):
        _check_float("LMAEConfig.prior", "scale", self.scale, FLOAT_LIMITS["prior.scale"], allow_none=True)

    def to_dict(self) -> dict:
        return {"kind": self.kind, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class RandomWalkPrior:
    """The random walker's class probabilities (:mod:`torch_label_mae.propagation`), a soft prior:
    ``beta`` (edge sensitivity, scikit-image's), ``sweeps`` (over-relaxation sweeps from the nearest fill,
    solver ``"sor"``) or ``solver="direct"`` (exact, sparse LDL^T), the graph's ``connectivity`` (4, 8, 16)
    and the ``color`` space of its edge weights (``"rgb"``, ``"lab"``). ``scale``: as :class:`NearestPrior`.
    ``combiner``: the hidden width of the learned prior combiner (:mod:`torch_label_mae.combiner`), which
    weighs the walk with each present class's colours, distances, rays and convex hull; 0: the walk alone.
    ``combiner_features``: how many of the combiner's features it reads (12: a combiner trained before the
    rays, the default of configs written then; 14: before the hulls; 16: all)."""

    kind: ClassVar[str] = "random_walk"
    scale: float | None = None
    beta: float = DEFAULT_BETA
    sweeps: int = DEFAULT_SWEEPS
    solver: str = "sor"
    connectivity: int = 4
    color: str = "rgb"
    combiner: int = 0
    combiner_features: int = FEATURE_COUNTS[0]

    def __post_init__(self):
        owner = "LMAEConfig.prior"
        _check_float(owner, "scale", self.scale, FLOAT_LIMITS["prior.scale"], allow_none=True)
        _check_float(owner, "beta", self.beta, FLOAT_LIMITS["prior.beta"])
        _check_int(owner, "sweeps", self.sweeps, SIZE_LIMITS["prior.sweeps"])
        _check_choice(owner, "solver", self.solver, SOLVERS)
        _check_choice(owner, "connectivity", self.connectivity, CONNECTIVITIES)
        _check_choice(owner, "color", self.color, COLORS)
        _check_int(owner, "combiner", self.combiner, SIZE_LIMITS["prior.combiner"])
        _check_choice(owner, "combiner_features", self.combiner_features, FEATURE_COUNTS)

    def to_dict(self) -> dict:
        d = {"kind": self.kind, **dataclasses.asdict(self)}
        if not self.combiner or self.combiner_features == FEATURE_COUNTS[0]:  # the section older releases read
            del d["combiner_features"]
        if not self.combiner:
            del d["combiner"]
        return d


PRIORS = {p.kind: p for p in (NearestPrior, RandomWalkPrior)}
PRIOR_KINDS = tuple(PRIORS)
PriorConfig = NearestPrior | RandomWalkPrior


def prior_from_dict(d) -> PriorConfig | None:
    """The prior section of a config: None, or ``{"kind": ..., <that kind's options>}``."""
    if d is None or isinstance(d, (NearestPrior, RandomWalkPrior)):
        return d
    if not isinstance(d, dict):
        _fail("LMAEConfig", "prior", d, "must be null or an object with a 'kind'")
    kind = d.get("kind")
    if not isinstance(kind, str) or kind not in PRIORS:
        _fail("LMAEConfig.prior", "kind", kind, f"must be one of {PRIOR_KINDS}")
    cls = PRIORS[kind]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known - {"kind"})
    if unknown:
        raise ValueError(f"unknown keys {unknown} in the {kind!r} prior section; known: {sorted(known)}")
    return cls(**{k: v for k, v in d.items() if k != "kind"})


def _merge_flat_prior(d: dict) -> dict:
    """``d`` with version 1's flat prior keys (``label_prior``, ``prior_*``) folded into its ``prior``
    section (flat keys win). Every flat option is checked, as version 1 did, even where it has no effect
    (a nearest prior ignores the walk's options; ``label_prior=false`` drops the section)."""
    flat = {k: d.pop(k) for k in list(d) if k in FLAT_PRIOR_KEYS}
    on = d.pop("label_prior", None)
    if not flat and on is None:
        return d
    if on is not None and not isinstance(on, bool):
        _fail("LMAEConfig", "label_prior", on, "must be a bool")
    if "prior_kind" in flat:
        _check_choice("LMAEConfig.prior", "kind", flat["prior_kind"], PRIOR_KINDS)
    base = prior_from_dict(d.get("prior"))
    section = {
        **(base.to_dict() if base is not None else {"kind": "nearest"}),
        **{FLAT_PRIOR_KEYS[k]: v for k, v in flat.items()},
    }
    walk = {k: v for k, v in section.items() if k != "kind"}
    RandomWalkPrior(**{k: v for k, v in walk.items() if k in {f.name for f in dataclasses.fields(RandomWalkPrior)}})
    if section.get("kind") == "nearest":
        section = {"kind": "nearest", "scale": section.get("scale")}
    on = (base is not None) if on is None else on
    d["prior"] = prior_from_dict(section) if on else None
    return d


@dataclass
class LMAEConfig:
    """Everything needed to build an :class:`LMAE`; validated on construction.

    The defaults are the paper's choice (Table IV: EB 8, DB 6, ED 1440, DD 720, patch 16, 224 px,
    21 classes, no prior). ``prior`` is this library's addition: the hidden patches start from a label
    prior (:class:`NearestPrior` or :class:`RandomWalkPrior`) and the model learns its corrections.
    ``audit_threshold``: the audit's default score threshold for these weights, chosen on their training
    data (``docs/audit.md``); None: :data:`torch_label_mae.audit.DEFAULT_THRESHOLD`. Build from a dict
    (a ``config.json``, flat version 1 keys included) with :meth:`from_dict`.
    """

    version: int = CONFIG_VERSION
    img_size: int | tuple[int, int] = 224
    patch_size: int = 16
    num_classes: int = 21
    encoder_depth: int = 8
    encoder_dim: int = 1440
    encoder_heads: int = 16
    decoder_depth: int = 6
    decoder_dim: int = 720
    decoder_heads: int = 16
    mlp_ratio: float = 4.0
    ips: bool = True
    drop_path: float = 0.0
    ignore_index: int = 255
    background_index: int | None = None
    mask_ratio: float = 0.5
    class_names: list[str] | None = field(default=None)
    prior: PriorConfig | None = None
    class_agnostic: bool = False
    audit_threshold: float | None = None

    def __post_init__(self):
        if isinstance(self.img_size, list):
            self.img_size = tuple(self.img_size)
        self.validate()

    def __setattr__(self, name: str, value) -> None:
        """Fields only: ``config.prior_connectivity = 8`` (a key of version 1) would set an attribute that
        nothing reads."""
        if name not in self.__dataclass_fields__:
            key = FLAT_PRIOR_KEYS.get(name)
            hint = (
                f"; the prior's options are its own: config.prior = dataclasses.replace(config.prior, {key}=...)"
                if key
                else ""
            )
            raise AttributeError(f"LMAEConfig has no field {name!r}{hint}")
        object.__setattr__(self, name, value)

    # -- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``ValueError`` naming the field at fault and its allowed range.

        Every size is bounded (the ``MAX_*`` constants of this module) and every float must be finite,
        so a config that passes cannot ask for an absurd allocation: the model it describes has at most
        :data:`MAX_ELEMENTS` parameters and buffers (checked by :meth:`num_elements`). The prior section
        validates itself on construction."""
        if self.version != CONFIG_VERSION:
            self._bad("version", f"must be {CONFIG_VERSION} (older versions are read by from_dict)")
        self._validate_fields()
        self._validate_geometry()
        if self.prior is not None and not isinstance(self.prior, (NearestPrior, RandomWalkPrior)):
            self._bad("prior", "must be None, a NearestPrior or a RandomWalkPrior")
        n = self.num_elements()
        if n > MAX_ELEMENTS:
            raise ValueError(
                f"LMAEConfig describes a model of {n:,} parameters and buffers, more than the limit of "
                f"{MAX_ELEMENTS:,} (MAX_ELEMENTS); reduce the dims, depths, classes, patch or image size"
            )

    def _bad(self, name: str, why: str):
        _fail("LMAEConfig", name, getattr(self, name), why)

    def _validate_fields(self) -> None:
        for name, limits in SIZE_LIMITS.items():
            if "." not in name:
                _check_int("LMAEConfig", name, getattr(self, name), limits)
        for name, limits in FLOAT_LIMITS.items():
            if "." not in name:
                _check_float("LMAEConfig", name, getattr(self, name), limits, allow_none=name in NULLABLE_FLOATS)
        for flag in ("ips", "class_agnostic"):
            if not isinstance(getattr(self, flag), bool):
                self._bad(flag, "must be a bool")
        if self.class_agnostic and (self.class_names is not None or self.background_index is not None):
            self._bad(
                "class_agnostic",
                "a class-agnostic model has slots, not classes: class_names and background_index must be None",
            )
        s = self.img_size
        if isinstance(s, bool) or not (
            isinstance(s, int)
            or (isinstance(s, tuple) and len(s) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in s))
        ):
            self._bad("img_size", "must be an int or a pair of ints [H, W]")
        bg = self.background_index
        if bg is not None and (not isinstance(bg, int) or isinstance(bg, bool) or not 0 <= bg < self.num_classes):
            self._bad("background_index", f"must be None or a class id in [0, {self.num_classes})")
        if 0 <= self.ignore_index < self.num_classes:
            self._bad("ignore_index", f"must not be a class id in [0, {self.num_classes})")
        if self.class_names is not None and (
            not isinstance(self.class_names, list)
            or len(self.class_names) != self.num_classes
            or not all(isinstance(c, str) and len(c) <= MAX_CLASS_NAME_LENGTH for c in self.class_names)
        ):
            limit = MAX_CLASS_NAME_LENGTH
            self._bad("class_names", f"must be a list of {self.num_classes} strings of <= {limit} characters")

    def _validate_geometry(self) -> None:
        h, w = self.size
        if not (1 <= h <= MAX_IMG_SIZE and 1 <= w <= MAX_IMG_SIZE):
            self._bad("img_size", f"each side must be in [1, {MAX_IMG_SIZE}]")
        if h % self.patch_size or w % self.patch_size:
            self._bad("img_size", f"must be positive multiples of patch_size {self.patch_size}")
        if self.num_patches > MAX_NUM_PATCHES:
            self._bad("img_size", f"gives {self.num_patches} patches; at most {MAX_NUM_PATCHES} (MAX_NUM_PATCHES)")
        positions = self.num_patches * (self.encoder_dim + self.decoder_dim)
        if positions > MAX_POSITIONS:  # built at load, not read from the weights file, so no file bounds them
            self._bad(
                "img_size",
                f"gives {self.num_patches} patches, whose sin-cos positions at encoder_dim + decoder_dim = "
                f"{self.encoder_dim + self.decoder_dim} are {positions:,} values; at most {MAX_POSITIONS:,} "
                "(MAX_POSITIONS): a larger patch_size or smaller dims",
            )
        for d, hd in (("encoder_dim", "encoder_heads"), ("decoder_dim", "decoder_heads")):
            if getattr(self, d) % getattr(self, hd):
                self._bad(d, f"must be divisible by {hd}={getattr(self, hd)}")
            if getattr(self, d) % 4:
                self._bad(d, "must be a multiple of 4 (2-D sin-cos positions)")

    def num_elements(self) -> int:
        """Parameters plus buffers of the :class:`LMAE` this config describes (exact; no allocation)."""
        p, n, de, dd = self.patch_size, self.num_classes, self.encoder_dim, self.decoder_dim
        pp, length = p * p, self.num_patches

        def linear(a: int, b: int) -> int:
            return a * b + b

        def block(d: int) -> int:
            hidden = int(d * self.mlp_ratio)
            return 4 * d + linear(d, 3 * d) + linear(d, d) + linear(d, hidden) + linear(hidden, d)

        total = (n * pp + 1) * de + linear(3 * pp, de) + self.encoder_depth * block(de) + 2 * de
        total += linear(de, dd) + (linear(3 * pp, dd) if self.ips else dd)
        total += ((n * pp + 1) * dd + 1) if self.prior is not None else 0
        width, feats = getattr(self.prior, "combiner", 0), getattr(self.prior, "combiner_features", 0)
        total += (linear(feats, width) + linear(width, width) + linear(width, 1)) if width else 0
        total += self.decoder_depth * block(dd) + 2 * dd + linear(dd, pp * n) + length * (de + dd)
        return total

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` the model works at."""
        s = self.img_size
        return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid ``(H / p, W / p)``."""
        h, w = self.size
        return h // self.patch_size, w // self.patch_size

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid
        return gh * gw

    # -- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The version 2 ``config.json`` object, every option written out (``audit_threshold`` only when set)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["img_size"] = list(self.size) if not isinstance(self.img_size, int) else self.img_size
        d["class_names"] = list(self.class_names) if self.class_names is not None else None
        d["prior"] = self.prior.to_dict() if self.prior is not None else None
        if self.audit_threshold is None:  # the object older releases read
            del d["audit_threshold"]
        return d

    @classmethod
    def keys(cls) -> set[str]:
        """Every key :meth:`from_dict` accepts: the fields, version 1's flat prior keys and removed options."""
        return {f.name for f in dataclasses.fields(cls)} | set(FLAT_PRIOR_KEYS) | {"label_prior"} | set(REMOVED)

    @classmethod
    def from_dict(cls, d: dict) -> LMAEConfig:
        """Build from a dict (e.g. a downloaded config.json) of any version; unknown keys are an error, and
        so is a removed option at any value but its old default (the message names it)."""
        if not isinstance(d, dict):
            raise ValueError(f"config must be a JSON object, got {type(d).__name__}")
        d = dict(d)
        version = d.pop("version", 1)
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= CONFIG_VERSION:
            raise ValueError(f"config version {version!r} is not one this torch-label-mae reads (1..{CONFIG_VERSION})")
        for k, old in REMOVED.items():
            if k in d and d.pop(k) != old:
                raise ValueError(
                    f"config option {k} was removed (no shipped model used it; see docs/training.md) and this "
                    f"config sets it to a value other than its old default {old!r}; delete {k!r} from the config"
                )
        d = _merge_flat_prior(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known: {sorted(cls.keys())}")
        d["prior"] = prior_from_dict(d.get("prior"))
        return cls(**d)

    @classmethod
    def from_json(cls, path) -> LMAEConfig:
        """Read and validate a ``config.json``. ``ValueError`` names the file and what is wrong: a file over
        :data:`MAX_CONFIG_BYTES`, text that is not UTF-8 JSON (or nested too deeply to parse), a value that
        is not an object, an unknown key or a field out of range."""
        size = os.stat(path).st_size
        if size > MAX_CONFIG_BYTES:
            raise ValueError(f"{path}: {size} bytes; a config is at most {MAX_CONFIG_BYTES} bytes (MAX_CONFIG_BYTES)")
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
        try:
            d = json.loads(raw.decode("utf-8"))
        except RecursionError:
            raise ValueError(f"{path}: not a config (JSON nested too deeply)") from None
        except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError, or an int of too many digits
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError, RecursionError) as e:
            raise ValueError(f"{path}: {e}") from None

    # -- named configurations ------------------------------------------------------------------
    @classmethod
    def paper(cls, **overrides) -> LMAEConfig:
        """The paper's configuration (Table IV); pass ``encoder_depth=12, decoder_depth=8,
        encoder_dim=1024, decoder_dim=512`` (etc.) for the other rows. ``overrides`` as :meth:`from_dict`."""
        return cls.from_dict(overrides)

    @classmethod
    def tiny(cls, **overrides) -> LMAEConfig:
        """CPU-sized: encoder 4 x 192, decoder 2 x 128, 16 px patches (about 3-5M parameters)."""
        base = dict(
            encoder_depth=4, encoder_dim=192, encoder_heads=3, decoder_depth=2, decoder_dim=128, decoder_heads=4
        )
        return cls.from_dict({**base, **overrides})

    @classmethod
    def small(cls, **overrides) -> LMAEConfig:
        """CPU-sized, larger: encoder 6 x 256, decoder 3 x 192."""
        base = dict(
            encoder_depth=6, encoder_dim=256, encoder_heads=4, decoder_depth=3, decoder_dim=192, decoder_heads=4
        )
        return cls.from_dict({**base, **overrides})


NAMED_CONFIGS = {"paper": LMAEConfig.paper, "tiny": LMAEConfig.tiny, "small": LMAEConfig.small}
