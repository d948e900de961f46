"""The class-agnostic model's slot mapping (torch_label_mae.slots): any ids in = the same ids out, renaming
the classes commutes with completion, and a hidden pixel only ever gets a class its visible label carries."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synth import TINY_MODEL

from torch_label_mae import LabelCompleter
from torch_label_mae.config import LMAEConfig
from torch_label_mae.model import ABSENT_SLOT, LMAE
from torch_label_mae.slots import from_slots, ids_by_count, present_slots, random_slots, to_slots

SLOTS = 6


def agnostic(prior: str | None = "nearest", slots: int = SLOTS, seed: int = 0) -> LabelCompleter:
    torch.manual_seed(seed)
    prior_cfg = None if prior is None else {"kind": prior}
    cfg = LMAEConfig.from_dict({**TINY_MODEL, "num_classes": slots, "class_agnostic": True, "prior": prior_cfg})
    c = LabelCompleter(cfg).eval()
    with torch.no_grad():  # a head that is not zero: the model's own output counts, not only the prior's
        c.model.head.weight.normal_(0, 0.5)
    return c


def region_label(rng: np.random.Generator, h: int, w: int, ids: list[int]) -> np.ndarray:
    """Blocky regions (4 px cells) carrying ``ids``."""
    cells = rng.integers(0, len(ids), (h // 4 + 1, w // 4 + 1))
    return np.asarray(ids, dtype=np.int64)[np.kron(cells, np.ones((4, 4), dtype=np.int64))[:h, :w]]


def holes(rng: np.random.Generator, h: int, w: int, share: float) -> np.ndarray:
    return np.kron(rng.random((h // 8 + 1, w // 8 + 1)) < share, np.ones((8, 8), dtype=bool))[:h, :w]


ids_st = st.lists(st.integers(0, 254), min_size=1, max_size=SLOTS, unique=True)
# 16-bit and int64 labels: any id but the missing index 255 (a class-agnostic model takes ids above 255)
wide_ids_st = st.lists(st.integers(0, 65535).filter(lambda i: i != 255), min_size=1, max_size=SLOTS, unique=True)
label_st = st.one_of(
    st.tuples(ids_st, st.just(np.uint8)), st.tuples(wide_ids_st, st.sampled_from([np.uint16, np.int64]))
)


@settings(max_examples=40, deadline=None)
@given(ids=ids_st, seed=st.integers(0, 2**16))
def test_to_slots_and_back_is_the_identity_on_known_pixels(ids, seed):
    rng = np.random.default_rng(seed)
    label = torch.from_numpy(region_label(rng, 20, 24, ids))
    known = torch.from_numpy(rng.random((20, 24)) < 0.7)
    slots, table = to_slots(label[None], known[None], SLOTS, 255)
    assert bool((slots[0][~known] == 255).all())
    back = from_slots(slots.clamp(0, SLOTS - 1), table)[0]
    assert torch.equal(back[known], label[known])
    # the slots held are exactly those of the known ids, most frequent first
    assert int((table[0] >= 0).sum()) == len(label[known].unique())
    assert torch.equal(present_slots(slots, SLOTS)[0], table[0] >= 0)


@settings(max_examples=30, deadline=None)
@given(ids=ids_st, seed=st.integers(0, 2**16), perm_seed=st.integers(0, 2**16))
def test_slot_order_depends_on_the_regions_not_on_the_id_values(ids, seed, perm_seed):
    rng = np.random.default_rng(seed)
    label = torch.from_numpy(region_label(rng, 16, 16, ids))
    known = torch.ones_like(label, dtype=torch.bool)
    renamed = random.Random(perm_seed).sample(range(255), len(ids))
    lut = torch.full((256,), -1, dtype=torch.long)
    lut[torch.tensor(ids)] = torch.tensor(renamed)
    a, b = ids_by_count(label, known), ids_by_count(lut[label], known)
    assert torch.equal(lut[a], b)


@pytest.fixture(scope="module")
def completer():
    return agnostic()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids_dtype=label_st, seed=st.integers(0, 2**16), share=st.floats(0.1, 0.8))
def test_any_ids_in_same_ids_out_and_only_visible_classes_fill(completer, ids_dtype, seed, share):
    ids, dtype = ids_dtype
    rng = np.random.default_rng(seed)
    label = region_label(rng, 40, 48, ids).astype(dtype)
    image = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    miss = holes(rng, 40, 48, share)
    label[miss] = 255
    out = completer.complete(image, label)
    assert out.dtype == label.dtype and out.shape == label.shape
    assert np.array_equal(out[~miss], label[~miss])  # pixels not missing never change
    visible = set(np.unique(label[~miss]).tolist())
    if visible:
        assert set(np.unique(out[miss]).tolist()) <= visible
    else:  # nothing to copy from: the holes stay holes
        assert (out[miss] == 255).all()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids_dtype=label_st, seed=st.integers(0, 2**16), perm_seed=st.integers(0, 2**16))
def test_renaming_the_classes_commutes_with_completion(completer, ids_dtype, seed, perm_seed):
    ids, dtype = ids_dtype
    rng = np.random.default_rng(seed)
    label = region_label(rng, 32, 32, ids).astype(dtype)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    label[holes(rng, 32, 32, 0.5)] = 255
    top = 256 if dtype == np.uint8 else 65536
    lut = np.arange(top, dtype=dtype)  # 255, the holes, stays
    lut[ids] = random.Random(perm_seed).sample([i for i in range(top) if i != 255], len(ids))
    assert np.array_equal(completer.complete(image, lut[label]), lut[completer.complete(image, label)])


def test_a_class_specific_model_is_not_renaming_invariant_so_the_test_can_fail():
    """The commuting property is the slots' doing: the same check on a class-specific model fails."""
    torch.manual_seed(0)
    cfg = LMAEConfig.from_dict({**TINY_MODEL, "num_classes": 8, "prior": None})
    c = LabelCompleter(cfg).eval()
    with torch.no_grad():
        c.model.head.weight.normal_(0, 0.5)
    rng = np.random.default_rng(0)
    label = region_label(rng, 32, 32, [1, 2, 3]).astype(np.uint8)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    label[holes(rng, 32, 32, 0.5)] = 255
    lut = np.arange(256, dtype=np.uint8)
    lut[[1, 2, 3]] = [5, 6, 7]
    assert not np.array_equal(c.complete(image, lut[label]), lut[c.complete(image, label)])


