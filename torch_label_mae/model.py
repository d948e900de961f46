"""L-MAE: the label masked autoencoder (paper section III-C) and its validated config.

Data path of :meth:`LMAE.forward` (shapes for B samples, L patches of p x p, N classes)::

    label [B, H, W], image [B, 3, H, W], hidden [B, L]
      -> fuse-map patch embedding of the visible patches     [B, Lv, De]   (forward_encoder)
      -> encoder blocks (visible only, padded + masked)      [B, Lv, De]
      -> decoder embedding, scattered back to the grid;
         hidden positions get the Image Patch Supplement     [B, L, Dd]    (forward_decoder)
      -> decoder blocks -> per-pixel head                    [B, L, p*p*N]
      -> unpatchify (+ optional label prior)                 [B, N, H, W]  logits
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .combiner import PriorCombiner
from .config import LMAEConfig
from .fusion import normalize_image
from .layers import Block, LabelPatchEmbed, sincos_pos_embed
from .prior import LabelPrior, make_prior
from .slots import present_slots

# logit of a slot that no visible pixel holds (class-agnostic models): finite, so that a sample with no
# visible pixel still gives numbers, far below any logit the model and prior produce
ABSENT_SLOT = -1e4


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
    Unknown pixels of ``label`` must be ``ignore_index``: the encoder sees only the visible patches, and
    the label prior (when on; a random walk's with ``prior_combiner``) is filled from every labelled pixel.
    Samples may hide different numbers of patches: visible tokens are padded to the batch's maximum
    and padding is masked out of attention, which gives the same result as running them one by one."""

    def __init__(self, config: LMAEConfig):
        super().__init__()
        if not isinstance(config, LMAEConfig):
            raise TypeError(f"expected an LMAEConfig, got {type(config).__name__}")
        config.validate()
        self.config = c = config
        p, n, de, dd = c.patch_size, c.num_classes, c.encoder_dim, c.decoder_dim
        # fuse-map patch embedding = label part (lookup-and-sum) + image part (linear)
        self.label_embed = LabelPatchEmbed(n, p, de)
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
        if c.prior is not None:
            self.prior_embed = LabelPatchEmbed(n, p, dd)
            # default: start where the prior class gets probability 0.9; the head then learns corrections
            scale = c.prior.scale if c.prior.scale is not None else math.log(9.0 * max(n - 1, 1))
            self.prior_scale = nn.Parameter(torch.tensor(float(scale)))
        pos = torch.empty(c.num_patches, dd) if meta else sincos_pos_embed(dd, c.grid)
        self.register_buffer("decoder_pos_embed", pos, persistent=False)
        self.decoder_blocks = nn.ModuleList([Block(dd, c.decoder_heads, c.mlp_ratio) for _ in range(c.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(dd, eps=1e-6)
        self.head = nn.Linear(dd, p * p * n)
        self.apply(self._init_weights)
        if c.prior is not None:  # start exactly at the prior; learning moves away from it where it helps
            nn.init.zeros_(self.head.weight)
        self.prior_combiner = PriorCombiner.frozen(c.prior)  # a random walk's, or None
        self.prior = make_prior(c, self.prior_combiner)  # None without a prior

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
        embedding with a prior."""
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

    def prior_alone(self) -> bool:
        """Whether the logits are the label prior's alone: a model with a prior whose learned correction
        (the head) is exactly zero, outside autograd. Then the trunk cannot change the logits (its tokens
        times a zero head are +0.0) and is skipped: the same logits, bit for bit, at the prior's cost."""
        if self.config.prior is None or torch.is_grad_enabled():
            return False
        head = self.head
        return not bool(head.weight.any()) and (head.bias is None or not bool(head.bias.any()))

    def prior_of(self, image, label, hidden, prior) -> LabelPrior | None:
        """Checks the inputs; the label prior (``prior`` when the caller computed it), None without one."""
        self.check_inputs(image, label, hidden)
        if self.config.prior is None:
            return None
        return self.prior(label, image=image) if prior is None else LabelPrior.of(prior)

    def forward_features(self, image, label, hidden, prior):
        """Shared trunk: checks, normalisation, prior, encoder, IPS, decoder -> ``(tokens [B, L, Dd], prior)``."""
        prior = self.prior_of(image, label, hidden, prior)
        image_patches = self.patchify(normalize_image(image))  # [B, L, 3*p*p]
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
        """Logits ``[B, N, H, W]`` for every pixel (channels-last memory). ``prior`` (with ``config.prior``)
        may be passed when the caller already computed ``self.prior(label, image=image)`` (a class map
        ``[B, H, W]`` counts as a hard prior).
        ``hidden_only=True``: the logits of the hidden patches only (see :meth:`forward_hidden`)."""
        if hidden_only:
            return self.forward_hidden(image, label, hidden, prior)
        if self.prior_alone():
            prior = self.prior_of(image, label, hidden, prior)
            b, n, (h, w) = image.shape[0], self.config.num_classes, self.config.size
            logits = image.new_zeros(b, n, h, w, dtype=torch.float32).contiguous(memory_format=torch.channels_last)
        else:
            tokens, prior = self.forward_features(image, label, hidden, prior)
            logits = self.unpatchify(self.head(tokens))  # [B, N, H, W]
        if prior is not None:  # in float32 under autocast too: the prior's scale dwarfs bfloat16's resolution
            logits = prior.add_to(logits.float(), self.prior_scale, inplace=True)  # logits is ours: no copy
        if self.config.class_agnostic:  # only the slots the visible label holds
            absent = ~present_slots(label, self.config.num_classes)  # [B, N]
            logits = logits.masked_fill(absent[:, :, None, None], ABSENT_SLOT)
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
        model's size need."""
        p, n = self.config.patch_size, self.config.num_classes
        if self.prior_alone():
            prior = self.prior_of(image, label, hidden, prior)
            logits = image.new_zeros(int(hidden.sum()), p * p, n, dtype=torch.float32)  # [M, p*p, N]
        else:
            tokens, prior = self.forward_features(image, label, hidden, prior)
            logits = self.head(tokens[hidden]).unflatten(-1, (p * p, n)).float()  # [M, p*p, N]
        if prior is not None:
            logits = prior.rows(hidden, self.patchify).add_to(logits, self.prior_scale, inplace=True, dim=-1)
        if self.config.class_agnostic:
            absent = ~present_slots(label, n)  # [B, N] -> one row per hidden patch [M, 1, N]
            rows = absent.unsqueeze(1).expand(-1, hidden.shape[1], -1)[hidden].unsqueeze(1)
            logits = logits.masked_fill(rows, ABSENT_SLOT)
        return logits

    def resize_logits(
        self, logits: torch.Tensor, prior: LabelPrior | None, image: torch.Tensor, label: torch.Tensor
    ) -> torch.Tensor:
        """Logits at the model's size ``[B, N, h, w]`` (as :meth:`forward` gives them) -> at the size of
        ``image [B, 3, H, W]`` and ``label [B, H, W]`` (unknown pixels ``ignore_index``): the model's
        correction is resized bilinearly; the label prior is taken at full resolution, where thin
        structures that the resize to the model grid loses are still there. In place on ``logits``."""
        size = tuple(label.shape[-2:])
        if prior is None:
            return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        logits = prior.add_to(logits, -self.prior_scale, inplace=True)  # the correction alone
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return self.prior(label, image=image).add_to(logits, self.prior_scale, inplace=True)

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
