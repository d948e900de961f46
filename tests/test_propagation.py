"""Random-walk propagation (propagation.py): checked against an exact dense solve of the random walker's
Dirichlet problem, against scikit-image where it is installed, and by property."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from synth import TINY_MODEL

from torch_label_mae.config import LMAEConfig, RandomWalkPrior
from torch_label_mae.model import LMAE
from torch_label_mae.propagation import (
    OFFSETS,
    edge_weights,
    most_likely_class,
    nearest_fill,
    present_classes,
    random_walk,
    random_walk_probabilities,
    rgb_to_lab,
)
from torch_label_mae.threads import torch_threads

IGNORE = 255


def exact_random_walker(
    image: torch.Tensor, label: torch.Tensor, known: torch.Tensor, beta: float, **graph
) -> torch.Tensor:
    """Probabilities ``[K, H, W]`` (K = sorted known classes) of one sample, by a dense solve of
    ``L_uu x_u = -L_uk x_k`` in float64 (Grady 2006). ``graph``: ``connectivity``, ``color``."""
    h, w = label.shape
    weights = [t[0, 0].double() for t in edge_weights(image[None], beta, **graph)]
    n = h * w
    lap = torch.zeros(n, n, dtype=torch.float64)
    idx = torch.arange(n).view(h, w)
    # pixel (y, x) and its neighbour (y + dy, x + dx)
    for (dy, dx), wt in zip(OFFSETS[: len(weights)], weights, strict=True):
        a = idx[: max(h - dy, 0), min(max(0, -dx), w) : max(w - max(0, dx), 0)]
        b = idx[min(dy, h) :, min(max(0, dx), w) : max(w - max(0, -dx), 0)]
        a, b, wt = a.flatten(), b.flatten(), wt.flatten()
        lap[a, b] -= wt
        lap[b, a] -= wt
        lap[a, a] += wt
        lap[b, b] += wt
    kn = known.flatten()
    classes = sorted(set(label[known].tolist()))
    xk = torch.stack([(label.flatten()[kn] == c).double() for c in classes], 1)  # [Nk, K]
    xu = torch.linalg.solve(lap[~kn][:, ~kn], -lap[~kn][:, kn] @ xk)  # [Nu, K]
    out = torch.zeros(n, len(classes), dtype=torch.float64)
    out[kn], out[~kn] = xk, xu
    return out.T.reshape(len(classes), h, w)


def two_region_scene(h: int = 24, w: int = 32, edge: int = 8):
    """Dark left part (class 0) and bright right part (class 1), the edge at column ``edge``; only the
    first and last columns are known, so nearest fill splits the hole in the middle, not at the edge."""
    image = torch.full((3, h, w), 0.9)
    image[:, :, :edge] = 0.1
    truth = torch.ones(h, w, dtype=torch.int64)
    truth[:, :edge] = 0
    known = torch.zeros(h, w, dtype=torch.bool)
    known[:, 0] = known[:, -1] = True
    label = torch.where(known, truth, torch.full_like(truth, IGNORE))
    return image, label, known, truth


def test_converges_to_the_exact_random_walker():
    g = torch.Generator().manual_seed(3)
    h, w = 10, 12
    image = torch.rand(3, h, w, generator=g)
    truth = torch.randint(0, 3, (h, w), generator=g)
    known = torch.rand(h, w, generator=g) < 0.3
    label = torch.where(known, truth, torch.full_like(truth, IGNORE))
    exact = exact_random_walker(image, label, known, beta=30.0)
    prob, cls = random_walk_probabilities(image[None], label[None], known[None], 3, beta=30.0, sweeps=3000)
    assert cls[0].tolist()[: exact.shape[0]] == sorted(set(truth[known].tolist()))
    torch.testing.assert_close(prob[0, : exact.shape[0]].double(), exact, atol=1e-4, rtol=0)


@given(
    st.integers(1, 10),
    st.integers(1, 10),
    st.integers(1, 4),
    st.sampled_from([4, 8, 16]),
    st.sampled_from(["rgb", "lab"]),
    st.sampled_from([30.0, 300.0, 2000.0]),
    st.integers(0, 99),
)
def test_direct_solver_is_the_exact_random_walker_on_every_graph(h, w, n, connectivity, color, beta, seed):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, h, w, generator=g)
    truth = torch.randint(0, n, (h, w), generator=g)
    known = torch.rand(h, w, generator=g) < 0.3
    known[0, 0] = True
    label = torch.where(known, truth, torch.full_like(truth, IGNORE))
    graph = dict(connectivity=connectivity, color=color)
    exact = exact_random_walker(image, label, known, beta, **graph)
    prob, cls = random_walk_probabilities(image[None], label[None], known[None], n, beta=beta, solver="direct", **graph)
    assert cls[0].tolist()[: exact.shape[0]] == sorted(set(truth[known].tolist()))
    torch.testing.assert_close(prob[0, : exact.shape[0]].double(), exact, atol=1e-5, rtol=0)


@pytest.mark.parametrize("connectivity", [8, 16])
def test_sweeps_converge_to_the_direct_solve_on_larger_neighbourhoods(connectivity):
    """The orderings of the 8- and 16-connected graphs (4 and 9 colours): sweeps reach the exact solution."""
    g = torch.Generator().manual_seed(5)
    image = torch.rand(2, 3, 12, 15, generator=g)
    truth = torch.randint(0, 3, (2, 12, 15), generator=g)
    known = torch.rand(2, 12, 15, generator=g) < 0.25
    known[:, 0, 0] = True
    label = torch.where(known, truth, torch.full_like(truth, IGNORE))
    kw = dict(beta=30.0, connectivity=connectivity, color="lab")  # on noise a larger beta leaves sweeps unconverged
    exact, _ = random_walk_probabilities(image, label, known, 3, solver="direct", **kw)
    swept, _ = random_walk_probabilities(image, label, known, 3, sweeps=2000, **kw)
    torch.testing.assert_close(swept, exact, atol=1e-4, rtol=0)


def test_edges_weigh_their_inverse_length():
    image = torch.zeros(1, 3, 4, 5)  # uniform: every colour step is 0, so every weight is 1 / length
    weights = edge_weights(image, 2000.0, connectivity=16)
    assert len(weights) == 8 and len(edge_weights(image, 2000.0, connectivity=8)) == 4
    for (dy, dx), wt in zip(OFFSETS, weights, strict=True):
        assert wt.shape == (1, 1, 4 - dy, 5 - abs(dx))
        torch.testing.assert_close(wt, torch.full_like(wt, (dy * dy + dx * dx) ** -0.5 + 1e-10))


def test_rgb_to_lab_reference_colours():
    colours = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # one per row
    lab = rgb_to_lab(colours.T.reshape(1, 3, 1, 3))[0, :, 0, :].T  # an image of three pixels in a row
    # white and black; sRGB red is L* 53.24, a* 80.09, b* 67.20 (D65)
    expected = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.5324, 0.8009, 0.6720]])
    torch.testing.assert_close(lab, expected, atol=2e-3, rtol=0)


def test_rgb_to_lab_agrees_with_scikit_image():
    color = pytest.importorskip("skimage.color", reason="scikit-image is a benchmark extra ([bench])")
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ref = color.rgb2lab(image[0].permute(1, 2, 0).double().numpy()).transpose(2, 0, 1) / 100
    torch.testing.assert_close(rgb_to_lab(image)[0].double(), torch.from_numpy(ref), atol=1e-4, rtol=0)


@given(
    seed=st.integers(0, 10_000),
    h=st.integers(3, 12),
    w=st.integers(3, 12),
    graph=st.sampled_from([(4, "rgb"), (16, "lab")]),
    solver=st.sampled_from(["sor", "direct"]),
)
def test_walk_is_float32_inside_autocast(seed, h, w, graph, solver):
    """Completion runs the prior inside bfloat16 autocast (CUDA, AMX CPUs): the walk must not follow it
    (its L*a*b* conversion, a matrix product, changed classes in bfloat16). Same probabilities, bit for bit."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(2, 3, h, w, generator=g)
    label = torch.randint(0, 3, (2, h, w), generator=g)
    known = torch.rand(2, h, w, generator=g) < 0.5
    kw = dict(beta=2000.0, solver=solver, connectivity=graph[0], color=graph[1])
    want, cls = random_walk_probabilities(image, label, known, 3, **kw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, got_cls = random_walk_probabilities(image, label, known, 3, **kw)
    assert got.dtype == torch.float32
    assert torch.equal(got, want) and torch.equal(got_cls, cls)


def test_graph_option_errors():
    image = torch.rand(1, 3, 4, 4)
    with pytest.raises(ValueError, match="connectivity must be one of"):
        edge_weights(image, 2000.0, connectivity=6)
    with pytest.raises(ValueError, match="color must be one of"):
        edge_weights(image, 2000.0, color="hsv")
    with pytest.raises(ValueError, match="connectivity must be one of"):
        edge_weights(image, 2000.0, connectivity=8.0)
    for beta in (-1.0, math.inf, math.nan, "2000"):
        with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
            edge_weights(image, beta)
        with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
            random_walk(image, torch.tensor([[[0, 0, 1, 1]] * 3 + [[0, 255, 255, 1]]]), beta=beta, solver="direct")


def test_direct_solver_reaches_the_solution_that_sweeps_approach():
    image, label, known, truth = two_region_scene(24, 64, edge=40)  # a wide hole: slow for the sweeps
    exact, _ = random_walk_probabilities(image[None], label[None], known[None], 2, solver="direct")
    few, _ = random_walk_probabilities(image[None], label[None], known[None], 2, sweeps=20)
    many, _ = random_walk_probabilities(image[None], label[None], known[None], 2, sweeps=3000)
    assert (exact - many).abs().max() < 1e-3 < (exact - few).abs().max()
    assert (exact.argmax(1)[0] == truth).float().mean() > 0.98


def test_solver_errors():
    image, label, known, _ = two_region_scene()
    with pytest.raises(ValueError, match="solver must be one of"):
        random_walk(image[None], label[None], known[None], num_classes=2, solver="cg")


def test_follows_image_edges_where_nearest_fill_cannot():
    image, label, known, truth = two_region_scene()
    rw = random_walk(image[None], label[None], known[None], num_classes=2, sweeps=300)[0]
    nf = nearest_fill(label[None], known[None])[0]
    assert (rw == truth).float().mean() > 0.98
    assert (nf == truth).float().mean() < 0.8


def test_sweeps_zero_is_nearest_fill():
    image, label, known, _ = two_region_scene()
    rw = random_walk(image[None], label[None], known[None], num_classes=2, sweeps=0)
    assert torch.equal(rw, nearest_fill(label[None], known[None]))


def test_uint8_and_float_images_agree_and_inputs_are_not_modified():
    image, label, known, _ = two_region_scene()
    u8 = (image * 255).round().to(torch.uint8)
    copies = [t.clone() for t in (u8, label, known)]
    a = random_walk(u8[None], label[None], known[None], num_classes=2, sweeps=50)
    b = random_walk(u8[None].float() / 255, label[None], known[None], num_classes=2, sweeps=50)
    assert torch.equal(a, b)
    for t, c in zip((u8, label, known), copies, strict=True):
        assert torch.equal(t, c)


def test_sample_without_known_pixels_is_all_ignore():
    image = torch.rand(2, 3, 8, 8)
    label = torch.full((2, 8, 8), IGNORE)
    label[0, 0, 0] = 1
    out = random_walk(image, label, num_classes=3, sweeps=10)
    assert (out[0] == 1).all() and (out[1] == IGNORE).all()


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
def test_agrees_with_scikit_image_random_walker():
    skimage = pytest.importorskip("skimage.segmentation", reason="scikit-image is a benchmark extra ([bench])")
    g = torch.Generator().manual_seed(0)
    h, w = 32, 32
    image = torch.rand(3, h, w, generator=g) * 0.2
    image[:, :, 12:] += 0.7
    image[:, 20:, :] = image[:, 20:, :].flip(0)
    truth = torch.zeros(h, w, dtype=torch.int64)
    truth[:, 12:] = 1
    truth[20:, :] = 2
    known = torch.rand(h, w, generator=g) < 0.2
    label = torch.where(known, truth, torch.full_like(truth, IGNORE))
    seeds = np.where(known.numpy(), truth.numpy() + 1, 0)
    ref = skimage.random_walker(image.permute(1, 2, 0).double().numpy(), seeds, beta=2000, mode="bf", channel_axis=-1)
    ours = random_walk(image[None], label[None], known[None], num_classes=3, sweeps=500)[0]
    agree = (ours.numpy() == ref - 1)[~known.numpy()].mean()
    assert agree > 0.97, f"agreement with scikit-image {agree:.3f}"


@st.composite
def scenes(draw):
    b = draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 14)), draw(st.integers(1, 14))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(1, 5))
    truth = rng.integers(0, n, (b, h, w))
    known = rng.random((b, h, w)) < draw(st.sampled_from([0.05, 0.3, 0.8]))
    known[:, 0, 0] = True
    label = np.where(known, truth, IGNORE)
    image = rng.random((b, 3, h, w)).astype(np.float32)
    return (torch.from_numpy(image), torch.from_numpy(label.astype(np.int64)), torch.from_numpy(known), n)


