import copy
import pickle
import textwrap

import fsspec
import pytest
import yaml

from heron.config import config as config_module
from heron.config.compat import downgrade_config, guess_version, upgrade_config
from heron.config.config import CfgNode, get_cfg, set_global_cfg


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


# ----------------------------------------------------------------------------- basics


def test_nested_dicts_become_nodes_with_attribute_access():
    cfg = CfgNode({"A": {"B": {"C": 1}}, "D": [1, 2]})
    assert isinstance(cfg.A, CfgNode) and isinstance(cfg.A.B, CfgNode)
    assert cfg.A.B.C == 1 and cfg["A"]["B"]["C"] == 1
    cfg.A.B.C = 2
    assert cfg["A"]["B"]["C"] == 2
    cfg.E = {"F": 3}
    assert isinstance(cfg.E, CfgNode) and cfg.E.F == 3


def test_missing_attribute_raises_attribute_error_with_suggestion():
    cfg = get_cfg()
    with pytest.raises(AttributeError, match=r"'MODLE'.*did you mean MODEL"):
        _ = cfg.MODLE
    assert not hasattr(cfg, "NOPE")


def test_invalid_value_type_or_key_is_rejected_at_construction():
    with pytest.raises(TypeError, match=r"A\.B has a value of type set"):
        CfgNode({"A": {"B": {1, 2}}})
    with pytest.raises(TypeError, match="keys must be strings"):
        CfgNode({"A": {1: 2}})


def test_internal_state_cannot_be_set_as_attribute():
    with pytest.raises(AttributeError, match="internal"):
        CfgNode().__immutable__ = True


def test_computed_keys_can_be_set_once_even_when_frozen():
    cfg = get_cfg()
    cfg.freeze()
    cfg.COMPUTED_SIZE = 3
    cfg.COMPUTED_SIZE = 3  # same value: accepted
    with pytest.raises(KeyError, match="COMPUTED_SIZE"):
        cfg.COMPUTED_SIZE = 4


# ----------------------------------------------------------------------------- freeze


def test_frozen_config_refuses_every_kind_of_change_naming_the_key():
    cfg = get_cfg()
    cfg.freeze()
    assert cfg.is_frozen() and cfg.MODEL.RPN.is_frozen()
    with pytest.raises(AttributeError, match=r"'SEED'.*frozen"):
        cfg.SEED = 3
    with pytest.raises(AttributeError, match=r"'NMS_THRESH'.*frozen"):
        cfg.MODEL.RPN.NMS_THRESH = 0.5
    with pytest.raises(AttributeError, match="'DEVICE'"):
        cfg.MODEL["DEVICE"] = "cpu"
    with pytest.raises(AttributeError, match="frozen"):
        del cfg.MODEL.DEVICE
    with pytest.raises(AttributeError, match="frozen"):
        cfg.merge_from_list(["SEED", "3"])
    with pytest.raises(AttributeError, match="frozen"):
        cfg.merge_from_other_cfg({"SEED": 3})
    with pytest.raises(AttributeError, match="frozen"):
        cfg.update({"SEED": 3})
    assert cfg.SEED == -1 and cfg.MODEL.RPN.NMS_THRESH == 0.7


def test_defrost_makes_the_config_mutable_again():
    cfg = get_cfg()
    cfg.freeze()
    cfg.defrost()
    assert not cfg.is_frozen() and not cfg.MODEL.is_frozen()
    cfg.MODEL.DEVICE = "cpu"
    assert cfg.MODEL.DEVICE == "cpu"


# ----------------------------------------------------------------------------- copies


def test_clone_is_independent_of_the_original():
    cfg = get_cfg()
    clone = cfg.clone()
    clone.MODEL.PIXEL_MEAN.append(1.0)
    clone.MODEL.RPN.NMS_THRESH = 0.1
    clone.SOLVER.STEPS = (1, 2)
    assert cfg.MODEL.PIXEL_MEAN == [103.530, 116.280, 123.675]
    assert cfg.MODEL.RPN.NMS_THRESH == 0.7
    assert cfg.SOLVER.STEPS == (30000,)
    assert get_cfg() == cfg  # get_cfg hands out copies; the defaults stay untouched


def test_clone_and_pickle_keep_frozen_and_new_allowed_flags():
    cfg = get_cfg()
    cfg.MODEL.set_new_allowed(True)
    cfg.freeze()
    for copied in (cfg.clone(), pickle.loads(pickle.dumps(cfg)), copy.copy(cfg)):
        assert copied == cfg
        assert copied.is_frozen() and copied.MODEL.is_new_allowed()
        assert not copied.SOLVER.is_new_allowed()
        with pytest.raises(AttributeError, match="frozen"):
            copied.SEED = 1


