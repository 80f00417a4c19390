import collections
import datetime
import importlib
import sys
import textwrap
import uuid

import pytest
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from heron.config.instantiate import dump_dataclass, instantiate
from heron.config.lazy import LazyCall as L
from heron.utils.registry import _convert_target_to_string


@pytest.fixture
def dc_module(tmp_path, monkeypatch):
    """An importable module (so dotted paths resolve) holding two nested dataclasses."""
    name = f"heron_test_dataclasses_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import dataclasses

            @dataclasses.dataclass
            class Point:
                x: int = 0
                y: int = 0

            @dataclasses.dataclass
            class Path:
                name: str = "p"
                start: Point = dataclasses.field(default_factory=Point)
                stops: list = dataclasses.field(default_factory=list)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    yield module
    sys.modules.pop(name, None)


# ----------------------------------------------------------------------------- calls


def test_instantiate_calls_a_callable_target_with_the_kwargs():
    td = instantiate(L(datetime.timedelta)(days=1, hours=2))
    # 1 day + 2 hours = 86400 + 7200 seconds
    assert td.total_seconds() == 93600


def test_instantiate_imports_a_dotted_string_target():
    assert instantiate({"_target_": "datetime.date", "year": 2020, "month": 1, "day": 31}) == (
        datetime.date(2020, 1, 31)
    )


def test_instantiate_builds_children_first_including_list_elements():
    cfg = L(torch.nn.ModuleList)(
        modules=[
            L(torch.nn.Linear)(in_features=4, out_features=3),
            L(torch.nn.ReLU)(),
            L(torch.nn.Linear)(in_features=3, out_features=2),
        ]
    )
    modules = instantiate(cfg)
    assert isinstance(modules, torch.nn.ModuleList)
    assert [type(m) for m in modules] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]
    assert modules[0].weight.shape == (3, 4) and modules[2].weight.shape == (2, 3)


def test_instantiate_resolves_interpolations_against_the_root():
    cfg = DictConfig(
        {"width": 5, "layer": L(torch.nn.Linear)(in_features="${width}", out_features=1)},
        flags={"allow_objects": True},
    )
    assert instantiate(cfg.layer).in_features == 5


def test_instantiate_accepts_a_lazy_config_that_builds_the_target():
    # namedtuple(typename=..., field_names=...) returns a class, which is then called
    make_point = L(collections.namedtuple)(typename="P", field_names=["x", "y"])
    point = instantiate(L(make_point)(x=1, y=2))
    assert (point.x, point.y) == (1, 2) and type(point).__name__ == "P"


# ----------------------------------------------------------------------------- containers


def test_instantiate_returns_plain_values_unchanged():
    marker = object()
    for value in (3, 2.5, "text", None, marker):
        assert instantiate(value) is value


def test_instantiate_keeps_container_kinds():
    counter_cfg = L(collections.Counter)(a=2)
    out_listconfig = instantiate(ListConfig([counter_cfg, 1], flags={"allow_objects": True}))
    assert isinstance(out_listconfig, ListConfig)
    assert out_listconfig[0] == collections.Counter(a=2) and out_listconfig[1] == 1
    out_list = instantiate([counter_cfg, "x"])
    assert type(out_list) is list and out_list == [collections.Counter(a=2), "x"]
    out_tuple = instantiate((counter_cfg,))
    assert type(out_tuple) is tuple and out_tuple == (collections.Counter(a=2),)
    assert instantiate([]) == []


def test_instantiate_returns_a_mapping_without_targets_as_is():
    cfg = DictConfig({"a": 1, "b": {"c": [1, 2]}})
    assert instantiate(cfg) is cfg
    plain = {"a": 1}
    assert instantiate(plain) is plain


def test_instantiate_builds_targets_inside_a_mapping_without_target():
    cfg = DictConfig(
        {"lr": 0.1, "delta": L(datetime.timedelta)(minutes=3)}, flags={"allow_objects": True}
    )
    out = instantiate(cfg)
    assert isinstance(out, DictConfig) and out is not cfg
    assert out.lr == 0.1 and out.delta == datetime.timedelta(minutes=3)
    assert isinstance(cfg.delta, DictConfig)  # the input config is left unchanged
    plain_out = instantiate({"delta": {"_target_": "datetime.timedelta", "seconds": 4}})
    assert plain_out == {"delta": datetime.timedelta(seconds=4)}


# ----------------------------------------------------------------------------- dataclasses


def test_instantiate_turns_a_structured_config_into_its_dataclass(dc_module):
    cfg = OmegaConf.structured(dc_module.Point(x=3, y=4))
    point = instantiate(cfg)
    assert type(point) is dc_module.Point and (point.x, point.y) == (3, 4)


def test_lazycall_of_a_dataclass_instantiates_it(dc_module):
    point = instantiate(L(dc_module.Point)(x=1, y=2))
    assert point == dc_module.Point(x=1, y=2)


def test_dump_dataclass_gives_a_config_that_rebuilds_the_object(dc_module):
    Point, Path = dc_module.Point, dc_module.Path
    obj = Path(name="route", start=Point(1, 2), stops=[Point(3, 4), 5])
    dumped = dump_dataclass(obj)
    point_target = _convert_target_to_string(Point)
    assert dumped == {
        "_target_": _convert_target_to_string(Path),
        "name": "route",
        "start": {"_target_": point_target, "x": 1, "y": 2},
        "stops": [{"_target_": point_target, "x": 3, "y": 4}, 5],
    }
    assert instantiate(dumped) == obj


def test_dump_dataclass_rejects_non_instances(dc_module):
    with pytest.raises(TypeError, match="dataclass instance, got type"):
        dump_dataclass(dc_module.Point)
    with pytest.raises(TypeError, match="got dict"):
        dump_dataclass({"x": 1})


# ----------------------------------------------------------------------------- errors


def test_unknown_target_names_the_target_and_the_key_path():
    cfg = DictConfig(
        {
            "model": L(torch.nn.ModuleList)(
                modules=[L(torch.nn.ReLU)(), {"_target_": "not.a.module.Foo"}]
            )
        },
        flags={"allow_objects": True},
    )
    with pytest.raises(ImportError, match=r"'model\.modules\[1\]'.*'not\.a\.module\.Foo'"):
        instantiate(cfg)
    # starting below the root still reports the full path
    with pytest.raises(ImportError, match=r"'model\.modules\[1\]'"):
        instantiate(cfg.model)


def test_bad_arguments_raise_typeerror_naming_the_target_and_key():
    cfg = DictConfig(
        {"head": L(torch.nn.Linear)(in_features=2, out_features=1, nope=3)},
        flags={"allow_objects": True},
    )
    with pytest.raises(TypeError, match=r"torch\.nn\.modules\.linear\.Linear at config key 'head'"):
        instantiate(cfg)


def test_non_callable_target_raises_typeerror():
    with pytest.raises(TypeError, match=r"'math\.pi' is a float, not a callable"):
        instantiate({"_target_": "math.pi"})