@given(scenes(), st.integers(0, 30), st.sampled_from([4, 8, 16]), st.sampled_from(["rgb", "lab"]))
def test_properties(scene, sweeps, connectivity, color):
    image, label, known, n = scene
    graph = dict(sweeps=sweeps, connectivity=connectivity, color=color)
    out = random_walk(image, label, known, num_classes=n, **graph)
    assert out.shape == label.shape and out.dtype == torch.int64
    assert torch.equal(out[known], label[known]), "a known pixel changed"
    for i in range(label.shape[0]):  # every filled pixel takes a class that sample's known pixels have
        assert set(out[i].unique().tolist()) <= set(label[i][known[i]].tolist())
    one_by_one = torch.cat(
        [
            random_walk(image[i : i + 1], label[i : i + 1], known[i : i + 1], num_classes=n, **graph)
            for i in range(label.shape[0])
        ]
    )
    assert torch.equal(out, one_by_one), "batched differs from one by one"


@given(scenes(), st.integers(0, 20))
def test_probabilities_stay_a_distribution(scene, sweeps):
    image, label, known, n = scene
    prob, cls = random_walk_probabilities(image, label, known, n, sweeps=sweeps)
    _, valid = present_classes(label, known, n)
    assert prob.min() >= -1e-5 and prob.max() <= 1 + 1e-5
    torch.testing.assert_close(prob.sum(1), torch.ones_like(prob[:, 0]), atol=1e-4, rtol=0)
    assert (prob * ~valid[:, :, None, None]).abs().max() == 0, "a padding class got probability"


