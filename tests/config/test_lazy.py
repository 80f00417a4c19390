import collections
import dataclasses
import datetime
import importlib
import logging
import math
import os
import sys
import textwrap
import uuid

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig, OmegaConf

from heron.config.instantiate import instantiate
from heron.config.lazy import LazyCall, LazyConfig
from heron.config.lazy import LazyCall as L


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.fixture
def tree(tmp_path):
    """configs/common/{model,train}.py and configs/main/exp.py importing them relatively."""
    root = tmp_path / "configs"
    write(
        root / "common" / "model.py",
        """
        import torch
        from heron.config.lazy import LazyCall as L

        model = L(torch.nn.ModuleList)(
            modules=[
                L(torch.nn.Linear)(in_features=4, out_features=3),
                L(torch.nn.ReLU)(),
                L(torch.nn.Linear)(in_features=3, out_features=2),
            ]
        )
        """,
    )
    write(
        root / "common" / "train.py",
        """
        train = dict(max_iter=100, amp=dict(enabled=False), output_dir="./output")
        """,
    )
    write(
        root / "main" / "exp.py",
        """
        import collections
        import datetime

        from heron.config.lazy import LazyCall as L

        from ..common.model import model
        from ..common import train as common_train

        train = common_train.train
        train.max_iter = 10
        model.modules[2].out_features = 5

        schedule = dict(
            start=L(datetime.date)(year=2024, month=2, day=28),
            step=L(datetime.timedelta)(days=2),
        )
        counts = L(collections.Counter)(cat=2, dog=1)
        sizes = [1, 2, 3]

        def helper():
            return 1

        _private = dict(x=1)
        not_config = 42
        """,
    )
    return root


# ----------------------------------------------------------------------------- LazyCall


def test_lazycall_records_target_and_keyword_arguments():
    cfg = LazyCall(collections.Counter)(a=1, b=2)
    assert isinstance(cfg, DictConfig)
    assert cfg._target_ is collections.Counter and (cfg.a, cfg.b) == (1, 2)
    cfg.a = 5  # editable before it is built
    assert instantiate(cfg) == collections.Counter(a=5, b=2)


def test_lazycall_accepts_a_dotted_path_string():
    cfg = L("datetime.timedelta")(hours=1)
    assert cfg._target_ == "datetime.timedelta"
    assert instantiate(cfg) == datetime.timedelta(hours=1)


def test_lazycall_stores_a_dataclass_target_as_its_path():
    @dataclasses.dataclass
    class Local:
        x: int = 0

    cfg = L(Local)(x=1)
    assert isinstance(cfg._target_, str) and cfg._target_.endswith("Local")


def test_lazycall_rejects_a_non_callable_target():
    with pytest.raises(TypeError, match="got int: 5"):
        LazyCall(5)


def test_lazycall_takes_keyword_arguments_only():
    with pytest.raises(TypeError):
        L(torch.nn.Linear)(4, 3)


# ----------------------------------------------------------------------------- load


def test_load_follows_relative_imports_and_keeps_config_globals(tree):
    cfg = LazyConfig.load(str(tree / "main" / "exp.py"))
    # modules, functions, private names and non-config values are left out
    assert set(cfg.keys()) == {"model", "train", "schedule", "counts"}
    assert isinstance(cfg.train, DictConfig)  # a plain dict became a DictConfig
    assert cfg.train.max_iter == 10 and cfg.train.amp.enabled is False

    model = instantiate(cfg.model)
    assert [type(m) for m in model] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]
    assert model[0].weight.shape == (3, 4) and model[2].weight.shape == (5, 3)
    x = torch.randn(2, 4)
    out = torch.nn.Sequential(*model)(x)
    expected = torch.relu(x @ model[0].weight.T + model[0].bias) @ model[2].weight.T
    torch.testing.assert_close(out, expected + model[2].bias)

    schedule = instantiate(cfg.schedule)
    # 2024 is a leap year: Feb 28 + 2 days = Mar 1
    assert schedule.start + schedule.step == datetime.date(2024, 3, 1)
    assert instantiate(cfg.counts) == collections.Counter(cat=2, dog=1)


