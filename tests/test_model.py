"""L-MAE model and config (model.py, layers.py): validation, Table IV size, forward-pass contracts."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from torch_label_mae.fusion import fuse_map, normalize_image
from torch_label_mae.masking import hidden_to_pixels, random_masking
from torch_label_mae.model import LMAE, LMAEConfig

IGNORE = 255


def small_config(**overrides) -> LMAEConfig:
    base = dict(
        img_size=32,
        patch_size=8,
        num_classes=5,
        encoder_depth=2,
        encoder_dim=32,
        encoder_heads=4,
        decoder_depth=1,
        decoder_dim=24,
        decoder_heads=2,
    )
    return LMAEConfig.from_dict({**base, **overrides})


def build(cfg: LMAEConfig, seed: int = 0) -> LMAE:
    torch.manual_seed(seed)
    model = LMAE(cfg).eval()
    # a zero-initialised head (when the model starts at the label prior) blocks every gradient and every
    # effect upstream of it: give it random weights, as after training
    with torch.no_grad():
        if not model.head.weight.any():
            torch.nn.init.xavier_uniform_(model.head.weight)
    return model


def inputs(cfg: LMAEConfig, batch: int, seed: int = 0, void: float = 0.1):
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.size
    image = torch.rand(batch, 3, h, w, generator=g)
    label = torch.randint(0, cfg.num_classes, (batch, h, w), generator=g)
    label[torch.rand(batch, h, w, generator=g) < void] = cfg.ignore_index
    return image, label, g


# -- config -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(img_size=224, patch_size=12), "img_size"),
        (dict(img_size=(224, 200), patch_size=16), "img_size"),
        (dict(encoder_dim=100, encoder_heads=16), "encoder_dim"),
        (dict(decoder_dim=100, decoder_heads=16), "decoder_dim"),
        (dict(num_classes=21, ignore_index=5), "ignore_index"),
        (dict(num_classes=21, ignore_index=0), "ignore_index"),
        (dict(mask_ratio=1.0), "mask_ratio"),
        (dict(background_index=21), "background_index"),
        (dict(class_names=["a", "b"]), "class_names"),
        (dict(encoder_depth=2.0), "encoder_depth"),
        (dict(ips=1), "ips"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"LMAEConfig\.{field}="):
        LMAEConfig(**kwargs)


def test_config_heads_error_names_the_heads_too():
    with pytest.raises(ValueError, match="encoder_heads=16"):
        LMAEConfig(encoder_dim=100, encoder_heads=16)


def test_config_from_dict_rejects_unknown_keys():
    d = LMAEConfig.tiny().to_dict()
    d["encoder_widht"] = 3
    with pytest.raises(ValueError, match="encoder_widht"):
        LMAEConfig.from_dict(d)
    with pytest.raises(ValueError, match="JSON object"):
        LMAEConfig.from_dict([1, 2])


@pytest.mark.parametrize(
    "cfg",
    [
        LMAEConfig.paper(),
        LMAEConfig.tiny(img_size=(32, 48), patch_size=8, background_index=0, label_prior=True),
        small_config(num_classes=3, class_names=["sky", "road", "car"], ignore_index=-1, mask_ratio=0.3, ips=False),
    ],
)
def test_config_round_trip(cfg, tmp_path):
    d = cfg.to_dict()
    assert LMAEConfig.from_dict(d) == cfg
    via_json = json.loads(json.dumps(d))
    assert LMAEConfig.from_dict(via_json) == cfg
    path = tmp_path / "config.json"
    path.write_text(json.dumps(d))
    assert LMAEConfig.from_json(path) == cfg
    assert LMAEConfig.from_dict(via_json).size == cfg.size


# -- Table IV ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, params_m, macs_g",
    [
        ({}, 250.0, 29.0),
        (dict(encoder_depth=12, decoder_depth=8, encoder_dim=1024, decoder_dim=512), 186.0, 21.0),
    ],
    ids=["EB8-ED1440-DB6-DD720", "EB12-ED1024-DB8-DD512"],
)
def test_table_iv_params_and_macs(overrides, params_m, macs_g):
    cfg = LMAEConfig.paper(**overrides)
    model = LMAE(cfg).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params - params_m) <= 0.05 * params_m, f"{params:.1f}M parameters"
    image, label, g = inputs(cfg, 1)
    hidden = random_masking(1, cfg.num_patches, 0.5, generator=g)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(image, label, hidden)
    assert out.shape == (1, 21, 224, 224)
    macs = counter.get_total_flops() / 2 / 1e9
    assert abs(macs - macs_g) <= 0.05 * macs_g, f"{macs:.2f}G MACs"


# -- forward contract -------------------------------------------------------------------------------


@given(
    p=st.sampled_from([4, 8]),
    gh=st.integers(1, 3),
    gw=st.integers(1, 3),
    n=st.integers(1, 4),
    batch=st.integers(1, 2),
    ips=st.booleans(),
    label_prior=st.booleans(),
    density=st.sampled_from([0.0, 0.3, 1.0]),
    seed=st.integers(0, 2**31),
)
def test_output_shape(p, gh, gw, n, batch, ips, label_prior, density, seed):
    cfg = small_config(
        img_size=(gh * p, gw * p),
        patch_size=p,
        num_classes=n,
        ips=ips,
        label_prior=label_prior,
        decoder_depth=1,
        encoder_depth=1,
    )
    model = build(cfg, seed)
    image, label, g = inputs(cfg, batch, seed)
    hidden = torch.rand(batch, cfg.num_patches, generator=g) < density
    out = model(image, label, hidden)
    assert out.shape == (batch, n, gh * p, gw * p)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_output_shape_non_square():
    cfg = small_config(img_size=(32, 48), patch_size=8)
    assert cfg.grid == (4, 6) and cfg.num_patches == 24
    model = build(cfg)
    image, label, g = inputs(cfg, 2)
    out = model(image, label, random_masking(2, 24, 0.5, generator=g))
    assert out.shape == (2, 5, 32, 48)


def test_uint8_label_gives_same_output_as_int64():
    cfg = small_config(label_prior=True)
    model = build(cfg)
    image, label, g = inputs(cfg, 2)
    hidden = random_masking(2, cfg.num_patches, 0.5, generator=g)
    torch.testing.assert_close(model(image, label.to(torch.uint8), hidden), model(image, label, hidden))


@pytest.mark.parametrize("bad", ["image", "label_dtype", "label_shape", "hidden_dtype", "hidden_shape"])
def test_check_inputs_rejects_bad_inputs(bad):
    cfg = small_config()
    model = build(cfg)
    image, label, _ = inputs(cfg, 2)
    hidden = torch.zeros(2, cfg.num_patches, dtype=torch.bool)
    if bad == "image":
        image = image[:, :2]
    elif bad == "label_dtype":
        label = label.float()
    elif bad == "label_shape":
        label = label[:, :-1]
    elif bad == "hidden_dtype":
        hidden = hidden.long()
    else:
        hidden = hidden[:, :-1]
    with pytest.raises(ValueError):
        model(image, label, hidden)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(ips=False, label_prior=True),
        dict(img_size=(32, 48), label_prior=True),
        dict(img_size=(32, 48), label_prior=True, prior_kind="random_walk", prior_sweeps=5),
    ],
    ids=["ips", "mask-token+prior", "non-square+prior", "random-walk-prior"],
)
def test_mixed_hidden_counts_batch_equals_one_by_one(overrides):
    cfg = small_config(**overrides)
    model = build(cfg)
    L = cfg.num_patches
    image, label, g = inputs(cfg, 4)
    hidden = torch.zeros(4, L, dtype=torch.bool)
    hidden[0, torch.randperm(L, generator=g)[:5]] = True
    hidden[1] = True  # no visible patch at all
    # hidden[2]: nothing hidden
    hidden[3, torch.randperm(L, generator=g)[: L - 3]] = True
    with torch.no_grad():
        batched = model(image, label, hidden)
        for i in range(4):
            alone = model(image[i : i + 1], label[i : i + 1], hidden[i : i + 1])
            torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-4, rtol=0, msg=f"sample {i}")


def test_whole_batch_hidden_runs():
    cfg = small_config()
    model = build(cfg)
    image, label, _ = inputs(cfg, 2)
    out = model(image, label, torch.ones(2, cfg.num_patches, dtype=torch.bool))
    assert out.shape == (2, 5, 32, 32) and torch.isfinite(out).all()


@pytest.mark.parametrize("ips", [True, False])
@pytest.mark.parametrize("label_prior", [True, False])
def test_gradients_reach_every_parameter(ips, label_prior):
    cfg = small_config(ips=ips, label_prior=label_prior)
    model = build(cfg).train()
    image, label, g = inputs(cfg, 2)
    hidden = random_masking(2, cfg.num_patches, 0.5, generator=g)
    out = model(image, label, hidden)
    (out * torch.randn(out.shape, generator=g)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def hidden_patch_pixels(cfg: LMAEConfig, hidden: torch.Tensor) -> torch.Tensor:
    return hidden_to_pixels(hidden, cfg.grid, cfg.patch_size)


@pytest.mark.parametrize("ips", [True, False])
def test_ips_feeds_hidden_image_patches_to_the_decoder(ips):
    cfg = small_config(ips=ips)
    model = build(cfg)
    image, label, g = inputs(cfg, 2)
    hidden = random_masking(2, cfg.num_patches, 0.5, generator=g)
    pix = hidden_patch_pixels(cfg, hidden).unsqueeze(1)  # [B, 1, H, W]
    new_hidden_pixels = torch.where(pix, torch.rand(image.shape, generator=g), image)
    new_visible_pixels = torch.where(~pix, torch.rand(image.shape, generator=g), image)
    with torch.no_grad():
        base = model(image, label, hidden)
        changed_hidden = model(new_hidden_pixels, label, hidden)
        changed_visible = model(new_visible_pixels, label, hidden)
    assert (changed_visible - base).abs().max() > 1e-4  # the image matters at all
    if ips:
        assert (changed_hidden - base).abs().max() > 1e-4, "IPS: hidden image patches must reach the decoder"
    else:
        torch.testing.assert_close(changed_hidden, base, atol=1e-6, rtol=0, msg="mask token: hidden pixels leaked")


@given(
    n=st.integers(1, 6),
    p=st.sampled_from([2, 4]),
    gh=st.integers(1, 3),
    gw=st.integers(1, 3),
    seed=st.integers(0, 2**31),
)
def test_label_lookup_plus_image_linear_is_the_fuse_map_patch_embedding(n, p, gh, gw, seed):
    cfg = small_config(img_size=(gh * p, gw * p), patch_size=p, num_classes=n, encoder_depth=1, decoder_depth=0)
    model = build(cfg, seed)
    with torch.no_grad():
        model.image_embed.bias.normal_()
    image, label, _ = inputs(cfg, 2, seed, void=0.3)
    lookup = model.label_embed(model.patchify(label.unsqueeze(1))) + model.image_embed(
        model.patchify(normalize_image(image))
    )
    pp = p * p
    dense_weight = torch.cat([model.label_embed.bag.weight[: n * pp].T, model.image_embed.weight], dim=1)
    assert dense_weight.shape == (cfg.encoder_dim, (n + 3) * pp)
    dense = F.linear(model.patchify(fuse_map(image, label, n)), dense_weight, model.image_embed.bias)
    torch.testing.assert_close(lookup, dense, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(ips=False),
        dict(label_prior=True),
        dict(label_prior=True, prior_kind="random_walk", prior_sweeps=5),
    ],
    ids=["ips", "mask-token", "prior", "random-walk-prior"],
)
def test_hidden_labels_never_reach_the_output(overrides):
    cfg = small_config(**overrides)
    model = build(cfg)
    image, label, g = inputs(cfg, 3)
    hidden = random_masking(3, cfg.num_patches, 0.5, generator=g)
    pix = hidden_patch_pixels(cfg, hidden)
    scrambled = torch.randint(0, cfg.num_classes, label.shape, generator=g)
    scrambled[torch.rand(label.shape, generator=g) < 0.2] = IGNORE
    relabel_hidden = torch.where(pix, scrambled, label)
    relabel_visible = torch.where(~pix, scrambled, label)
    with torch.no_grad():
        base = model(image, label, hidden)
        changed_hidden = model(image, relabel_hidden, hidden)
        changed_visible = model(image, relabel_visible, hidden)
    assert (changed_visible - base).abs().max() > 1e-4  # visible labels matter
    if cfg.prior is None:
        torch.testing.assert_close(changed_hidden, base, atol=1e-6, rtol=0, msg="hidden labels leaked")
    # the encoder never sees hidden patches; (the label prior, by contract, reads every labelled
    # pixel: callers set unknown pixels to ignore_index, as training and completion do)
    patches = model.patchify(normalize_image(image))
    with torch.no_grad():
        enc = model.forward_encoder(patches, label, hidden)[0]
        enc_changed = model.forward_encoder(patches, relabel_hidden, hidden)[0]
    torch.testing.assert_close(enc_changed, enc, atol=1e-6, rtol=0, msg="hidden labels reached the encoder")


@given(
    b=st.integers(1, 2), gh=st.integers(1, 3), gw=st.integers(1, 3), p=st.sampled_from([1, 2, 4]), n=st.integers(1, 5)
)
def test_unpatchify_places_each_head_output_at_its_pixel(b, gh, gw, p, n):
    cfg = LMAEConfig(
        img_size=(gh * p, gw * p), patch_size=p, num_classes=n, encoder_depth=1, encoder_dim=8, encoder_heads=1,
        decoder_depth=1, decoder_dim=8, decoder_heads=1,
    )  # fmt: skip
    model = LMAE(cfg)
    out = torch.randn(b, gh * gw, p * p * n)  # the head's order within a patch: (row, column, class)
    logits = model.unpatchify(out)
    assert logits.shape == (b, n, gh * p, gw * p)
    for i, y, x, c in [(0, 0, 0, 0), (b - 1, gh * p - 1, gw * p - 1, n - 1), (0, gh * p - 1, 0, n // 2)]:
        patch, (py, px) = (y // p) * gw + x // p, (y % p, x % p)
        assert logits[i, c, y, x] == out[i, patch, (py * p + px) * n + c]
    assert logits.is_contiguous(memory_format=torch.channels_last)


@given(
    seed=st.integers(0, 2**31),
    ips=st.booleans(),
    prior=st.sampled_from([None, "nearest", "random_walk"]),
    counts=st.lists(st.integers(0, 16), min_size=1, max_size=3),
)
def test_forward_hidden_equals_forward_on_hidden_pixels(seed, ips, prior, counts):
    cfg = small_config(ips=ips, label_prior=prior is not None, prior_kind=prior or "nearest", prior_sweeps=5)
    model = build(cfg, seed=seed % 7)
    image, label, g = inputs(cfg, len(counts), seed=seed)
    hidden = torch.zeros(len(counts), cfg.num_patches, dtype=torch.bool)
    for i, k in enumerate(counts):
        hidden[i, torch.randperm(cfg.num_patches, generator=g)[:k]] = True
    with torch.no_grad():
        full = model(image, label, hidden)  # [B, N, H, W]
        rows = model(image, label, hidden, hidden_only=True)  # [M, p*p, N]
    p, n = cfg.patch_size, cfg.num_classes
    assert rows.shape == (sum(counts), p * p, n)
    expected = model.patchify(full)  # [B, L, N*p*p], channel-major
    expected = expected[hidden].view(-1, n, p * p).transpose(1, 2)  # [M, p*p, N]
    torch.testing.assert_close(rows, expected, atol=1e-5, rtol=1e-5)


@given(
    seed=st.integers(0, 2**31),
    n=st.integers(1, 6),
    p=st.sampled_from([1, 2, 4]),
    blocky=st.floats(0.0, 1.0),
    void=st.floats(0.0, 0.5),
)
def test_label_patch_embed_equals_the_dense_one_hot_map(seed, n, p, blocky, void):
    from torch_label_mae.layers import LabelPatchEmbed

    g = torch.Generator().manual_seed(seed)
    embed = LabelPatchEmbed(n, p, 8)
    torch.nn.init.normal_(embed.bag.weight)
    with torch.no_grad():
        embed.bag.weight[embed.pad].zero_()
    b, length = 2, 5
    patches = torch.randint(0, n, (b, length, 1), generator=g).expand(b, length, p * p).clone()  # uniform
    mixed = torch.rand(b, length, p * p, generator=g) > blocky
    patches[mixed] = torch.randint(0, n, (int(mixed.sum()),), generator=g)
    patches[torch.rand(b, length, p * p, generator=g) < void] = 255
    one_hot = F.one_hot(patches.clamp(max=n), n + 1)[..., :n].float()  # [B, L, pp, N]; void -> zeros
    dense = torch.einsum("blqc,cqd->bld", one_hot, embed.bag.weight[: n * p * p].view(n, p * p, 8))
    torch.testing.assert_close(embed(patches), dense, atol=1e-4, rtol=1e-4)


@given(
    seed=st.integers(0, 2**31),
    prior=st.sampled_from(["nearest", "random_walk"]),
    agnostic=st.booleans(),
    counts=st.lists(st.integers(0, 16), min_size=1, max_size=3),
)
def test_a_zero_correction_skips_the_trunk_with_the_same_logits(seed, prior, agnostic, counts):
    cfg = small_config(label_prior=True, prior_kind=prior, prior_sweeps=5, class_agnostic=agnostic)
    model = build(cfg, seed=seed % 7)
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    image, label, g = inputs(cfg, len(counts), seed=seed)
    hidden = torch.zeros(len(counts), cfg.num_patches, dtype=torch.bool)
    for i, k in enumerate(counts):
        hidden[i, torch.randperm(cfg.num_patches, generator=g)[:k]] = True
    with torch.enable_grad():  # under autograd the trunk runs (training must reach it)
        assert not model.prior_alone()
        slow = [model(image, label, hidden).detach(), model(image, label, hidden, hidden_only=True).detach()]
    with torch.no_grad():
        assert model.prior_alone()
        model.forward_encoder = lambda *a: pytest.fail("the trunk ran")  # this model only
        fast = [model(image, label, hidden), model(image, label, hidden, hidden_only=True)]
    for a, b in zip(fast, slow, strict=True):
        assert a.shape == b.shape and torch.equal(a, b)  # bit for bit


@given(
    seed=st.integers(0, 2**31),
    prior=st.sampled_from(["nearest", "random_walk"]),
    agnostic=st.booleans(),
    h=st.integers(8, 48),
    w=st.integers(8, 48),
    empty=st.booleans(),
)
def test_a_zero_correction_at_another_size_takes_the_prior_at_full_size_only(seed, prior, agnostic, h, w, empty):
    """Labels not at the model's size: a prior-alone model computes its prior once, at full size, and
    completes exactly as the path through the model and :meth:`resize_logits` does, thin lines that the
    resize to the model's size loses (their slots ruled out there) and a label with no known pixel too."""
    from torch_label_mae.inference import complete_tensors

    cfg = small_config(label_prior=True, prior_kind=prior, prior_sweeps=5, class_agnostic=agnostic)
    assume((h, w) != cfg.size)
    model = build(cfg, seed=seed % 7)
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (2, 3, h, w), generator=g, dtype=torch.uint8)
    label = torch.randint(0, 2, (2, h, w), generator=g)
    label[:, int(torch.randint(0, h, (1,), generator=g))] = 3  # 1 px lines: the resize may lose them
    label[:, :, int(torch.randint(0, w, (1,), generator=g))] = 4
    missing = torch.rand(2, h, w, generator=g) < 0.4
    missing[1] |= empty  # no known pixel at all
    sizes, prior_of = [], model.prior
    model.prior = lambda lab, image: sizes.append(tuple(lab.shape[-2:])) or prior_of(lab, image=image)
    with torch.no_grad():
        fast = complete_tensors(model, image, label, missing)
        assert sizes == [(h, w)]
        model.prior_alone = lambda: False  # this model only: through the trunk and resize_logits
        slow = complete_tensors(model, image, label, missing)
    assert sizes[1:] == [cfg.size, (h, w)]
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[0][~missing], label[~missing])
    assert torch.equal(fast[1], slow[1])


