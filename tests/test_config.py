"""The config: one versioned source of truth. Version 1 configs (flat, no ``version``) keep their
meaning; every shipped config in ``hub/`` is written out in full as version 2."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from torch_label_mae.config import CONFIG_VERSION, LMAEConfig, NearestPrior, RandomWalkPrior

ROOT = Path(__file__).resolve().parents[1]
OLD = Path(__file__).resolve().parent / "fixtures" / "hub_v1"  # hub/*/config.json as shipped before version 2
MODELS = sorted(p.name for p in (ROOT / "hub").iterdir() if (p / "config.json").is_file())
V1_MODELS = ["camvid-m0.5", "camvid-rw-m0.5", "ccp-m0.5", "ccp-rw-m0.5"]  # the models of version 1's days


def test_every_hub_model_has_its_old_config_kept():
    assert set(V1_MODELS) <= set(MODELS) and sorted(p.stem for p in OLD.glob("*.json")) == V1_MODELS


@pytest.mark.parametrize("name", V1_MODELS)
def test_old_flat_config_builds_the_same_config_as_the_new_file(name):
    old = json.loads((OLD / f"{name}.json").read_text())
    assert "version" not in old and "label_prior" in old
    new = LMAEConfig.from_json(ROOT / "hub" / name / "config.json")
    assert LMAEConfig.from_dict(old) == dataclasses.replace(new, audit_threshold=None)  # chosen after version 1


@pytest.mark.parametrize("name", MODELS)
def test_every_hub_config_is_written_out_in_full_as_the_current_version(name):
    new_file = ROOT / "hub" / name / "config.json"
    new = LMAEConfig.from_json(new_file)
    assert new.version == CONFIG_VERSION and new.prior is not None
    # written out in full: exactly what to_dict gives, every option of the prior section present (a random
    # walk's "combiner" only when it has one, its "combiner_features" only when not the first 12: without,
    # the section stays what releases before it read)
    assert json.loads(new_file.read_text()) == new.to_dict()
    unused = set() if getattr(new.prior, "combiner", 1) else {"combiner", "combiner_features"}
    if getattr(new.prior, "combiner_features", None) == 12:
        unused.add("combiner_features")
    assert set(new.to_dict()["prior"]) == {"kind", *(f for f in type(new.prior).__dataclass_fields__)} - unused


def test_a_walk_without_a_combiner_writes_no_combiner_key_and_reads_back():
    from torch_label_mae.config import RandomWalkPrior

    assert "combiner" not in RandomWalkPrior().to_dict()
    assert RandomWalkPrior(combiner=16).to_dict()["combiner"] == 16
    for prior in (RandomWalkPrior(), RandomWalkPrior(combiner=16)):
        cfg = LMAEConfig(num_classes=3, prior=prior)
        assert LMAEConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_camvid_walk_config_that_omitted_keys_takes_the_version_1_defaults():
    old = json.loads((OLD / "camvid-rw-m0.5.json").read_text())
    assert "prior_solver" not in old
    assert LMAEConfig.from_dict(old).prior == RandomWalkPrior(beta=2000.0, sweeps=100, solver="sor", connectivity=4)


def test_flat_keys_work_as_overrides_on_a_version_2_config():
    base = LMAEConfig.tiny(num_classes=4).to_dict()
    assert base["prior"] is None and base["version"] == CONFIG_VERSION
    cfg = LMAEConfig.from_dict({**base, "label_prior": True, "prior_kind": "random_walk", "prior_sweeps": 5})
    assert cfg.prior == RandomWalkPrior(sweeps=5)
    # a flat key on a config with a prior section changes that option only
    cfg2 = LMAEConfig.from_dict({**cfg.to_dict(), "prior_solver": "direct"})
    assert cfg2.prior == RandomWalkPrior(sweeps=5, solver="direct")
    assert LMAEConfig.from_dict({**cfg.to_dict(), "label_prior": False}).prior is None
    assert LMAEConfig.tiny(label_prior=True).prior == NearestPrior()
    assert LMAEConfig.tiny(prior=RandomWalkPrior(sweeps=3)).prior.sweeps == 3


def test_only_fields_can_be_set_and_a_flat_prior_key_says_where_its_option_is():
    cfg = LMAEConfig.tiny(prior=RandomWalkPrior(connectivity=16))
    with pytest.raises(
        AttributeError, match=r"no field 'prior_connectivity'.*dataclasses.replace\(config.prior, connectivity="
    ):
        cfg.prior_connectivity = 8  # nothing would read it: refused, not set
    with pytest.raises(AttributeError, match=r"no field 'mask_ratios'$"):
        cfg.mask_ratios = 0.5
    assert cfg.prior.connectivity == 16 and not hasattr(cfg, "prior_connectivity")
    cfg.prior = dataclasses.replace(cfg.prior, connectivity=8)  # the way to change it
    cfg.mask_ratio = 0.25
    assert cfg.prior.connectivity == 8 and cfg.mask_ratio == 0.25


def test_a_nearest_prior_drops_the_walk_options_but_still_checks_them():
    assert LMAEConfig.tiny(label_prior=True, prior_beta=500.0).prior == NearestPrior()
    with pytest.raises(ValueError, match=r"LMAEConfig\.prior\.beta=0"):
        LMAEConfig.tiny(label_prior=True, prior_beta=0)


def test_round_trip_and_nested_section_validation():
    cfg = LMAEConfig.tiny(prior=RandomWalkPrior(scale=2.0, connectivity=16, color="lab"))
    assert LMAEConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match=r"LMAEConfig\.prior\.connectivity=6"):
        RandomWalkPrior(connectivity=6)
    with pytest.raises(ValueError, match=r"LMAEConfig\.prior\.kind='geodesic'"):
        LMAEConfig.from_dict({"prior": {"kind": "geodesic"}})
    with pytest.raises(ValueError, match=r"unknown keys \['beta'\] in the 'nearest' prior section"):
        LMAEConfig.from_dict({"prior": {"kind": "nearest", "beta": 2.0}})


@pytest.mark.parametrize("version", [0, 3, "2", True, 2.0])
def test_unknown_versions_are_refused(version):
    with pytest.raises(ValueError, match="config version"):
        LMAEConfig.from_dict({"version": version})


@pytest.mark.parametrize(
    "key, value", [("refine_dim", 8), ("refine_kind", "unet"), ("prior_stride", 2), ("prior_affinity_dim", 16)]
)
def test_removed_options_are_refused_by_name_unless_at_their_old_default(key, value):
    old = {**LMAEConfig.tiny().to_dict(), "refine_dim": 0, "refine_kind": "local", "prior_stride": 1}
    del old["version"]
    assert LMAEConfig.from_dict({**old, "prior_affinity_dim": 0}) == LMAEConfig.tiny()
    with pytest.raises(ValueError, match=rf"config option {key} was removed"):
        LMAEConfig.from_dict({**old, key: value})