def test_each_relative_import_loads_the_file_afresh(tree):
    # exp.py edits the imported model and train; the files themselves are unchanged
    LazyConfig.load(str(tree / "main" / "exp.py"))
    model = LazyConfig.load(str(tree / "common" / "model.py"), "model")
    train = LazyConfig.load(str(tree / "common" / "train.py"), "train")
    assert model.modules[2].out_features == 2 and train.max_iter == 100


def test_load_leaves_the_global_import_function_alone(tmp_path):
    path = write(
        tmp_path / "c.py",
        """
        import builtins

        info = dict(import_name=builtins.__import__.__name__)
        """,
    )
    assert LazyConfig.load(path).info.import_name == "__import__"
    broken = write(tmp_path / "broken.py", "from .missing import x\n")
    with pytest.raises(ImportError):
        LazyConfig.load(broken)
    assert __import__("builtins").__import__.__name__ == "__import__"


def test_load_sets_dunder_file(tmp_path):
    path = write(tmp_path / "c.py", "info = dict(path=__file__)\n")
    assert LazyConfig.load(path).info.path == path


def test_load_with_keys_returns_values(tree):
    path = str(tree / "main" / "exp.py")
    train = LazyConfig.load(path, "train")
    assert isinstance(train, DictConfig) and train.output_dir == "./output"
    train, counts = LazyConfig.load(path, ("train", "counts"))
    assert train.max_iter == 10 and counts.cat == 2


def test_load_with_a_missing_key_raises_keyerror(tree):
    with pytest.raises(KeyError, match=r"exp\.py has no key 'optimizer'"):
        LazyConfig.load(str(tree / "main" / "exp.py"), "optimizer")


def test_load_rejects_an_unknown_suffix(tmp_path):
    path = write(tmp_path / "cfg.json", "{}")
    with pytest.raises(ValueError, match=r"cfg\.json must be a Python .* got suffix '\.json'"):
        LazyConfig.load(path)


def test_relative_import_of_a_missing_file_names_it(tmp_path):
    path = write(tmp_path / "a" / "exp.py", "from .nothere import model\n")
    with pytest.raises(ImportError, match=r"'\.nothere'.*nothere\.py does not exist"):
        LazyConfig.load(path)


def test_relative_import_from_a_directory_needs_a_config_file(tree):
    path = write(tree / "main" / "bad.py", "from ..common import optimizer\n")
    with pytest.raises(ImportError, match=r"common.optimizer\.py does not exist"):
        LazyConfig.load(path)


def test_relative_import_of_an_undefined_name_names_it(tree):
    path = write(tree / "main" / "bad.py", "from ..common.train import optimizer\n")
    with pytest.raises(ImportError, match=r"name 'optimizer' from '\.\.common\.train'"):
        LazyConfig.load(path)


def test_syntax_error_names_the_file(tmp_path):
    path = write(tmp_path / "broken.py", "x = dict(\n")
    with pytest.raises(SyntaxError, match=r"broken\.py"):
        LazyConfig.load(path)


def test_load_yaml_and_instantiate(tmp_path):
    path = write(
        tmp_path / "cfg.yaml",
        """
        delta:
          _target_: datetime.timedelta
          minutes: 1.5
        lr: 1e-3
        steps: [1, 2]
        """,
    )
    cfg = LazyConfig.load(path)
    # omegaconf's YAML reads 1e-3 as a float (plain YAML 1.1 would give a string)
    assert cfg.lr == 0.001 and list(cfg.steps) == [1, 2]
    assert instantiate(cfg.delta).total_seconds() == 90  # 1.5 min
    assert LazyConfig.load(path, "lr") == 0.001