def test_model_with_random_walk_prior():
    cfg = LMAEConfig(**TINY_MODEL, num_classes=3, prior=RandomWalkPrior(sweeps=5))
    model = LMAE(cfg).eval()
    image = torch.rand(2, 3, 32, 32)
    label = torch.randint(0, 3, (2, 32, 32))
    hidden = torch.zeros(2, 16, dtype=torch.bool)
    hidden[:, ::2] = True
    with pytest.raises(ValueError, match="random_walk.*needs the image"):
        model.prior(label)
    prior = model.prior(label, image=image).classes
    assert prior.shape == label.shape
    torch.testing.assert_close(model(image, label, hidden), model(image, label, hidden, prior))


def test_model_with_the_direct_solver_uses_the_exact_walk():
    cfg = LMAEConfig(**TINY_MODEL, num_classes=3, prior=RandomWalkPrior())
    model = LMAE(LMAEConfig.from_dict({**cfg.to_dict(), "prior_solver": "direct"})).eval()  # a flat override
    image, label = torch.rand(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    known = torch.rand(2, 32, 32) < 0.4
    prior = model.prior(label, known, image)
    prob, _ = random_walk_probabilities(image, label, known, 3, solver="direct")
    torch.testing.assert_close(prior.prob, prob)


def test_model_uses_its_graph_options():
    walk = RandomWalkPrior(solver="direct", connectivity=16, color="lab")
    cfg = LMAEConfig(**TINY_MODEL, num_classes=3, prior=walk)
    model = LMAE(LMAEConfig.from_dict(cfg.to_dict())).eval()  # the options survive config.json
    image, label = torch.rand(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    known = torch.rand(2, 32, 32) < 0.4
    prob, _ = random_walk_probabilities(image, label, known, 3, solver="direct", connectivity=16, color="lab")
    torch.testing.assert_close(model.prior(label, known, image).prob, prob)


@pytest.mark.parametrize(
    "override, field",
    [
        (dict(prior_kind="geodesic"), "prior_kind"),
        (dict(prior_beta=0), "prior_beta"),
        (dict(prior_sweeps=-1), "prior_sweeps"),
        (dict(prior_sweeps=2.5), "prior_sweeps"),
        (dict(prior_solver="cg"), "prior_solver"),
        (dict(prior_connectivity=6), "prior_connectivity"),
        (dict(prior_connectivity=16.0), "prior_connectivity"),
        (dict(prior_color="hsv"), "prior_color"),
    ],
)
def test_config_rejects_bad_prior_settings(override, field):
    field = "prior." + field.removeprefix("prior_")
    with pytest.raises(ValueError, match=rf"LMAEConfig\.{field}="):
        LMAEConfig.tiny(**override)


@given(scenes())
def test_direct_solver_properties(scene):
    image, label, known, n = scene
    copies = [t.clone() for t in (image, label, known)]
    out = random_walk(image, label, known, num_classes=n, solver="direct")
    assert out.dtype == torch.int64 and torch.equal(out[known], label[known]), "a known pixel changed"
    one_by_one = [
        random_walk(image[i : i + 1], label[i : i + 1], known[i : i + 1], num_classes=n, solver="direct")
        for i in range(label.shape[0])
    ]
    assert torch.equal(out, torch.cat(one_by_one)), "batched differs from one by one"
    for t, c in zip((image, label, known), copies, strict=True):
        assert torch.equal(t, c), "an input was modified"


@pytest.mark.parametrize("batch", [1, 2, 3])
@pytest.mark.parametrize("inference", [True, False])
def test_exact_walk_on_several_threads_equals_one_thread_in_and_out_of_inference_mode(inference, batch):
    """The exact solves of a batch run on torch's threads (a sample's classes side by side when there are
    fewer samples than threads: at 4 threads, 2 samples solve their classes 2 by 2, on pools of their own);
    the result is the same as on one thread, and the worker threads take the caller's inference mode
    (tensors made in it can be written)."""
    g = torch.Generator().manual_seed(0)
    image = torch.rand(batch, 3, 24, 24, generator=g)
    label = torch.randint(0, 3, (batch, 24, 24), generator=g)
    known = torch.rand(batch, 24, 24, generator=g) < 0.5
    out = []
    for threads in (1, 2, 4):
        with torch_threads(threads), torch.inference_mode(inference):
            out.append(random_walk_probabilities(image, label, known, 3, solver="direct", connectivity=16)[0])
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])


