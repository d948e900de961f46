"""L-MAE: the label masked autoencoder (paper section III-C) and its validated config.

Data path of :meth:`LMAE.forward` (shapes for B samples, L patches of p x p, N classes)::

    label [B, H, W], image [B, 3, H, W], hidden [B, L]
      -> fuse-map patch embedding of the visible patches     [B, Lv, De]   (forward_encoder)
      -> encoder blocks (visible only, padded + masked)      [B, Lv, De]
      -> decoder embedding, scattered back to the grid;
         hidden positions get the Image Patch Supplement     [B, L, Dd]    (forward_decoder)
      -> decoder blocks -> per-pixel head                    [B, L, p*p*N]
      -> unpatchify (+ optional label prior, refinement)     [B, N, H, W]  logits
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .affinity import EMBED_DIM, EdgeAffinity
from .fusion import normalize_image
from .layers import Block, LabelPatchEmbed, sincos_pos_embed
from .prior import nearest_fill
from .propagation import COLORS, CONNECTIVITIES, SOLVERS, most_likely_class, random_walk_probabilities

PRIOR_KINDS = ("nearest", "random_walk")

# Limits of every size in an LMAEConfig: far above the paper's largest model (ViT-L-like, about 250M
# parameters: dim 1024, depth 24, decoder 512 x 8, 16 px patches at 224 px), low enough that a corrupt or
# hostile config.json is refused before anything is allocated.
MAX_DEPTH = 64  # encoder_depth, decoder_depth
MAX_DIM = 8192  # encoder_dim, decoder_dim
MAX_HEADS = 256  # encoder_heads, decoder_heads
MAX_MLP_RATIO = 16.0  # mlp_ratio, in (0, 16]
MAX_NUM_CLASSES = 4096  # num_classes (ADE20K-full has 3688)
MAX_PATCH_SIZE = 64  # patch_size, prior_stride
MAX_IMG_SIZE = 8192  # each side of img_size
MAX_NUM_PATCHES = 65536  # (H / p) * (W / p), e.g. a 256 x 256 grid
MAX_REFINE_DIM = 1024  # refine_dim
MAX_AFFINITY_DIM = 1024  # prior_affinity_dim
MAX_PRIOR_SWEEPS = 100_000  # prior_sweeps
MAX_PRIOR_BETA = 1e6  # prior_beta, in (0, 1e6]
MAX_PRIOR_SCALE = 1e4  # prior_scale, None or in (0, 1e4]
MAX_INDEX = 2**31 - 1  # ignore_index in [-2^31, 2^31 - 1] (an int32 label value)
MAX_CLASS_NAME_LENGTH = 256  # characters of each class name
MAX_ELEMENTS = 2_000_000_000  # parameters + buffers of the whole model (8 GB in float32)
MAX_CONFIG_BYTES = 1 << 20  # size of a config.json file

_INT_FIELDS = (
    "patch_size",
    "prior_stride",
    "num_classes",
    "encoder_depth",
    "encoder_dim",
    "encoder_heads",
    "decoder_depth",
    "decoder_dim",
    "decoder_heads",
    "refine_dim",
    "prior_sweeps",
    "prior_connectivity",
    "prior_affinity_dim",
    "ignore_index",
)
SIZE_LIMITS: dict[str, tuple[int, int]] = {
    "patch_size": (1, MAX_PATCH_SIZE),
    "prior_stride": (1, MAX_PATCH_SIZE),
    "num_classes": (1, MAX_NUM_CLASSES),
    "encoder_depth": (1, MAX_DEPTH),
    "encoder_dim": (1, MAX_DIM),
    "encoder_heads": (1, MAX_HEADS),
    "decoder_depth": (0, MAX_DEPTH),
    "decoder_dim": (1, MAX_DIM),
    "decoder_heads": (1, MAX_HEADS),
    "refine_dim": (0, MAX_REFINE_DIM),
    "prior_sweeps": (0, MAX_PRIOR_SWEEPS),
    "prior_affinity_dim": (0, MAX_AFFINITY_DIM),
    "ignore_index": (-MAX_INDEX - 1, MAX_INDEX),
}
"""Inclusive ``[low, high]`` of every int field of :class:`LMAEConfig` (``img_size``: :data:`MAX_IMG_SIZE`)."""
FLOAT_LIMITS: dict[str, tuple[str, float, float, str]] = {
    "mlp_ratio": ("(", 0.0, MAX_MLP_RATIO, "]"),
    "drop_path": ("[", 0.0, 1.0, ")"),
    "mask_ratio": ("(", 0.0, 1.0, ")"),
    "prior_beta": ("(", 0.0, MAX_PRIOR_BETA, "]"),
    "prior_scale": ("(", 0.0, MAX_PRIOR_SCALE, "]"),  # or None (the default scale)
}
"""Interval of every float field of :class:`LMAEConfig` (``"("``: open end); each must also be finite."""


class LabelPrior(NamedTuple):
    """The label prior of a batch. ``classes [B, H, W]``: its class per pixel (``ignore_index`` where it
    has none); IPS embeds it. ``prob``: for a soft prior (``prior_kind="random_walk"``), the probabilities
    ``[B, K, H, W]`` of the classes ``index [B, K, 1, 1]``; they, scaled, are added to the logits. A hard
    prior (``prob=None``, nearest fill) adds the scale at ``classes`` instead."""

    classes: torch.Tensor
    prob: torch.Tensor | None = None
    index: torch.Tensor | None = None

    @classmethod
    def of(cls, prior: LabelPrior | torch.Tensor) -> LabelPrior:
        """``prior`` as a :class:`LabelPrior` (a class map ``[B, H, W]`` is a hard prior)."""
        return cls(prior) if isinstance(prior, torch.Tensor) else prior


@dataclass
class LMAEConfig:
    """Everything needed to build an :class:`LMAE`; validated on construction.

    The defaults are the paper's choice (Table IV: EB 8, DB 6, ED 1440, DD 720, patch 16, 224 px,
    21 classes). ``label_prior`` and ``refine_dim`` are this library's additions (off in the paper's
    configuration): the hidden patches start from the nearest-label fill, and a light convolutional
    refinement at full resolution aligns the logits with image edges.
    """

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
    label_prior: bool = False
    prior_stride: int = 1
    prior_scale: float | None = None  # initial weight of the prior in the logits; None: log(9 (N - 1))
    prior_kind: str = "nearest"  # nearest: nearest-label fill | random_walk: image-guided (propagation.py)
    prior_beta: float = 2000.0  # random_walk: edge sensitivity (scikit-image's beta)
    prior_sweeps: int = 40  # random_walk: relaxation sweeps from the nearest fill (solver "sor")
    prior_solver: str = "sor"  # random_walk: sor (prior_sweeps sweeps, truncated) | direct (exact, sparse LU)
    prior_connectivity: int = 4  # random_walk: 4 (scikit-image's graph) | 8 (+ diagonals) | 16 (+ knight's moves)
    prior_color: str = "rgb"  # random_walk: colour space of the edge weights, rgb (scikit-image's) | lab
    prior_affinity_dim: int = 0  # random_walk: width of learned edge weights (affinity.py, fitted with "sor"); 0: none
    refine_dim: int = 0
    refine_kind: str = "local"  # local: 3 dilated convs at full resolution | unet: 3 scales from 1/2 resolution
    ignore_index: int = 255
    background_index: int | None = None
    mask_ratio: float = 0.5
    class_names: list[str] | None = field(default=None)

    def __post_init__(self):
        if isinstance(self.img_size, list):
            self.img_size = tuple(self.img_size)
        self.validate()

    # -- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``ValueError`` naming the field at fault and its allowed range.

        Every size is bounded (see the ``MAX_*`` constants of this module) and every float must be
        finite, so a config that passes cannot ask for an absurd allocation: the model it describes
        has at most :data:`MAX_ELEMENTS` parameters and buffers (checked by :meth:`num_elements`)."""
        self._validate_types()
        self._validate_ranges()
        self._validate_choices()
        n = self.num_elements()
        if n > MAX_ELEMENTS:
            raise ValueError(
                f"LMAEConfig describes a model of {n:,} parameters and buffers, more than the limit of "
                f"{MAX_ELEMENTS:,} (MAX_ELEMENTS); reduce the dims, depths, classes, patch or image size"
            )

    def _bad(self, name: str, why: str):
        raise ValueError(f"LMAEConfig.{name}={getattr(self, name)!r}: {why}")

    def _validate_types(self) -> None:
        for name in _INT_FIELDS:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                self._bad(name, "must be an int")
        for name in ("ips", "label_prior"):
            if not isinstance(getattr(self, name), bool):
                self._bad(name, "must be a bool")
        for name in ("mlp_ratio", "drop_path", "mask_ratio", "prior_beta", "prior_scale"):
            v = getattr(self, name)
            if v is None and name == "prior_scale":
                continue
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                self._bad(name, "must be a finite number" + (" or None" if name == "prior_scale" else ""))
        s = self.img_size
        if isinstance(s, bool) or not (
            isinstance(s, int)
            or (isinstance(s, tuple) and len(s) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in s))
        ):
            self._bad("img_size", "must be an int or a pair of ints [H, W]")
        if self.background_index is not None and (
            not isinstance(self.background_index, int) or isinstance(self.background_index, bool)
        ):
            self._bad("background_index", "must be None or an int")
        for name in ("refine_kind", "prior_kind", "prior_solver", "prior_color"):
            if not isinstance(getattr(self, name), str):
                self._bad(name, "must be a string")

    def _validate_ranges(self) -> None:
        for name, (lo, hi) in SIZE_LIMITS.items():
            if not lo <= getattr(self, name) <= hi:
                self._bad(name, f"must be in [{lo}, {hi}]")
        for name, (left, lo, hi, right) in FLOAT_LIMITS.items():
            v = getattr(self, name)
            if v is None:  # prior_scale only (the types are checked)
                continue
            above = lo < v if left == "(" else lo <= v
            below = v < hi if right == ")" else v <= hi
            if not (above and below):
                either = " or None" if name == "prior_scale" else ""
                self._bad(name, f"must be in {left}{lo:g}, {hi:g}{right}{either}")
        h, w = self.size
        if not (1 <= h <= MAX_IMG_SIZE and 1 <= w <= MAX_IMG_SIZE):
            self._bad("img_size", f"each side must be in [1, {MAX_IMG_SIZE}]")
        if h % self.patch_size or w % self.patch_size:
            self._bad("img_size", f"must be positive multiples of patch_size {self.patch_size}")
        if self.num_patches > MAX_NUM_PATCHES:
            self._bad("img_size", f"gives {self.num_patches} patches; at most {MAX_NUM_PATCHES} (MAX_NUM_PATCHES)")
        if 0 <= self.ignore_index < self.num_classes:
            self._bad("ignore_index", f"must not be a class id in [0, {self.num_classes})")
        if self.background_index is not None and not 0 <= self.background_index < self.num_classes:
            self._bad("background_index", f"must be None or a class id in [0, {self.num_classes})")
        if self.class_names is not None and (
            not isinstance(self.class_names, list)
            or len(self.class_names) != self.num_classes
            or not all(isinstance(c, str) and len(c) <= MAX_CLASS_NAME_LENGTH for c in self.class_names)
        ):
            limit = MAX_CLASS_NAME_LENGTH
            self._bad("class_names", f"must be a list of {self.num_classes} strings of <= {limit} characters")

    def _validate_choices(self) -> None:
        if self.refine_kind not in ("local", "unet"):
            self._bad("refine_kind", "must be 'local' or 'unet'")
        if self.prior_kind not in PRIOR_KINDS:
            self._bad("prior_kind", f"must be one of {PRIOR_KINDS}")
        if self.prior_solver not in SOLVERS:
            self._bad("prior_solver", f"must be one of {SOLVERS}")
        if self.prior_connectivity not in CONNECTIVITIES:
            self._bad("prior_connectivity", f"must be one of {CONNECTIVITIES}")
        if self.prior_color not in COLORS:
            self._bad("prior_color", f"must be one of {COLORS}")
        if self.prior_affinity_dim and (self.prior_connectivity, self.prior_color) != (4, "rgb"):
            self._bad("prior_affinity_dim", "learned edge weights are for the 4-connected RGB graph")
        if self.prior_affinity_dim and self.prior_kind != "random_walk":
            self._bad("prior_affinity_dim", "needs prior_kind='random_walk' (learned edge weights of the walk)")
        if self.prior_kind == "random_walk" and self.prior_stride != 1:
            self._bad("prior_stride", "must be 1 with prior_kind='random_walk'")
        if self.patch_size % self.prior_stride:
            self._bad("prior_stride", f"must divide patch_size {self.patch_size}")
        for d, hd in (("encoder_dim", "encoder_heads"), ("decoder_dim", "decoder_heads")):
            if getattr(self, d) % getattr(self, hd):
                self._bad(d, f"must be divisible by {hd}={getattr(self, hd)}")
            if getattr(self, d) % 4:
                self._bad(d, "must be a multiple of 4 (2-D sin-cos positions)")

    def num_elements(self) -> int:
        """Parameters plus buffers of the :class:`LMAE` this config describes (exact; no allocation)."""
        p, n, de, dd, r = self.patch_size, self.num_classes, self.encoder_dim, self.decoder_dim, self.refine_dim
        pp, length = p * p, self.num_patches

        def linear(a: int, b: int) -> int:
            return a * b + b

        def block(d: int) -> int:
            hidden = int(d * self.mlp_ratio)
            return 4 * d + linear(d, 3 * d) + linear(d, d) + linear(d, hidden) + linear(hidden, d)

        def conv(a: int, b: int, k: int = 3) -> int:
            return a * b * k * k + b

        total = (n * pp + 1) * de + linear(3 * pp, de) + self.encoder_depth * block(de) + 2 * de
        total += linear(de, dd) + (linear(3 * pp, dd) if self.ips else dd)
        total += ((n * pp + 1) * dd + 1) if self.label_prior else 0
        total += self.decoder_depth * block(dd) + 2 * dd + linear(dd, pp * n) + length * (de + dd)
        if r and self.refine_kind == "unet":
            c = r
            total += conv(3 + n, c) + conv(c, c) + conv(c, 2 * c) + conv(2 * c, 2 * c) + conv(2 * c, 4 * c)
            total += 2 * conv(4 * c, 4 * c) + conv(6 * c, 2 * c) + conv(3 * c, c) + conv(c, n, 1)
        elif r:
            total += conv(3 + n, r) + 2 * conv(r, r) + conv(r, n, 1)
        a = self.prior_affinity_dim
        if a:
            total += conv(3, a) + conv(a, a) + conv(a, 1, 1) + conv(a, EMBED_DIM, 1)
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
        d = dataclasses.asdict(self)
        d["img_size"] = list(self.size) if not isinstance(self.img_size, int) else self.img_size
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LMAEConfig:
        """Build from a dict (e.g. a downloaded config.json); unknown keys are an error."""
        if not isinstance(d, dict):
            raise ValueError(f"config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known: {sorted(known)}")
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
        encoder_dim=1024, decoder_dim=512`` (etc.) for the other rows."""
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides) -> LMAEConfig:
        """CPU-sized: encoder 4 x 192, decoder 2 x 128, 16 px patches (about 3-5M parameters)."""
        base = dict(
            encoder_depth=4, encoder_dim=192, encoder_heads=3, decoder_depth=2, decoder_dim=128, decoder_heads=4
        )
        return cls(**{**base, **overrides})

    @classmethod
    def small(cls, **overrides) -> LMAEConfig:
        """CPU-sized, larger: encoder 6 x 256, decoder 3 x 192."""
        base = dict(
            encoder_depth=6, encoder_dim=256, encoder_heads=4, decoder_depth=3, decoder_dim=192, decoder_heads=4
        )
        return cls(**{**base, **overrides})


NAMED_CONFIGS = {"paper": LMAEConfig.paper, "tiny": LMAEConfig.tiny, "small": LMAEConfig.small}


class Refiner(nn.Module):
    """Light image-guided refinement at full resolution: a residual on the logits from three 3x3
    convolutions (dilations 1, 2, 4) over ``[image, logits]``. Zero-initialised output, so it starts
    as the identity."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.inp = nn.Conv2d(3 + num_classes, dim, 3, padding=1)
        self.mid = nn.ModuleList([nn.Conv2d(dim, dim, 3, padding=d, dilation=d) for d in (2, 4)])
        self.out = nn.Conv2d(dim, num_classes, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, image: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        x = torch.cat([image, logits], 1).contiguous(memory_format=torch.channels_last)  # faster convs
        x = F.gelu(self.inp(x))  # x: [B, C, H, W]
        for conv in self.mid:
            x = F.gelu(conv(x))
        return logits + self.out(x)


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation), nn.GELU())