def test_load_yaml_refuses_python_tags(tmp_path):
    path = write(tmp_path / "evil.yml", "x: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(ValueError, match=r"evil\.yml"):
        LazyConfig.load(path)


def test_load_rel_resolves_against_the_calling_config_file(tree):
    path = write(
        tree / "main" / "rel.py",
        """
        from heron.config.lazy import LazyConfig

        train = LazyConfig.load_rel("../common/train.py", "train")
        """,
    )
    assert LazyConfig.load(path).train.max_iter == 100


def test_load_rel_resolves_against_the_calling_test_file(tree):
    here = os.path.dirname(os.path.abspath(__file__))
    rel = os.path.relpath(str(tree / "common" / "train.py"), here)
    assert LazyConfig.load_rel(rel, "train").output_dir == "./output"


def test_load_rel_without_a_source_file_raises():
    with pytest.raises(ValueError, match="needs a caller with a source file"):
        exec("LazyConfig.load_rel('x.py')", {"LazyConfig": LazyConfig})


# ----------------------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3", 3),
        ("-2.5", -2.5),
        ("1e-3", 0.001),
        ("True", True),
        ("false", False),
        ("None", None),
        ("null", None),
        ("[1, 2]", [1, 2]),
        ("[a, b, null, true]", ["a", "b", None, True]),
        ("{a: 1, b: [x]}", {"a": 1, "b": ["x"]}),
        ("abc", "abc"),
        ("'quoted, text'", "quoted, text"),
        ('"7"', "7"),
        ("path/to/model.pkl", "path/to/model.pkl"),
        ("${train.max_iter}", "${train.max_iter}"),
        ("", ""),
        ("[]", []),
    ],
)
def test_override_values_are_parsed(text, expected):
    cfg = DictConfig({"a": {"b": 0}})
    LazyConfig.apply_overrides(cfg, [f"a.b={text}"])
    assert OmegaConf.to_container(cfg.a, resolve=False)["b"] == expected


def test_override_inf_is_a_float():
    cfg = DictConfig({"a": 0})
    LazyConfig.apply_overrides(cfg, ["a=-inf"])
    assert cfg.a == -math.inf


def test_overrides_change_what_is_instantiated(tree):
    cfg = LazyConfig.load(str(tree / "main" / "exp.py"))
    out = LazyConfig.apply_overrides(
        cfg,
        [
            "model.modules.0.out_features=6",
            "model.modules.2.in_features=6",
            "train.amp.enabled=true",
            "schedule.step.days=3",
        ],
    )
    assert out is cfg
    model = instantiate(cfg.model)
    assert model[0].weight.shape == (6, 4) and model[2].weight.shape == (5, 6)
    assert cfg.train.amp.enabled is True
    # Feb 28 2024 + 3 days = Mar 2
    schedule = instantiate(cfg.schedule)
    assert schedule.start + schedule.step == datetime.date(2024, 3, 2)


def test_override_creates_a_new_key_under_an_existing_dictconfig():
    cfg = DictConfig({"train": {"max_iter": 1}})
    LazyConfig.apply_overrides(cfg, ["train.name=run1", "+train.seed=3"])
    assert cfg.train.name == "run1" and cfg.train.seed == 3


def test_override_with_a_missing_parent_raises_keyerror():
    cfg = DictConfig({"train": {"max_iter": 1}})
    with pytest.raises(KeyError, match=r"'solver\.lr\.base'.*'solver' does not exist"):
        LazyConfig.apply_overrides(cfg, ["solver.lr.base=0.1"])


def test_override_below_a_non_config_raises_keyerror():
    cfg = DictConfig({"train": {"max_iter": 1}})
    with pytest.raises(KeyError, match=r"'train\.max_iter' is a int, not a config"):
        LazyConfig.apply_overrides(cfg, ["train.max_iter.x=2"])


def test_override_needs_key_equals_value():
    with pytest.raises(ValueError, match=r"'train\.max_iter' is not of the form"):
        LazyConfig.apply_overrides(DictConfig({"train": {}}), ["train.max_iter"])


def test_override_with_an_unbalanced_list_raises_valueerror():
    with pytest.raises(ValueError, match=r"Cannot parse the value of override 'a=\[1, 2'"):
        LazyConfig.apply_overrides(DictConfig({"a": 0}), ["a=[1, 2"])