# ----------------------------------------------------------------------------- _BASE_


def test_base_chain_with_relative_paths_two_levels(tmp_path):
    write(
        tmp_path / "configs" / "Base.yaml",
        """
        MODEL:
          DEVICE: base-device
          RPN:
            NMS_THRESH: 0.1
        SEED: 1
        """,
    )
    write(
        tmp_path / "configs" / "sub" / "mid.yaml",
        """
        _BASE_: "../Base.yaml"
        MODEL:
          RPN:
            NMS_THRESH: 0.2
        SEED: 2
        """,
    )
    leaf = write(
        tmp_path / "configs" / "sub" / "deeper" / "leaf.yaml",
        """
        _BASE_: ../mid.yaml
        SEED: 3
        """,
    )
    cfg = get_cfg()
    cfg.merge_from_file(leaf)
    assert cfg.MODEL.DEVICE == "base-device"  # only the base sets it
    assert cfg.MODEL.RPN.NMS_THRESH == 0.2  # mid overrides base
    assert cfg.SEED == 3  # the file itself overrides both
    assert cfg.MODEL.RPN.HEAD_NAME == "StandardRPNHead"  # untouched defaults stay
    raw = CfgNode.load_yaml_with_base(leaf)
    assert raw == {"MODEL": {"DEVICE": "base-device", "RPN": {"NMS_THRESH": 0.2}}, "SEED": 3}


def test_base_list_merges_in_order_then_the_file(tmp_path):
    write(tmp_path / "a.yaml", "SEED: 1\nVIS_PERIOD: 1\nOUTPUT_DIR: a\n")
    write(tmp_path / "b.yaml", "SEED: 2\nVIS_PERIOD: 2\n")
    leaf = write(tmp_path / "leaf.yaml", "_BASE_: [a.yaml, b.yaml]\nSEED: 3\n")
    cfg = get_cfg()
    cfg.merge_from_file(leaf)
    assert (cfg.OUTPUT_DIR, cfg.VIS_PERIOD, cfg.SEED) == ("a", 2, 3)


def test_absolute_and_home_base_paths(tmp_path, monkeypatch):
    base = write(tmp_path / "elsewhere" / "base.yaml", "SEED: 7\n")
    leaf = write(tmp_path / "dir" / "leaf.yaml", f"_BASE_: {base}\n")
    cfg = get_cfg()
    cfg.merge_from_file(leaf)
    assert cfg.SEED == 7

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    write(tmp_path / "home" / "cfgs" / "base.yaml", "SEED: 8\n")
    leaf = write(tmp_path / "dir" / "leaf2.yaml", "_BASE_: ~/cfgs/base.yaml\n")
    cfg = get_cfg()
    cfg.merge_from_file(leaf)
    assert cfg.SEED == 8


def test_url_bases_are_opened_as_urls_and_resolve_their_own_relative_bases(tmp_path):
    memory = fsspec.filesystem("memory")
    root = f"/heron-cfg-{tmp_path.name}"
    memory.pipe(f"{root}/zoo/Base.yaml", b"SEED: 9\nVIS_PERIOD: 9\n")
    memory.pipe(f"{root}/zoo/model.yaml", b"_BASE_: Base.yaml\nVIS_PERIOD: 4\n")
    leaf = write(tmp_path / "leaf.yaml", f"_BASE_: memory://{root}/zoo/model.yaml\n")
    cfg = get_cfg()
    cfg.merge_from_file(leaf)
    assert (cfg.SEED, cfg.VIS_PERIOD) == (9, 4)


def test_missing_base_names_the_base_and_the_including_file(tmp_path):
    leaf = write(tmp_path / "leaf.yaml", "_BASE_: nope.yaml\n")
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml.*the _BASE_ of .*leaf\.yaml"):
        get_cfg().merge_from_file(leaf)
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml"):
        get_cfg().merge_from_file(str(tmp_path / "missing.yaml"))


def test_base_cycle_is_reported(tmp_path):
    write(tmp_path / "a.yaml", "_BASE_: b.yaml\n")
    b = write(tmp_path / "b.yaml", "_BASE_: a.yaml\n")
    with pytest.raises(ValueError, match="_BASE_ cycle"):
        get_cfg().merge_from_file(b)