@given(seed=st.integers(0, 2**31), classes=st.integers(1, 6), batch=st.integers(1, 3), empty=st.booleans())
def test_a_zero_correction_at_the_models_size_reads_the_prior_over_its_slots_only(seed, classes, batch, empty):
    """At the model's size, a class-agnostic prior-alone model reads its soft prior over the label's slots
    only, and completes as the path through the forward pass does: the same slots (labels of fewer slots
    than the batch's longest, and one with no known pixel, too), the probabilities to float32 rounding."""
    from torch_label_mae.inference import complete_tensors

    cfg = small_config(label_prior=True, prior_kind="random_walk", prior_sweeps=5, class_agnostic=True)
    model = build(cfg, seed=seed % 7)
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.size
    image = torch.randint(0, 256, (batch, 3, h, w), generator=g, dtype=torch.uint8)
    label = torch.randint(0, classes, (batch, h, w), generator=g) * 7  # ids, not slots
    label[0] = torch.where(label[0] > 7, 0, label[0])  # fewer slots than the others
    missing = torch.rand(batch, h, w, generator=g) < 0.4
    missing[-1] |= empty  # no known pixel at all
    with torch.no_grad():
        model.forward_hidden = lambda *a, **k: pytest.fail("the forward pass ran")  # this model only
        fast = complete_tensors(model, image, label, missing)
        del model.forward_hidden
        model.prior_alone = lambda: False  # this model only: through the forward pass
        slow = complete_tensors(model, image, label, missing)
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[0][~missing], label[~missing])
    torch.testing.assert_close(fast[1], slow[1], rtol=1e-6, atol=0)  # a few ulps: sums over K, not N