def test_override_with_tilde_deletes_the_key():
    cfg = DictConfig({"train": {"max_iter": 1, "seed": 2}})
    LazyConfig.apply_overrides(cfg, ["~train.seed"])
    assert list(cfg.train.keys()) == ["max_iter"]
    with pytest.raises(KeyError, match=r"Cannot delete 'train\.seed'"):
        LazyConfig.apply_overrides(cfg, ["~train.seed"])


# ----------------------------------------------------------------------------- save


def test_save_then_load_gives_an_equal_config(tree, tmp_path):
    cfg = LazyConfig.load(str(tree / "main" / "exp.py"))
    out = str(tmp_path / "saved.yaml")
    LazyConfig.save(cfg, out)
    loaded = LazyConfig.load(out)
    # callable targets are saved as their import paths
    expected = OmegaConf.to_container(cfg)
    expected["model"]["_target_"] = "torch.nn.ModuleList"
    for i, name in enumerate(["Linear", "ReLU", "Linear"]):
        expected["model"]["modules"][i]["_target_"] = f"torch.nn.{name}"
    expected["schedule"]["start"]["_target_"] = "datetime.date"
    expected["schedule"]["step"]["_target_"] = "datetime.timedelta"
    expected["counts"]["_target_"] = "collections.Counter"
    assert OmegaConf.to_container(loaded) == expected
    model = instantiate(loaded.model)
    assert model[2].weight.shape == (5, 3)
    # saving the reloaded config writes the same file
    again = str(tmp_path / "again.yaml")
    LazyConfig.save(loaded, again)
    assert (tmp_path / "again.yaml").read_text() == (tmp_path / "saved.yaml").read_text()


def test_save_keeps_interpolations(tmp_path):
    cfg = DictConfig({"width": 8, "layer": {"in_features": "${width}"}})
    path = str(tmp_path / "c.yaml")
    LazyConfig.save(cfg, path)
    loaded = LazyConfig.load(path)
    assert OmegaConf.to_container(loaded, resolve=False)["layer"]["in_features"] == "${width}"
    loaded.width = 16
    assert loaded.layer.in_features == 16


def test_save_warns_about_values_yaml_cannot_hold(tmp_path, caplog):
    cfg = DictConfig(
        {"model": {"act": torch.nn.ReLU, "fn": lambda x: x, "n": 1}}, flags={"allow_objects": True}
    )
    path = str(tmp_path / "c.yaml")
    with caplog.at_level(logging.WARNING, logger="heron.config.lazy"):
        LazyConfig.save(cfg, path)
    assert "'model.fn'" in caplog.text and "'model.act'" in caplog.text
    loaded = LazyConfig.load(path)  # still a valid file
    assert loaded.model.act == "torch.nn.ReLU" and loaded.model.n == 1


def test_save_writes_other_objects_as_their_repr_with_a_warning(tmp_path, caplog):
    cfg = OmegaConf.create({"when": datetime.date(2020, 5, 1)}, flags={"allow_objects": True})
    path = str(tmp_path / "c.yaml")
    with caplog.at_level(logging.WARNING, logger="heron.config.lazy"):
        LazyConfig.save(cfg, path)
    assert "'when' holds a date" in caplog.text
    assert LazyConfig.load(path).when == "datetime.date(2020, 5, 1)"