def test_more_classes_than_slots_keeps_the_largest_and_never_changes_visible_pixels():
    c = agnostic(slots=3)
    label = np.zeros((32, 32), dtype=np.uint8)
    label[:, 16:] = 9  # the two largest classes: 0 and 9
    label[:4, :4], label[-4:, -4:], label[:4, -4:] = 100, 101, 102  # three small ones: only one fits
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    label[8:24, 8:24] = 255
    with pytest.warns(UserWarning, match=r"labels\[0\] carries 5 classes, more than .* 3 slots") as caught:
        out = c.complete(image, label)
    assert [w.filename for w in caught] == [__file__]  # told at the caller's line, not inside the library
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c.complete(image, np.where(label == 255, 0, label).astype(np.uint8))  # no hole: nothing to warn of
    known = label != 255
    assert np.array_equal(out[known], label[known])
    kept = {0, 9, 100}  # by count, then raster order: 100 is met first among the small ones
    assert set(np.unique(out[~known]).tolist()) <= kept


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(missing=st.integers(0, 254), void=st.booleans(), seed=st.integers(0, 2**16))
def test_a_label_with_no_known_pixel_comes_back_as_it_is(completer, missing, void, seed):
    """Nothing to fill from: the holes keep their own value (not the model's unknown marker 255), void
    pixels stay void, confidence 0 on the holes, and the warning says so."""
    rng = np.random.default_rng(seed)
    label = np.full((17, 23), missing, np.uint8)
    if void:
        label[rng.random((17, 23)) < 0.3] = 255
    with pytest.warns(UserWarning, match=r"labels\[0\] has no known pixel: .* left as they are"):
        out, conf = completer.complete(
            np.zeros((17, 23, 3), np.uint8), label, missing_index=missing, void_index=255 if void else None,
            return_confidence=True,
        )  # fmt: skip
    assert np.array_equal(out, label)
    assert (conf[label == missing] == 0).all() and (conf[label != missing] == 1).all()