def test_bad_base_value_and_mapping_conflict_name_the_file(tmp_path):
    bad = write(tmp_path / "bad.yaml", "_BASE_: 3\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: _BASE_ must be"):
        get_cfg().merge_from_file(bad)
    write(tmp_path / "base.yaml", "MODEL: 1\n")
    leaf = write(tmp_path / "leaf.yaml", "_BASE_: base.yaml\nMODEL:\n  DEVICE: cpu\n")
    with pytest.raises(ValueError, match=r"leaf\.yaml: MODEL is a mapping here but a int"):
        get_cfg().merge_from_file(leaf)


# ----------------------------------------------------------------------------- key and type checks


def test_unknown_key_in_a_base_names_that_base_and_suggests(tmp_path):
    write(tmp_path / "base.yaml", "SOLVER:\n  BASE_LRR: 0.1\n")
    leaf = write(tmp_path / "sub" / "leaf.yaml", "_BASE_: ../base.yaml\nSEED: 1\n")
    with pytest.raises(KeyError) as info:
        get_cfg().merge_from_file(leaf)
    message = str(info.value)
    assert "SOLVER.BASE_LRR" in message
    assert f"from file '{tmp_path / 'sub' / '../base.yaml'}'" in message
    assert "Did you mean: SOLVER.BASE_LR" in message


def test_wrong_type_in_file_names_key_both_types_and_file(tmp_path):
    path = write(tmp_path / "t.yaml", "INPUT:\n  MIN_SIZE_TEST: big\n")
    with pytest.raises(ValueError) as info:
        get_cfg().merge_from_file(path)
    message = str(info.value)
    assert "INPUT.MIN_SIZE_TEST" in message and path in message
    assert "int (800)" in message and "str ('big')" in message


def test_file_strings_are_decoded_as_python_literals(tmp_path):
    path = write(
        tmp_path / "lit.yaml",
        """
        DATASETS:
          TRAIN: ("a", "b")
        SOLVER:
          STEPS: (10, 20)
          BASE_LR: 1
        MODEL:
          PIXEL_STD: [57.375, 57.120, 58.395]
        """,
    )
    cfg = get_cfg()
    cfg.merge_from_file(path)
    assert cfg.DATASETS.TRAIN == ("a", "b")
    assert cfg.SOLVER.STEPS == (10, 20)
    assert cfg.SOLVER.BASE_LR == 1.0 and isinstance(cfg.SOLVER.BASE_LR, float)  # int -> float
    assert cfg.MODEL.PIXEL_STD == [57.375, 57.12, 58.395]


def test_merge_from_list_decodes_values():
    cfg = get_cfg()
    cfg.merge_from_list(
        [
            "MODEL.RPN.NMS_THRESH", "0.5",
            "MODEL.MASK_ON", "True",
            "MODEL.DEVICE", "cpu",
            "SOLVER.STEPS", "[100, 200]",
            "INPUT.MIN_SIZE_TRAIN", "(640, 800)",
            "SOLVER.WEIGHT_DECAY_BIAS", "0.0",
            "SOLVER.BASE_LR", "2",
            "OUTPUT_DIR", "123",
            "MODEL.ANCHOR_GENERATOR.SIZES", "[[16, 32]]",
        ]
    )  # fmt: skip
    assert cfg.MODEL.RPN.NMS_THRESH == 0.5
    assert cfg.MODEL.MASK_ON is True
    assert cfg.MODEL.DEVICE == "cpu"
    assert cfg.SOLVER.STEPS == (100, 200)  # list -> tuple, as the default is a tuple
    assert cfg.INPUT.MIN_SIZE_TRAIN == (640, 800)
    assert cfg.SOLVER.WEIGHT_DECAY_BIAS == 0.0  # None default accepts a float
    assert cfg.SOLVER.BASE_LR == 2.0 and isinstance(cfg.SOLVER.BASE_LR, float)
    assert cfg.OUTPUT_DIR == "123"  # a string default keeps the text as a string
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == [[16, 32]]
    cfg.merge_from_list(["SOLVER.WEIGHT_DECAY_BIAS", "None"])
    assert cfg.SOLVER.WEIGHT_DECAY_BIAS is None