def test_save_writes_dataclasses_as_targets(tmp_path, monkeypatch):
    name = f"heron_test_lazy_dc_{uuid.uuid4().hex[:8]}"
    write(
        tmp_path / f"{name}.py",
        """
        import dataclasses

        @dataclasses.dataclass
        class Size:
            height: int = 1
            width: int = 2
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    try:
        cfg = DictConfig({"size": module.Size(3, 4)}, flags={"allow_objects": True})
        path = str(tmp_path / "c.yaml")
        LazyConfig.save(cfg, path)
        loaded = LazyConfig.load(path)
        assert loaded.size._target_ == f"{name}.Size"
        assert instantiate(loaded.size) == module.Size(3, 4)
    finally:
        sys.modules.pop(name, None)


# ----------------------------------------------------------------------------- to_py


def _exec_source(source):
    namespace = {}
    exec(compile(source, "<to_py>", "exec"), namespace)
    return namespace


def test_to_py_source_rebuilds_the_config(tree):
    cfg = LazyConfig.load(str(tree / "main" / "exp.py"))
    source = LazyConfig.to_py(cfg)
    assert "cfg.model = L(torch.nn.ModuleList)(" in source
    assert "cfg.train.amp.enabled = False" in source
    rebuilt = _exec_source(source)["cfg"]
    assert OmegaConf.to_container(rebuilt) == OmegaConf.to_container(cfg)
    assert instantiate(rebuilt.model)[2].weight.shape == (5, 3)


def test_to_py_with_empty_prefix_is_a_loadable_config_file(tree, tmp_path):
    cfg = LazyConfig.load(str(tree / "main" / "exp.py"))
    path = write(tmp_path / "printed.py", LazyConfig.to_py(cfg, prefix=""))
    assert OmegaConf.to_container(LazyConfig.load(path)) == OmegaConf.to_container(cfg)


def test_to_py_wraps_long_calls_and_keeps_them_valid():
    cfg = DictConfig(
        {"delta": L(datetime.timedelta)(**{f"{u}": 1 for u in ("days", "hours", "minutes")})},
        flags={"allow_objects": True},
    )
    cfg.delta.seconds = [L(collections.Counter)(alpha=1, beta=2, gamma=3)] * 3
    cfg.delta.seconds = 4
    cfg.long = {"names": [f"name_{i:03d}" for i in range(20)], "weird-key": 1}
    source = LazyConfig.to_py(cfg)
    assert max(len(line) for line in source.splitlines()) <= 100
    rebuilt = _exec_source(source)["cfg"]
    assert OmegaConf.to_container(rebuilt) == OmegaConf.to_container(cfg)
    # 1 day + 1 hour + 1 minute + 4 s = 86400 + 3600 + 60 + 4
    assert instantiate(rebuilt.delta).total_seconds() == 90064


def test_to_py_writes_objects_without_literal_form_as_strings(caplog):
    cfg = DictConfig(
        {"fn": lambda x: x, "act": torch.nn.ReLU, "call": L(lambda: 1)()},
        flags={"allow_objects": True},
    )
    with caplog.at_level(logging.WARNING, logger="heron.config.lazy"):
        source = LazyConfig.to_py(cfg)
    assert "<lambda>" in caplog.text
    rebuilt = _exec_source(source)["cfg"]
    assert rebuilt.act is torch.nn.ReLU  # importable classes stay objects
    assert isinstance(rebuilt.fn, str) and "<lambda>" in rebuilt.fn
    assert isinstance(rebuilt.call._target_, str)


def test_to_py_rejects_a_bad_prefix():
    with pytest.raises(ValueError, match="prefix must be"):
        LazyConfig.to_py(DictConfig({}), prefix="cfg")


# ----------------------------------------------------------------------------- properties

_keys = st.text(alphabet="abcxyz_", min_size=1, max_size=6).filter(str.isidentifier)
_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False, width=32)
    | st.text(alphabet="ab c-1.${}'\"", max_size=8).filter(lambda s: "${" not in s)
)
_trees = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(_keys, _trees, max_size=4))
def test_plain_configs_survive_save_and_to_py(tmp_path_factory, content):
    cfg = DictConfig(content)
    expected = OmegaConf.to_container(cfg)
    path = str(tmp_path_factory.mktemp("prop") / "c.yaml")
    LazyConfig.save(cfg, path)
    assert OmegaConf.to_container(LazyConfig.load(path)) == expected
    rebuilt = _exec_source(LazyConfig.to_py(cfg))["cfg"]
    assert OmegaConf.to_container(rebuilt) == expected