def test_absent_slots_get_the_absent_logit_in_both_forward_paths():
    c = agnostic(prior="nearest")
    model: LMAE = c.model
    label = torch.full((2, 32, 32), 255, dtype=torch.long)
    label[0, :, :16], label[0, :, 16:] = 0, 4
    label[1, :16] = 2
    hidden = torch.zeros(2, 16, dtype=torch.bool)
    hidden[:, 5] = True
    image = torch.rand(2, 3, 32, 32)
    known = label.clone()
    known[:, 8:16, 8:16] = 255  # patch 5 of the 4 x 4 grid
    with torch.no_grad():
        full = model(image, known, hidden)  # [B, N, H, W]
        rows = model(image, known, hidden, hidden_only=True)  # [M, p*p, N]
    assert bool((full[0, [1, 2, 3, 5]] == ABSENT_SLOT).all()) and bool((full[0, [0, 4]] > ABSENT_SLOT).all())
    assert bool((full[1, [0, 1, 3, 4, 5]] == ABSENT_SLOT).all())
    assert bool((rows[0, :, [1, 2, 3, 5]] == ABSENT_SLOT).all()) and bool((rows[1, :, 2] > ABSENT_SLOT).all())


@settings(max_examples=30, deadline=None)
@given(ids=ids_st, seed=st.integers(0, 2**16))
def test_training_slots_are_random_distinct_and_cover_every_class(ids, seed):
    rng = np.random.default_rng(seed)
    label = torch.from_numpy(region_label(rng, 16, 20, ids))
    valid = torch.from_numpy(rng.random((16, 20)) < 0.9)
    slots = random_slots(label, valid, SLOTS, 255, random.Random(seed))
    assert bool((slots[~valid] == 255).all())
    # one slot per class, one class per slot
    pairs = {(int(a), int(b)) for a, b in zip(label[valid], slots[valid], strict=True)}
    assert len({a for a, _ in pairs}) == len(pairs) == len({b for _, b in pairs})


def test_training_slots_vary_from_draw_to_draw():
    label = torch.arange(4).repeat_interleave(4).view(4, 4)
    draws = {tuple(random_slots(label, label >= 0, 32, 255, random.Random(s)).flatten().tolist()) for s in range(8)}
    assert len(draws) > 1


def test_class_agnostic_config_refuses_class_names_and_background():
    with pytest.raises(ValueError, match="class_agnostic"):
        LMAEConfig.from_dict({**TINY_MODEL, "num_classes": 4, "class_agnostic": True, "class_names": list("abcd")})
    with pytest.raises(ValueError, match="class_agnostic"):
        LMAEConfig.from_dict({**TINY_MODEL, "num_classes": 4, "class_agnostic": True, "background_index": 0})
    with pytest.raises(ValueError, match="class_agnostic"):
        LMAEConfig.from_dict({**TINY_MODEL, "class_agnostic": 1})


def test_random_walk_prior_completer_keeps_the_same_guarantees():
    c = agnostic(prior="random_walk")
    rng = np.random.default_rng(3)
    label = region_label(rng, 40, 40, [7, 200, 31]).astype(np.uint8)
    image = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    miss = holes(rng, 40, 40, 0.4)
    label[miss] = 255
    out = c.complete(image, label)
    assert np.array_equal(out[~miss], label[~miss])
    assert set(np.unique(out[miss]).tolist()) <= set(np.unique(label[~miss]).tolist())


def test_audit_with_a_class_agnostic_model_scores_and_repairs_in_the_label_s_own_ids():
    c = agnostic(prior="nearest")
    rng = np.random.default_rng(5)
    label = region_label(rng, 32, 32, [17, 230, 4]).astype(np.uint8)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    before = label.copy()
    res = c.audit(image, label, threshold=0.5)
    assert np.array_equal(label, before)  # the input is untouched
    assert res.score.shape == label.shape and res.score.min() >= 0 and res.score.max() <= 1
    assert set(np.unique(res.predicted).tolist()) <= {17, 230, 4}
    changed = res.repaired != label
    assert not (changed & ~res.flagged).any()  # repair changes flagged pixels only
    assert set(np.unique(res.repaired).tolist()) <= {17, 230, 4}