def test_merge_from_list_errors():
    cfg = get_cfg()
    with pytest.raises(ValueError, match="odd number of items"):
        cfg.merge_from_list(["SEED", "1", "VIS_PERIOD"])
    with pytest.raises(KeyError, match=r"MODEL\.RPN\.NMS_THRES \(from list\)"):
        cfg.merge_from_list(["MODEL.RPN.NMS_THRES", "0.5"])
    with pytest.raises(KeyError, match=r"Did you mean: MODEL\.RPN\.NMS_THRESH"):
        cfg.merge_from_list(["MODEL.RPN.NMS_THRES", "0.5"])
    with pytest.raises(KeyError, match=r"MODEL\.NOPE\.X \(from list\)"):
        cfg.merge_from_list(["MODEL.NOPE.X", "1"])
    with pytest.raises(ValueError, match=r"INPUT\.MIN_SIZE_TEST \(from list\).*int.*str"):
        cfg.merge_from_list(["INPUT.MIN_SIZE_TEST", "abc"])
    with pytest.raises(ValueError, match=r"SEED \(from list\).*int \(-1\).*float \(0\.5\)"):
        cfg.merge_from_list(["SEED", "0.5"])  # float where int is expected is refused
    with pytest.raises(ValueError, match="_BASE_"):
        cfg.merge_from_list(["_BASE_", "x.yaml"])
    assert cfg == get_cfg()  # nothing was half-applied by the failing calls above


def test_merge_from_other_cfg_checks_keys_and_types():
    cfg = get_cfg()
    cfg.merge_from_other_cfg(CfgNode({"MODEL": {"DEVICE": "cpu"}, "SOLVER": {"STEPS": [5]}}))
    assert cfg.MODEL.DEVICE == "cpu" and cfg.SOLVER.STEPS == (5,)
    with pytest.raises(KeyError, match=r"MODEL\.DEVIC \(from other cfg\)"):
        cfg.merge_from_other_cfg({"MODEL": {"DEVIC": "cpu"}})
    with pytest.raises(ValueError, match=r"MODEL\.MASK_ON \(from other cfg\).*bool.*str"):
        cfg.merge_from_other_cfg({"MODEL": {"MASK_ON": "yes"}})
    with pytest.raises(ValueError, match=r"MODEL \(from other cfg\).*CfgNode.*int"):
        cfg.merge_from_other_cfg({"MODEL": 3})
    with pytest.raises(ValueError, match="_BASE_"):
        cfg.merge_from_other_cfg({"_BASE_": "x.yaml"})


def test_new_allowed_nodes_accept_new_keys():
    cfg = get_cfg()
    assert not cfg.MODEL.is_new_allowed()
    cfg.MODEL.ROI_HEADS.set_new_allowed(True)
    cfg.merge_from_other_cfg({"MODEL": {"ROI_HEADS": {"EXTRA": {"A": 1}}}})
    cfg.merge_from_list(["MODEL.ROI_HEADS.OTHER", "2.5"])
    assert cfg.MODEL.ROI_HEADS.EXTRA.A == 1 and cfg.MODEL.ROI_HEADS.OTHER == 2.5
    with pytest.raises(KeyError, match=r"MODEL\.RPN\.EXTRA"):
        cfg.merge_from_list(["MODEL.RPN.EXTRA", "1"])  # other nodes still refuse
    node = CfgNode({"A": {"B": 1}}, new_allowed=True)
    assert node.is_new_allowed() and node.A.is_new_allowed()


def test_renamed_and_deprecated_keys():
    cfg = get_cfg()
    cfg.register_deprecated_key("MODEL.OLD_THING")
    cfg.register_renamed_key("MODEL.WEIGHT", "MODEL.WEIGHTS", message="use WEIGHTS")
    cfg.merge_from_other_cfg({"MODEL": {"OLD_THING": 1}})  # ignored with a warning
    cfg.merge_from_list(["MODEL.OLD_THING", "1"])
    assert "OLD_THING" not in cfg.MODEL
    with pytest.raises(KeyError, match=r"MODEL\.WEIGHT was renamed to MODEL\.WEIGHTS.*use WEIGHTS"):
        cfg.merge_from_list(["MODEL.WEIGHT", "x"])


def test_python_tags_in_files_are_refused_even_with_allow_unsafe(tmp_path):
    path = write(tmp_path / "evil.yaml", 'SEED: !!python/object/apply:os.system ["echo x"]\n')
    with pytest.raises(ValueError, match=r"evil\.yaml: the YAML tag !!python/object/apply:os"):
        get_cfg().merge_from_file(path, allow_unsafe=True)