class UNetRefiner(nn.Module):
    """Image-guided refinement over three scales (1/2, 1/4, 1/8 resolution; receptive field about
    180 px): a residual on the logits from ``[image, logits]``, upsampled back to full resolution.
    Zero-initialised output, so it starts as the identity."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        c = dim
        self.stem = nn.Sequential(_conv(3 + num_classes, c, stride=2), _conv(c, c))
        self.down1 = nn.Sequential(_conv(c, 2 * c, stride=2), _conv(2 * c, 2 * c))
        self.down2 = nn.Sequential(
            _conv(2 * c, 4 * c, stride=2), _conv(4 * c, 4 * c, dilation=2), _conv(4 * c, 4 * c, dilation=4)
        )
        self.up1 = _conv(6 * c, 2 * c)
        self.up2 = _conv(3 * c, c)
        self.out = nn.Conv2d(c, num_classes, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, image: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        x0 = self.stem(torch.cat([image, logits], 1).contiguous(memory_format=torch.channels_last))  # [B,C,H/2,W/2]
        x1 = self.down1(x0)  # [B, 2C, H/4, W/4]
        x2 = self.down2(x1)  # [B, 4C, H/8, W/8]
        up = F.interpolate(x2, size=x1.shape[-2:], mode="bilinear", align_corners=False)
        y1 = self.up1(torch.cat([up, x1], 1))
        up = F.interpolate(y1, size=x0.shape[-2:], mode="bilinear", align_corners=False)
        y0 = self.up2(torch.cat([up, x0], 1))  # [B, C, H/2, W/2]
        y0 = F.interpolate(y0, size=logits.shape[-2:], mode="bilinear", align_corners=False)  # C < N: cheaper
        return logits + self.out(y0)


class _SkipInPlace(torch.overrides.TorchFunctionMode):
    """Skips in-place tensor ops (the initialisers ``normal_``, ``uniform_``, ``zero_`` ...): on the meta
    device they do nothing but cost seconds on first use (they load decompositions)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.startswith("__"):
            return args[0] if args else kwargs.get("tensor")  # torch.nn.init passes its tensor by keyword
        return func(*args, **kwargs)