@pytest.mark.parametrize(
    "agnostic, prior, zero_head",
    [(True, "random_walk", False), (False, "random_walk", True), (True, "nearest", True)],
    ids=["agnostic-with-a-correction", "class-specific", "hard-prior"],
)
def test_only_a_class_agnostic_soft_prior_alone_is_read_over_its_slots(monkeypatch, agnostic, prior, zero_head):
    """A correction to add, classes that are not slots (whose logits the other classes' confidence counts),
    a hard prior: each goes through the forward pass."""
    import torch_label_mae.inference as inference

    cfg = small_config(label_prior=True, prior_kind=prior, prior_sweeps=5, class_agnostic=agnostic)
    model = build(cfg, seed=3)
    if zero_head:
        torch.nn.init.zeros_(model.head.weight)
        torch.nn.init.zeros_(model.head.bias)
    g = torch.Generator().manual_seed(3)
    h, w = cfg.size
    image = torch.randint(0, 256, (2, 3, h, w), generator=g, dtype=torch.uint8)
    label = torch.randint(0, 3, (2, h, w), generator=g)
    missing = torch.rand(2, h, w, generator=g) < 0.4
    monkeypatch.setattr(inference, "_prior_alone_rows", lambda *a: pytest.fail("read over the slots"))
    with torch.no_grad():
        completed, _ = inference.complete_tensors(model, image, label, missing)
    assert torch.equal(completed[~missing], label[~missing])


def test_a_correction_that_is_not_zero_runs_the_trunk():
    cfg = small_config(label_prior=True)
    model = build(cfg)
    with torch.no_grad():
        assert not model.prior_alone()
        model.head.weight.zero_()
        model.head.bias.zero_()
        assert model.prior_alone()
        model.head.bias[3] = 1e-30
        assert not model.prior_alone()
    assert not build(small_config(label_prior=False)).prior_alone()  # no prior: the trunk is all there is
