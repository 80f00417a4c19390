"""The defaults against Detectron2's own config dumps in the parity kit (../shared/parity).

Each parity spec holds ``config_yaml``: Detectron2's dump of get_cfg() + the zoo file +
the spec's overrides. Matching it key by key, with types, checks both our defaults and our
copies of the zoo files.
"""

import json
import os
from pathlib import Path

import pytest
import yaml

from heron.config.config import CfgNode, get_cfg
from heron.config.defaults import _C, HERON_EXTENSION_KEYS
from heron.model_zoo import get_config_file

PARITY_DIR = Path(
    os.environ.get("HERON_PARITY_DIR", Path(__file__).resolve().parents[2].parent / "shared/parity")
)
SPEC_NAMES = sorted(p.stem for p in (PARITY_DIR / "specs").glob("*.json"))


def load_spec(name):
    return json.loads((PARITY_DIR / "specs" / f"{name}.json").read_text())


def flatten(tree, prefix=""):
    """{dotted key: leaf}, with tuples turned into lists at every depth."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = as_lists(value)
    return out


def as_lists(value):
    if isinstance(value, (list, tuple)):
        return [as_lists(v) for v in value]
    return value


def types_compatible(default, value):
    """The merge rules: same type, list <-> tuple, None either way, int where float."""
    if type(default) is type(value) or default is None or value is None:
        return True
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        return True
    return type(default) is float and type(value) is int


def merged_like_spec(spec):
    cfg = get_cfg()
    cfg.merge_from_file(get_config_file(spec["config_file"]))
    cfg.merge_from_list(spec["overrides"])
    cfg.MODEL.WEIGHTS = ""
    return cfg


def test_parity_kit_has_specs():
    if not SPEC_NAMES:
        pytest.skip(f"parity kit not found at {PARITY_DIR} (set HERON_PARITY_DIR)")
    assert len(SPEC_NAMES) == 15


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_every_key_of_the_spec_exists_in_the_defaults_with_a_compatible_type(name):
    reference = flatten(yaml.safe_load(load_spec(name)["config_yaml"]))
    defaults = flatten(get_cfg())
    missing = sorted(set(reference) - set(defaults))
    assert not missing, f"keys of {name} missing from the defaults: {missing}"
    bad = {
        key: (type(defaults[key]).__name__, type(value).__name__)
        for key, value in reference.items()
        if not types_compatible(defaults[key], value)
    }
    assert not bad, f"incompatible types (default, spec): {bad}"


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_defaults_plus_zoo_file_plus_overrides_equal_detectron2_dump(name):
    spec = load_spec(name)
    ours = flatten(merged_like_spec(spec))
    reference = flatten(yaml.safe_load(spec["config_yaml"]))
    assert sorted(set(ours) - HERON_EXTENSION_KEYS) == sorted(reference)
    diffs = {
        key: (ours[key], reference[key])
        for key in reference
        # type() as well: 1 == 1.0 == True in Python, but not in a config
        if ours[key] != reference[key] or type(ours[key]) is not type(reference[key])
    }
    assert not diffs, f"{name}: (ours, Detectron2) differ at {diffs}"


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_dump_of_each_spec_config_round_trips(name):
    cfg = merged_like_spec(load_spec(name))
    loaded = get_cfg()
    loaded.merge_from_other_cfg(yaml.safe_load(cfg.dump()))
    assert loaded == cfg


def test_defaults_are_a_complete_tree_of_valid_values():
    # Top-level groups of Detectron2's defaults, and a few values no parity spec can confirm
    # because every zoo config overrides them (from Detectron2's config/defaults.py).
    assert set(_C) == {
        "VERSION", "MODEL", "INPUT", "DATASETS", "DATALOADER", "SOLVER", "TEST",
        "OUTPUT_DIR", "SEED", "CUDNN_BENCHMARK", "FLOAT32_PRECISION", "VIS_PERIOD", "GLOBAL",
        "MODEL_EMA",  # Heron extension
    }  # fmt: skip
    assert set(flatten(_C)) >= HERON_EXTENSION_KEYS
    assert _C.VERSION == 2
    assert _C.SOLVER.BASE_LR == 0.001 and _C.SOLVER.MAX_ITER == 40000
    assert _C.SOLVER.STEPS == (30000,) and _C.INPUT.MIN_SIZE_TRAIN == (800,)
    assert _C.DATASETS.TRAIN == () and _C.DATASETS.TEST == ()
    assert _C.MODEL.RESNETS.DEPTH == 50 and _C.MODEL.MASK_ON is False
    assert _C.MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS == (512,) * 8
    assert _C.SOLVER.WARMUP_FACTOR == 1.0 / 1000
    assert _C.dump()  # every value is dumpable


def test_tuple_defaults_stay_tuples_after_a_zoo_merge():
    cfg = get_cfg()
    cfg.merge_from_file(get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    assert cfg.DATASETS.TRAIN == ("coco_2017_train",)
    assert cfg.SOLVER.STEPS == (60000, 80000)
    assert isinstance(cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS, tuple)


def test_get_cfg_returns_a_fresh_unfrozen_copy():
    a, b = get_cfg(), get_cfg()
    assert a == b == _C and a is not _C and isinstance(a, CfgNode)
    a.MODEL.PIXEL_MEAN[0] = 0.0
    assert b.MODEL.PIXEL_MEAN[0] == 103.530 and _C.MODEL.PIXEL_MEAN[0] == 103.530
    assert not a.is_frozen()
