from __future__ import annotations

import os
import sys
import uuid
from collections import OrderedDict

import pytest
import torch

from heron.utils.registry import Registry, _convert_target_to_string, locate


@pytest.fixture
def tmp_package(tmp_path, monkeypatch):
    """A fresh importable package ``<name>`` whose ``__init__`` re-exports ``_impl.Foo``."""
    name = f"heron_tmp_pkg_{uuid.uuid4().hex[:8]}"
    pkg = tmp_path / name
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from ._impl import Foo\n")
    (pkg / "_impl.py").write_text(
        "class Foo:\n    class Inner:\n        pass\n\ndef helper():\n    return 1\n"
    )
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "deep.py").write_text("class Deep:\n    pass\n")
    (pkg / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    (pkg / "needs_dep.py").write_text("import heron_no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[mod]


# ---------------------------------------------------------------- Registry


def test_register_with_call_decorator_returns_the_class_and_registers_it():
    reg = Registry("BACKBONE")

    @reg.register()
    class MyBackbone:
        pass

    assert reg.get("MyBackbone") is MyBackbone
    assert "MyBackbone" in reg
    assert len(reg) == 1


def test_register_bare_decorator_and_direct_call_both_register():
    reg = Registry("HEADS")

    @reg.register
    def head_a():
        return "a"

    def head_b():
        return "b"

    assert reg.register(head_b) is head_b
    assert head_a() == "a"  # the bare decorator hands back the function itself
    assert reg.get("head_a") is head_a
    assert reg.get("head_b") is head_b
    assert list(reg) == [("head_a", head_a), ("head_b", head_b)]


def test_register_same_name_twice_raises_value_error_naming_name_and_registry():
    reg = Registry("ROI_HEADS")

    class Dup:
        pass

    reg.register(Dup)
    with pytest.raises(ValueError, match=r"'Dup' was already registered in the 'ROI_HEADS'"):
        reg.register(Dup)
    assert len(reg) == 1


def test_register_object_without_name_raises_type_error():
    reg = Registry("X")
    with pytest.raises(TypeError, match=r"needs an object with a __name__.*int: 3"):
        reg.register(3)


def test_get_unknown_name_lists_sorted_registered_names():
    reg = Registry("META_ARCH")
    for n in ["Zeta", "Alpha", "Mid"]:
        reg.register(type(n, (), {}))
    with pytest.raises(
        KeyError, match=r"'Missing' found in the 'META_ARCH' registry.*Alpha, Mid, Zeta"
    ):
        reg.get("Missing")


def test_get_on_empty_registry_says_none_registered():
    reg = Registry("EMPTY")
    with pytest.raises(KeyError, match=r"registered names: \(none\)"):
        reg.get("anything")


def test_empty_registry_has_length_zero_and_iterates_nothing():
    reg = Registry("EMPTY")
    assert len(reg) == 0
    assert list(reg) == []
    assert "x" not in reg
    assert reg.name == "EMPTY"


def test_repr_is_a_table_of_names_and_objects():
    reg = Registry("TABLE")

    class Thing:
        pass

    reg.register(Thing)
    text = repr(reg)
    assert text.startswith("Registry of TABLE:\n")
    assert "Names" in text and "Objects" in text
    assert "Thing" in text
    assert "╒" in text  # fancy_grid corner
    assert str(reg) == text


# ---------------------------------------------------------------- locate


def test_locate_resolves_dotted_class_function_and_module():
    assert locate("torch.nn.Conv2d") is torch.nn.Conv2d
    assert locate("os.path.join") is os.path.join
    assert locate("os.path") is os.path
    assert locate("collections.OrderedDict.fromkeys") == OrderedDict.fromkeys


def test_locate_accepts_colon_separated_module_and_attribute():
    assert locate("torch.nn:Conv2d") is torch.nn.Conv2d
    assert locate("collections:OrderedDict.fromkeys") == OrderedDict.fromkeys


def test_locate_resolves_builtins():
    assert locate("int") is int
    assert locate("dict.fromkeys") == dict.fromkeys


def test_locate_imports_submodules_not_yet_imported(tmp_package):
    deep = locate(f"{tmp_package}.sub.deep.Deep")
    assert deep.__name__ == "Deep"
    assert f"{tmp_package}.sub.deep" in sys.modules
    assert locate(f"{tmp_package}._impl.Foo.Inner").__qualname__ == "Foo.Inner"


@pytest.mark.parametrize(
    "path, message",
    [
        ("heron_no_such_module_xyz.Thing", r"'heron_no_such_module_xyz.Thing'.*no module named"),
        (
            "torch.nn.NoSuchLayer",
            r"'torch.nn.NoSuchLayer'.*'torch.nn' has no attribute 'NoSuchLayer'",
        ),
        ("torch.nn:NoSuchLayer.x", r"'torch.nn' has no attribute 'NoSuchLayer'"),
        ("int.no_such_attr", r"'builtins.int' has no attribute 'no_such_attr'"),
        ("", r"not a valid dotted path"),
        ("a..b", r"'a..b': not a valid dotted path"),
        (":x", r"no module named ''"),
    ],
)
def test_locate_failure_raises_import_error_naming_the_path(path, message):
    with pytest.raises(ImportError, match=message):
        locate(path)


def test_locate_non_string_raises_type_error():
    with pytest.raises(TypeError, match=r"expects a str, got int"):
        locate(3)


def test_locate_reports_errors_raised_while_importing_the_module(tmp_package):
    with pytest.raises(ImportError, match=r"broken.*boom at import") as info:
        locate(f"{tmp_package}.broken.Anything")
    assert isinstance(info.value.__cause__, RuntimeError)


def test_locate_reports_missing_dependency_of_existing_module(tmp_package):
    # the module exists; its own import fails, which must not read as "no such module"
    with pytest.raises(ImportError, match=r"heron_no_such_dependency_xyz") as info:
        locate(f"{tmp_package}.needs_dep.X")
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


# ---------------------------------------------------------------- _convert_target_to_string


def test_convert_target_prefers_shortest_reexported_path(tmp_package):
    foo = locate(f"{tmp_package}._impl.Foo")
    # the package re-exports Foo, so "<pkg>.Foo" resolves to the same object
    assert _convert_target_to_string(foo) == f"{tmp_package}.Foo"


def test_convert_target_keeps_full_path_when_not_reexported(tmp_package):
    helper = locate(f"{tmp_package}._impl.helper")
    inner = locate(f"{tmp_package}._impl.Foo.Inner")
    assert _convert_target_to_string(helper) == f"{tmp_package}._impl.helper"
    # Inner is reachable as <pkg>.Foo.Inner through the re-export of Foo
    assert _convert_target_to_string(inner) == f"{tmp_package}.Foo.Inner"


def test_convert_target_round_trips_through_locate_for_torch_classes():
    for obj in [torch.nn.Conv2d, torch.optim.SGD, OrderedDict, os.path.join]:
        path = _convert_target_to_string(obj)
        assert locate(path) is obj
    assert _convert_target_to_string(torch.nn.Conv2d) == "torch.nn.Conv2d"
    assert _convert_target_to_string(torch.optim.SGD) == "torch.optim.SGD"


def test_convert_target_of_non_class_raises_type_error():
    with pytest.raises(TypeError, match=r"__module__ and __qualname__.*int: 5"):
        _convert_target_to_string(5)