class LMAE(nn.Module):
    """Label masked autoencoder.

    ``LMAE(cfg)(image [B,3,H,W] float, label [B,H,W] int64, hidden [B,L] bool) -> logits [B,N,H,W]``.
    Unknown pixels of ``label`` must be ``ignore_index``: the encoder sees only the visible patches,
    and the label prior (when on) is filled from every labelled pixel.
    Samples may hide different numbers of patches: visible tokens are padded to the batch's maximum
    and padding is masked out of attention, which gives the same result as running them one by one.
    """

    def __init__(self, config: LMAEConfig):
        super().__init__()
        if not isinstance(config, LMAEConfig):
            raise TypeError(f"expected an LMAEConfig, got {type(config).__name__}")
        config.validate()
        self.config = c = config
        p, n, de, dd = c.patch_size, c.num_classes, c.encoder_dim, c.decoder_dim
        # fuse-map patch embedding = label part (lookup-and-sum) + image part (linear)
        self.label_embed = LabelPatchEmbed(n, p, de, c.ignore_index)
        self.image_embed = nn.Linear(3 * p * p, de)
        meta = torch.empty(0).device.type == "meta"  # under torch.device("meta"): shapes only (state_shapes)
        pos = torch.empty(c.num_patches, de) if meta else sincos_pos_embed(de, c.grid)
        self.register_buffer("pos_embed", pos, persistent=False)
        dpr = [c.drop_path * i / max(c.encoder_depth - 1, 1) for i in range(c.encoder_depth)]
        self.blocks = nn.ModuleList([Block(de, c.encoder_heads, c.mlp_ratio, r) for r in dpr])
        self.norm = nn.LayerNorm(de, eps=1e-6)
        self.decoder_embed = nn.Linear(de, dd)
        if c.ips:  # Image Patch Supplement: decoder-width embedding of the image patch
            self.ips_embed = nn.Linear(3 * p * p, dd)
        else:  # MAE's learned mask token (ablation)
            self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
            nn.init.normal_(self.mask_token, std=0.02)
        if c.label_prior:
            self.prior_embed = LabelPatchEmbed(n, p, dd, c.ignore_index)
            # default: start where the prior class gets probability 0.9; the head then learns corrections
            scale = c.prior_scale if c.prior_scale is not None else math.log(9.0 * max(n - 1, 1))
            self.prior_scale = nn.Parameter(torch.tensor(float(scale)))
        self.affinity = EdgeAffinity(c.prior_beta, c.prior_affinity_dim) if c.prior_affinity_dim else None
        pos = torch.empty(c.num_patches, dd) if meta else sincos_pos_embed(dd, c.grid)
        self.register_buffer("decoder_pos_embed", pos, persistent=False)
        self.decoder_blocks = nn.ModuleList([Block(dd, c.decoder_heads, c.mlp_ratio) for _ in range(c.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(dd, eps=1e-6)
        self.head = nn.Linear(dd, p * p * n)
        refiner = UNetRefiner if c.refine_kind == "unet" else Refiner
        self.refiner = refiner(n, c.refine_dim) if c.refine_dim else None
        self.apply(self._init_weights)
        if self.refiner is not None:
            nn.init.zeros_(self.refiner.out.weight)
            nn.init.zeros_(self.refiner.out.bias)
            self.refiner.to(memory_format=torch.channels_last)  # conv weights in the layout the input uses
        if c.label_prior:  # start exactly at the prior; learning moves away from it where it helps
            nn.init.zeros_(self.head.weight)

    @staticmethod
    def state_shapes(config: LMAEConfig) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every entry of the ``state_dict`` of ``LMAE(config)``, from a copy built on the
        meta device: nothing is allocated (for checking a weights file before the model is built)."""
        with torch.device("meta"), _SkipInPlace():
            model = LMAE(config)
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.EmbeddingBag):
            nn.init.normal_(m.weight, std=0.02)
            with torch.no_grad():
                m.weight[m.padding_idx].zero_()

    # -- patches ---------------------------------------------------------------------------------
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, L, C * p * p]`` (channel-major within a patch)."""
        p = self.config.patch_size
        b, ch, h, w = x.shape
        x = x.reshape(b, ch, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)  # [B, gh, gw, C, p, p]
        return x.reshape(b, (h // p) * (w // p), ch * p * p)

    def unpatchify(self, x: torch.Tensor, channels: int | None = None) -> torch.Tensor:
        """``[B, L, p * p * C]`` -> ``[B, C, H, W]`` in channels-last memory (``C`` = ``channels``,
        default the number of classes; innermost in the input).

        Keeping the head's class-innermost order makes the copy move runs of ``p * C`` values instead
        of single ones, and the per-pixel softmax / argmax that follow read contiguous memory."""
        p, n = self.config.patch_size, channels or self.config.num_classes
        (gh, gw), b = self.config.grid, x.shape[0]
        x = x.reshape(b, gh, gw, p, p, n).transpose(2, 3)  # [B, gh, p, gw, p, N]
        return x.reshape(b, gh * p, gw * p, n).permute(0, 3, 1, 2)  # [B, N, H, W], channels-last strides

    # -- encoder / decoder -----------------------------------------------------------------------
    @staticmethod
    def visible_index(hidden: torch.Tensor):
        """Indices of visible patches, visible first in grid order, padded to the batch maximum.

        Returns ``ids [B, Lv]`` and ``valid [B, Lv]`` (False on padding)."""
        n_vis = (~hidden).sum(1)  # [B]
        lv = int(n_vis.max()) if hidden.numel() else 0
        ids = torch.argsort(hidden.to(torch.uint8), dim=1, stable=True)[:, :lv]  # [B, Lv]
        valid = torch.arange(lv, device=hidden.device).unsqueeze(0) < n_vis.unsqueeze(1)
        return ids, valid

    def forward_encoder(self, image_patches, label, hidden):
        """Embed the visible fuse-map patches and run the encoder -> ``(latent [B,Lv,De], ids, valid)``."""
        ids, valid = self.visible_index(hidden)
        p2 = self.config.patch_size**2
        lab = self.patchify(label.unsqueeze(1))  # [B, L, p*p]
        lab = lab.gather(1, ids.unsqueeze(-1).expand(-1, -1, p2))  # [B, Lv, p*p]
        img = image_patches.gather(1, ids.unsqueeze(-1).expand(-1, -1, image_patches.shape[-1]))
        x = self.label_embed(lab) + self.image_embed(img) + self.pos_embed[ids]  # x: [B, Lv, De]
        mask = None
        if not bool(valid.all()):
            # key padding mask; a sample with no visible patch attends to its padding (output unused)
            keys = valid | ~valid.any(1, keepdim=True)
            mask = keys[:, None, None, :]  # [B, 1, 1, Lv]
        for blk in self.blocks:
            x = blk(x, mask)
        return self.norm(x), ids, valid

    def supplement(self, image_patches, prior, hidden):
        """Tokens for the hidden positions only, ``[M, Dd]`` (``M = hidden.sum()``, in the order of
        ``hidden.nonzero()``): IPS (image patch embedding) or mask token, plus the prior's label
        embedding when ``label_prior`` is on."""
        if self.config.ips:
            sup = self.ips_embed(image_patches[hidden])  # [M, Dd]
        else:
            sup = self.mask_token[0].expand(int(hidden.sum()), -1)
        if prior is not None:
            sup = sup + self.prior_embed(self.patchify(prior.classes.unsqueeze(1))[hidden].unsqueeze(0))[0]
        return sup

    def forward_decoder(self, latent, ids, valid, supplement, hidden):
        """Place the encoder tokens and the supplement on the grid and decode -> ``[B, L, Dd]`` (normed)."""
        b, length = hidden.shape
        vis = self.decoder_embed(latent)  # [B, Lv, Dd]
        dtype = torch.promote_types(vis.dtype, supplement.dtype)  # float32 if either is (autocast)
        x = vis.new_empty(b, length, vis.shape[-1], dtype=dtype)  # every position is either hidden or visible
        x[hidden] = supplement.to(dtype)
        rows = torch.arange(b, device=hidden.device).unsqueeze(1).expand_as(ids)
        x[rows[valid], ids[valid]] = vis[valid].to(dtype)
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_norm(x)

    def forward_features(self, image, label, hidden, prior):
        """Shared trunk: checks, normalisation, prior, encoder, IPS, decoder -> ``(tokens [B, L, Dd], prior)``."""
        c = self.config
        self.check_inputs(image, label, hidden)
        image_patches = self.patchify(normalize_image(image))  # [B, L, 3*p*p]
        if not c.label_prior:
            prior = None
        elif prior is None:
            prior = self.label_prior(label, image=image)
        else:
            prior = LabelPrior.of(prior)
        latent, ids, valid = self.forward_encoder(image_patches, label, hidden)
        tokens = self.forward_decoder(latent, ids, valid, self.supplement(image_patches, prior, hidden), hidden)
        return tokens, prior

    def forward(
        self,
        image: torch.Tensor,
        label: torch.Tensor,
        hidden: torch.Tensor,
        prior: LabelPrior | torch.Tensor | None = None,
        *,
        hidden_only: bool = False,
    ) -> torch.Tensor:
        """Logits ``[B, N, H, W]`` for every pixel (channels-last memory). ``prior`` (with ``label_prior``)
        may be passed when the caller already computed :meth:`label_prior` of ``label`` (a class map
        ``[B, H, W]`` counts as a hard prior).
        ``hidden_only=True``: the logits of the hidden patches only (see :meth:`forward_hidden`)."""
        if hidden_only:
            return self.forward_hidden(image, label, hidden, prior)
        tokens, prior = self.forward_features(image, label, hidden, prior)
        logits = self.unpatchify(self.head(tokens))  # [B, N, H, W]
        if prior is not None:  # in float32 under autocast too: the prior's scale dwarfs bfloat16's resolution
            logits = self.add_prior(logits.float(), prior, inplace=True)  # logits is ours: no copy
        if self.refiner is not None:
            logits = self.refiner(normalize_image(image).to(logits.dtype), logits)
        return logits

    def forward_hidden(
        self,
        image: torch.Tensor,
        label: torch.Tensor,
        hidden: torch.Tensor,
        prior: LabelPrior | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of the hidden patches only, ``[M, p * p, N]`` (``M = hidden.sum()``, rows in the order of
        ``hidden.nonzero()``, pixels row-major within a patch): equal to :meth:`forward` there, at about
        half the cost of the head and none of the full-size maps. All that the loss and completion at the
        model's size need. Not for models with a refiner (it works on the whole map)."""
        if self.refiner is not None:
            raise ValueError("forward_hidden() needs a model without a refiner (refine_dim=0); use forward()")
        p, n = self.config.patch_size, self.config.num_classes
        tokens, prior = self.forward_features(image, label, hidden, prior)
        logits = self.head(tokens[hidden]).unflatten(-1, (p * p, n)).float()  # [M, p*p, N]
        if prior is not None:
            logits = self.add_prior(logits, self.prior_rows(prior, hidden), inplace=True, dim=-1)
        return logits

    def label_prior(
        self, label: torch.Tensor, known: torch.Tensor | None = None, image: torch.Tensor | None = None
    ) -> LabelPrior:
        """The label prior of the unknown pixels, at any size. ``known`` defaults to every labelled
        pixel (including the known parts of hidden patches). ``prior_kind="nearest"``: nearest-label
        fill (hard), on a grid ``prior_stride`` times coarser (known where the whole cell is) and
        expanded back; ``"random_walk"``: random-walk propagation (soft; see
        :mod:`torch_label_mae.propagation`), which needs ``image [B, 3, H, W]``."""
        c = self.config
        if known is None:
            known = (label != c.ignore_index) & (label >= 0) & (label < c.num_classes)
        if c.prior_kind == "random_walk":
            if image is None or tuple(image.shape[-2:]) != tuple(label.shape[-2:]):
                got = None if image is None else tuple(image.shape)
                raise ValueError(
                    f"prior_kind='random_walk' needs the image at the label's size {tuple(label.shape)}, got {got}"
                )
            weights = None
            if self.affinity is not None and (c.prior_sweeps > 0 or c.prior_solver == "direct"):
                with torch.no_grad():  # trained by affinity.train_affinity, frozen here
                    weights = self.affinity(image)
            prob, index = random_walk_probabilities(
                image,
                label,
                known,
                c.num_classes,
                beta=c.prior_beta,
                sweeps=c.prior_sweeps,
                weights=weights,
                solver=c.prior_solver,
                connectivity=c.prior_connectivity,
                color=c.prior_color,
            )  # [B, K, H, W], [B, K]
            classes = most_likely_class(prob, index, known, c.ignore_index)
            return LabelPrior(classes, prob, index[:, :, None, None])
        s = c.prior_stride
        if s > 1:
            known = -F.max_pool2d(-known.unsqueeze(1).float(), s).squeeze(1) > 0  # cell fully known
            label = label[:, s // 2 :: s, s // 2 :: s]
        prior = nearest_fill(label, known, self.config.ignore_index)
        if s > 1:
            prior = prior.repeat_interleave(s, 1).repeat_interleave(s, 2)
        return LabelPrior(prior)

    def label_prior_map(
        self, label: torch.Tensor, known: torch.Tensor | None = None, image: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The prior's class per pixel ``[B, H, W]`` (see :meth:`label_prior`)."""
        return self.label_prior(label, known, image).classes

    def prior_rows(self, prior: LabelPrior | torch.Tensor, hidden: torch.Tensor) -> LabelPrior:
        """The prior of the hidden patches, laid out as :meth:`forward_hidden`'s rows: classes
        ``[M, p * p]`` and, when soft, prob ``[M, p * p, K]`` with index ``[M, 1, K]``."""
        prior = LabelPrior.of(prior)
        classes = self.patchify(prior.classes.unsqueeze(1))[hidden]  # [M, p*p]
        if prior.prob is None:
            return LabelPrior(classes)
        k = prior.prob.shape[1]
        prob = self.patchify(prior.prob)[hidden].unflatten(-1, (k, -1)).transpose(1, 2)  # [M, p*p, K]
        index = prior.index.view(-1, 1, k).expand(-1, hidden.shape[1], -1)[hidden].unsqueeze(1)  # [M, 1, K]
        return LabelPrior(classes, prob, index)

    def add_prior(
        self,
        logits: torch.Tensor,
        prior: LabelPrior | torch.Tensor,
        sign: float = 1.0,
        inplace: bool = False,
        dim: int = 1,
    ) -> torch.Tensor:
        """``logits + sign * prior_scale * P`` with classes along ``dim`` (``[B, N, H, W]`` by default),
        where ``P`` is the one-hot of a hard prior's classes (nothing where it has none) or a soft
        prior's probabilities, without building a dense ``P``: a scatter-add at the prior's classes.
        ``prior`` laid out as ``logits`` less the class axis (a class map counts as a hard prior).
        ``inplace=True`` adds into ``logits`` itself (for callers that own it)."""
        prior = LabelPrior.of(prior)
        scale = (sign * self.prior_scale).to(logits.dtype)
        add = logits.scatter_add_ if inplace else logits.scatter_add
        if prior.prob is not None:
            prob = prior.prob.to(logits.dtype)
            return add(dim, prior.index.expand_as(prob), scale * prob)
        n = self.config.num_classes
        classes = prior.classes
        known = (classes >= 0) & (classes < n)  # [B, H, W]
        idx = torch.where(known, classes, torch.zeros_like(classes)).long().unsqueeze(dim)  # [B, 1, H, W]
        return add(dim, idx, scale * known.unsqueeze(dim).to(logits.dtype))

    def check_inputs(self, image, label, hidden) -> None:
        """Shapes and dtypes of the forward contract, with messages that name the value at fault."""
        c = self.config
        h, w = c.size
        if image.ndim != 4 or image.shape[1] != 3 or tuple(image.shape[-2:]) != (h, w):
            raise ValueError(f"image must be [B, 3, {h}, {w}], got {tuple(image.shape)}")
        if label.shape != (image.shape[0], h, w):
            raise ValueError(
                f"label must be [B, {h}, {w}] matching image {tuple(image.shape)}, got {tuple(label.shape)}"
            )
        if label.dtype.is_floating_point or label.dtype == torch.bool:
            raise ValueError(f"label must be an integer tensor, got {label.dtype}")
        if hidden.shape != (image.shape[0], c.num_patches) or hidden.dtype != torch.bool:
            raise ValueError(f"hidden must be bool [B, {c.num_patches}], got {hidden.dtype} {tuple(hidden.shape)}")
