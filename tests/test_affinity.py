"""Learned edge weights of the random-walk prior (affinity.py): they start at scikit-image's weights,
gradients reach them through the walk, and a model that has them saves, loads and completes."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from synth import TINY_MODEL, make_dataset

from torch_label_mae import LabelCompleter
from torch_label_mae.affinity import EdgeAffinity, train_affinity, walk_loss
from torch_label_mae.completer import save_hub_files
from torch_label_mae.model import LMAE, LMAEConfig
from torch_label_mae.propagation import _relax, edge_weights, random_walk_probabilities, relax

RW_MODEL = {**TINY_MODEL, "num_classes": 4, "label_prior": True, "prior_kind": "random_walk", "prior_sweeps": 5}


def scene(seed: int = 0, b: int = 2, h: int = 12, w: int = 16, n: int = 3):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(b, 3, h, w, generator=g)
    label = torch.randint(0, n, (b, h, w), generator=g)
    known = torch.rand(b, h, w, generator=g) < 0.3
    known[:, 0, 0] = True
    return image, label, known


def perturb(aff: EdgeAffinity, seed: int = 1) -> EdgeAffinity:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in aff.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return aff


def test_starts_at_scikit_image_weights():
    image, _, _ = scene()
    wx, wy = EdgeAffinity(beta=700.0)(image)
    ex, ey = edge_weights(image, 700.0)
    torch.testing.assert_close(wx, ex)
    torch.testing.assert_close(wy, ey)


@given(st.integers(0, 2**31 - 1), st.integers(2, 12), st.integers(2, 12))
def test_weights_are_positive_at_most_one_and_uint8_agrees(seed, h, w):
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (1, 3, h, w), generator=g, dtype=torch.uint8)
    aff = perturb(EdgeAffinity(2000.0, dim=4), seed)
    wx, wy = aff(image)
    assert wx.shape == (1, 1, h, w - 1) and wy.shape == (1, 1, h - 1, w)
    for t in (wx, wy):
        assert bool((t > 0).all()) and bool((t <= 1 + 1e-6).all())
    fx, fy = aff(image.float() / 255)
    torch.testing.assert_close((wx, wy), (fx, fy))


def test_weights_stay_float32_under_autocast():
    image, _, _ = scene()
    aff = perturb(EdgeAffinity(2000.0, dim=4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        wx, wy = aff(image)
    assert wx.dtype == wy.dtype == torch.float32
    torch.testing.assert_close((wx, wy), aff(image))


def test_differentiable_relax_matches_the_in_place_one():
    image, label, known = scene()
    wx, wy = edge_weights(image, 2000.0)
    p0 = torch.rand(2, 3, 12, 16)
    free = (~known).unsqueeze(1).float()
    fast = _relax(p0.clone(), free, (wx, wy), 7, 1.9)
    torch.testing.assert_close(relax(p0, free, (wx, wy), 7), fast, atol=1e-5, rtol=1e-5)


def test_given_weights_replace_the_colour_ones():
    image, label, known = scene()
    weights = perturb(EdgeAffinity(2000.0, dim=4))(image)
    own, _ = random_walk_probabilities(image, label, known, 3, sweeps=10)
    given_w, _ = random_walk_probabilities(image, label, known, 3, sweeps=10, weights=weights)
    same, _ = random_walk_probabilities(image, label, known, 3, sweeps=10, weights=edge_weights(image, 2000.0))
    torch.testing.assert_close(same, own)
    assert not torch.allclose(given_w, own)
    assert not given_w.requires_grad, "only differentiable=True records a graph"


def test_gradients_reach_every_affinity_parameter():
    image, label, known = scene()
    aff = perturb(EdgeAffinity(2000.0, dim=4))
    loss, count = walk_loss(aff, image, label, known, num_classes=3, sweeps=5)
    assert count > 0 and torch.isfinite(loss)
    loss.backward()
    for name, p in aff.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), f"no gradient reaches {name}"


def test_one_step_lowers_the_walk_loss():
    image, label, known = scene(b=4, h=16, w=16)
    image = image * 0.2 + (label.unsqueeze(1) == 1).float() * 0.6  # colour partly follows the class
    aff = EdgeAffinity(2000.0, dim=8)
    opt = torch.optim.SGD(aff.parameters(), lr=0.5)
    losses = []
    for _ in range(2):
        loss, n = walk_loss(aff, image, label, known, num_classes=3, sweeps=5)
        opt.zero_grad()
        (loss / n).backward()
        opt.step()
        losses.append(float(loss.detach()) / n)
    assert losses[1] < losses[0]


@pytest.mark.parametrize(
    "override",
    [dict(prior_affinity_dim=-1), dict(prior_affinity_dim=8, prior_kind="nearest"), dict(prior_affinity_dim=1.5)],
)
def test_config_rejects_bad_affinity_settings(override):
    with pytest.raises(ValueError, match="LMAEConfig.prior_affinity_dim="):
        LMAEConfig(**{**RW_MODEL, **override})


def test_model_uses_its_learned_weights_and_round_trips(tmp_path):
    cfg = LMAEConfig(**RW_MODEL, prior_affinity_dim=4)
    model = LMAE(cfg).eval()
    image = torch.rand(2, 3, 32, 32)
    label = torch.randint(0, 4, (2, 32, 32))
    label[:, 8:24, 8:24] = 255
    at_init = model.label_prior(label, image=image).prob
    plain = LMAE(LMAEConfig(**RW_MODEL)).label_prior(label, image=image).prob
    torch.testing.assert_close(at_init, plain)  # zero output layers: scikit-image's weights
    perturb(model.affinity)
    learned = model.label_prior(label, image=image).prob
    assert not torch.allclose(learned, plain)
    save_hub_files(model, tmp_path / "m")
    back = LabelCompleter.from_folder(tmp_path / "m", device="cpu", precision="float32")
    assert back.config.prior_affinity_dim == 4
    torch.testing.assert_close(back.model.label_prior(label, image=image).prob, learned)


def test_train_affinity_writes_a_model_and_resumes(tmp_path):
    data = make_dataset(tmp_path / "data", splits=(("train", 4),), num_classes=4)
    save_hub_files(LMAE(LMAEConfig(**RW_MODEL)), tmp_path / "init")
    out = tmp_path / "out"
    kw = dict(epochs=1, sweeps=3, crop=16, batch_size=2, dim=4)
    rec = train_affinity(str(tmp_path / "init"), str(data), str(out), **kw)
    assert rec["epoch"] == 1 and rec["loss"] > 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["prior_affinity_dim"] == 4
    first = LabelCompleter.from_folder(out, device="cpu")
    init = LabelCompleter.from_folder(tmp_path / "init", device="cpu")
    for k, v in init.model.state_dict().items():  # the rest of the model is frozen
        torch.testing.assert_close(first.model.state_dict()[k], v, msg=f"{k} changed")
    rec = train_affinity(str(tmp_path / "init"), str(data), str(out), resume=True, **{**kw, "epochs": 2})
    assert rec["epoch"] == 2
    assert len((out / "log.jsonl").read_text().splitlines()) == 2


def test_train_affinity_refuses_a_nearest_fill_model(tmp_path):
    data = make_dataset(tmp_path / "data", splits=(("train", 2),), num_classes=4)
    save_hub_files(LMAE(LMAEConfig(**{**RW_MODEL, "prior_kind": "nearest"})), tmp_path / "init")
    with pytest.raises(ValueError, match="prior_kind='random_walk'"):
        train_affinity(str(tmp_path / "init"), str(data), str(tmp_path / "out"), epochs=1, crop=16)


def test_cli_train_affinity(tmp_path, capsys):
    from torch_label_mae.cli import main

    data = make_dataset(tmp_path / "data", splits=(("train", 2),), num_classes=4)
    save_hub_files(LMAE(LMAEConfig(**RW_MODEL)), tmp_path / "init")
    args = ["train-affinity", "--init", str(tmp_path / "init"), "--data", str(data), "--out", str(tmp_path / "out")]
    assert main([*args, "--epochs", "1", "--sweeps", "2", "--crop", "16", "--batch-size", "2", "--dim", "4"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epoch"] == 1
    assert main([*args, "--crop", "20"]) == 2  # not a multiple of the patch size: a clear error, exit code 2
    assert "crop must be a multiple of patch_size 8" in capsys.readouterr().err
