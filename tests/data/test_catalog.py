from __future__ import annotations

import logging
import uuid

import numpy as np
import pytest

from heron.data.catalog import DatasetCatalog, Metadata, MetadataCatalog, _DatasetCatalog


def _unique(prefix: str) -> str:
    # the catalogs are process-global; unique names keep tests independent under xdist
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def test_register_then_get_calls_the_function_each_time():
    calls = []
    name = _unique("ds")

    def load():
        calls.append(1)
        return [{"image_id": 1}]

    DatasetCatalog.register(name, load)
    try:
        assert calls == []  # lazy: nothing runs at registration
        assert DatasetCatalog.get(name) == [{"image_id": 1}]
        assert DatasetCatalog.get(name) == [{"image_id": 1}]
        assert len(calls) == 2
        assert name in DatasetCatalog.list()
    finally:
        DatasetCatalog.remove(name)
    assert name not in DatasetCatalog.list()


def test_register_twice_raises_naming_the_dataset():
    catalog = _DatasetCatalog()
    catalog.register("twice", lambda: [])
    with pytest.raises(ValueError, match="'twice' is already registered"):
        catalog.register("twice", lambda: [])


def test_register_rejects_non_callable():
    with pytest.raises(TypeError, match="func must be callable, got list"):
        _DatasetCatalog().register("x", [])


def test_get_unknown_lists_registered_names_sorted():
    catalog = _DatasetCatalog()
    catalog.register("zeta", lambda: [])
    catalog.register("alpha", lambda: [])
    with pytest.raises(
        KeyError, match=r"'nope' is not registered\. Available datasets: alpha, zeta"
    ):
        catalog.get("nope")


def test_remove_unknown_raises_keyerror():
    with pytest.raises(KeyError):
        _DatasetCatalog().remove("missing")


def test_clear_and_repr():
    catalog = _DatasetCatalog()
    catalog.register("a", lambda: [])
    assert "a" in repr(catalog)
    catalog.clear()
    assert catalog.list() == []


def test_metadata_catalog_creates_on_first_use_and_returns_same_object():
    name = _unique("meta")
    try:
        meta = MetadataCatalog.get(name)
        assert meta.name == name
        assert MetadataCatalog.get(name) is meta
        assert name in MetadataCatalog.list()
    finally:
        MetadataCatalog.remove(name)
    assert name not in MetadataCatalog.list()
    with pytest.raises(KeyError):
        MetadataCatalog.remove(name)


def test_metadata_set_once_same_value_is_fine_different_raises():
    meta = Metadata(name="toy")
    meta.thing_classes = ["cat", "dog"]
    meta.thing_classes = ["cat", "dog"]  # same value again: allowed
    with pytest.raises(ValueError, match=r"'thing_classes'.*'toy'.*\['cat', 'dog'\].*\['dog'\]"):
        meta.thing_classes = ["dog"]
    assert meta.thing_classes == ["cat", "dog"]


def test_metadata_set_once_compares_arrays_elementwise():
    meta = Metadata(name="arr", colors=np.array([1, 2, 3]))
    meta.colors = np.array([1, 2, 3])
    with pytest.raises(ValueError, match="'colors'"):
        meta.colors = np.array([1, 2, 4])


def test_metadata_set_returns_self_and_get_has_default():
    meta = Metadata(name="toy")
    assert meta.set(evaluator_type="coco", json_file="a.json") is meta
    assert meta.get("evaluator_type") == "coco"
    assert meta.get("missing") is None
    assert meta.get("missing", 7) == 7
    assert meta.as_dict() == {"name": "toy", "evaluator_type": "coco", "json_file": "a.json"}


def test_metadata_missing_attribute_names_key_dataset_and_available_keys():
    meta = Metadata(name="toy", thing_classes=["a"])
    with pytest.raises(AttributeError, match=r"'stuff_colors'.*'toy'.*\['name', 'thing_classes'\]"):
        _ = meta.stuff_colors


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("class_names", "thing_classes"),
        ("dataset_id_to_contiguous_id", "thing_dataset_id_to_contiguous_id"),
        ("stuff_class_names", "stuff_classes"),
    ],
)
def test_metadata_renamed_keys_warn_and_redirect(caplog, old, new):
    meta = Metadata(name="toy")
    with caplog.at_level(logging.WARNING, logger="heron.data.catalog"):
        setattr(meta, old, ["x"])
        assert getattr(meta, old) == ["x"]
    assert getattr(meta, new) == ["x"]
    assert old not in meta.as_dict()
    assert f"'{old}' was renamed to '{new}'" in caplog.text


def test_metadata_is_copyable_and_picklable():
    import copy
    import pickle

    meta = Metadata(name="toy", thing_classes=["a"])
    assert copy.deepcopy(meta).as_dict() == meta.as_dict()
    assert pickle.loads(pickle.dumps(meta)).as_dict() == meta.as_dict()