@given(st.integers(1, 3), st.integers(1, 5), st.integers(1, 6), st.integers(1, 6), st.integers(0, 99))
def test_most_likely_class_is_the_first_maximum_as_argmax_takes_it(b, k, h, w, seed):
    """Ties included (probabilities from a few values): the class of the first maximum, as argmax."""
    g = torch.Generator().manual_seed(seed)
    prob = torch.randint(0, 3, (b, k, h, w), generator=g).float() / 2  # many ties
    classes = torch.randperm(200, generator=g)[: b * k].view(b, k)
    known = torch.ones(b, h, w, dtype=torch.bool)
    known[0] = seed % 2 == 0  # half the draws: a sample without a known pixel, all ignore_index
    expected = classes.gather(1, prob.argmax(1).flatten(1)).view(b, h, w)
    expected[0] = expected[0] if seed % 2 == 0 else IGNORE
    assert torch.equal(most_likely_class(prob, classes, known, IGNORE), expected)


@given(st.integers(2, 12), st.integers(2, 12), st.sampled_from([4, 16]), st.integers(0, 99))
def test_exact_walk_without_qdldl_falls_back_to_superlu_with_the_same_solution(h, w, connectivity, seed):
    """Where ``qdldl`` is not installed (a source tree run on the GPU machine's image), SuperLU solves."""
    import torch_label_mae.propagation as propagation

    pytest.importorskip("qdldl", reason="qdldl is not installed here: SuperLU alone solves, nothing to compare")
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, h, w, generator=g)
    label = torch.randint(0, 3, (1, h, w), generator=g)
    known = torch.rand(1, h, w, generator=g) < 0.4
    known[0, 0, 0] = True
    kw = dict(solver="direct", connectivity=connectivity, color="lab", beta=2000.0)
    ldl, _ = random_walk_probabilities(image, label, known, 3, **kw)
    saved = propagation.qdldl
    propagation.qdldl = None
    try:
        lu, _ = random_walk_probabilities(image, label, known, 3, **kw)
    finally:
        propagation.qdldl = saved
    torch.testing.assert_close(lu, ldl, atol=1e-6, rtol=0)