def test_non_mapping_file_and_bad_leaf_types_name_the_file(tmp_path):
    path = write(tmp_path / "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ValueError, match=r"list\.yaml: a config file must hold a mapping"):
        get_cfg().merge_from_file(path)
    path = write(tmp_path / "date.yaml", "OUTPUT_DIR: 2020-01-01\n")
    with pytest.raises(TypeError, match=r"date\.yaml.*OUTPUT_DIR.*date"):
        get_cfg().merge_from_file(path)


# ----------------------------------------------------------------------------- dump


def test_dump_round_trips_through_get_cfg():
    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.STEPS", "(1, 2)", "MODEL.DEVICE", "cpu", "SEED", "5"])
    text = cfg.dump()
    assert str(cfg) == text
    loaded = get_cfg()
    loaded.merge_from_other_cfg(yaml.safe_load(text))
    assert loaded == cfg
    # nested tuples come back as nested tuples, like the defaults
    assert loaded.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS[0] == (10.0, 10.0, 5.0, 5.0)
    assert "&id" not in text  # no YAML anchors for repeated values


def test_dump_refuses_invalid_value_types_naming_key():
    cfg = get_cfg()
    cfg.SOLVER.STEPS = {1, 2}
    with pytest.raises(TypeError, match=r"SOLVER\.STEPS: set"):
        cfg.dump()


def test_dump_accepts_yaml_keyword_arguments():
    text = CfgNode({"B": 1, "A": 2}).dump(sort_keys=False)
    assert text == "B: 1\nA: 2\n"


# ----------------------------------------------------------------------------- versions


def test_file_without_version_is_taken_as_current(tmp_path):
    path = write(tmp_path / "v.yaml", "MODEL:\n  WEIGHTS: w.pkl\n")
    cfg = get_cfg()
    cfg.merge_from_file(path)
    assert cfg.MODEL.WEIGHTS == "w.pkl" and cfg.VERSION == 2


def test_newer_version_is_refused(tmp_path):
    path = write(tmp_path / "v3.yaml", "VERSION: 3\n")
    with pytest.raises(ValueError, match="VERSION 3"):
        get_cfg().merge_from_file(path)


def test_version_1_file_is_upgraded(tmp_path):
    path = write(
        tmp_path / "v1.yaml",
        """
        MODEL:
          WEIGHT: old.pkl
          RPN:
            ANCHOR_SIZES: [[16, 32]]
        TEST:
          DETECTIONS_PER_IMG: 50
          AUG_ON: True
        """,
    )
    cfg = get_cfg()
    cfg.merge_from_file(path)
    assert cfg.VERSION == 2
    assert cfg.MODEL.WEIGHTS == "old.pkl"
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == [[16, 32]]
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 50 and cfg.TEST.AUG.ENABLED is True
    assert "WEIGHT" not in cfg.MODEL and "ANCHOR_SIZES" not in cfg.MODEL.RPN
    assert set(cfg) == set(get_cfg())


def test_downgrade_then_upgrade_restores_the_defaults():
    cfg = get_cfg()
    v0 = downgrade_config(cfg, to_version=0)
    assert v0.VERSION == 0
    assert v0.MODEL.RPN_HEAD.NAME == "StandardRPNHead" and "HEAD_NAME" not in v0.MODEL.RPN
    assert v0.MODEL.WEIGHT == "" and v0.TEST.AUG_ON is False and "AUG" not in v0.TEST
    assert v0.MODEL.RETINANET.ANCHOR_SIZES == [[32, 64, 128, 256, 512]]
    assert upgrade_config(v0) == cfg
    assert cfg == get_cfg()  # the input was not modified


def test_guess_version():
    assert guess_version(CfgNode({"MODEL": {"WEIGHT": "x"}}), "f.yaml") == 1
    assert guess_version(CfgNode({"TEST": {"AUG_ON": True}}), "f.yaml") == 1
    assert guess_version(CfgNode({"MODEL": {"WEIGHTS": "x"}}), "f.yaml") == 2


def test_config_without_version_key_merges_plainly(tmp_path):
    path = write(tmp_path / "c.yaml", "A:\n  B: 2\n")
    cfg = CfgNode({"A": {"B": 1}})
    cfg.merge_from_file(path)
    assert cfg == {"A": {"B": 2}}


# ----------------------------------------------------------------------------- globals


def test_set_global_cfg_updates_the_shared_object_in_place():
    shared = config_module.global_cfg
    try:
        set_global_cfg(CfgNode({"KEY": 1}))
        assert config_module.global_cfg is shared and shared.KEY == 1
    finally:
        shared.clear()
