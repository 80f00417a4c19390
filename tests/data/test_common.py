import logging
import pickle
import types

import numpy as np
import pytest
import torch
import torch.utils.data as torch_data

from heron.data import common
from heron.data.common import (
    AspectRatioGroupedDataset,
    DatasetFromList,
    MapDataset,
    NumpySerializedList,
    ToIterableDataset,
    _MapIterableDataset,
    _shard_iterator_dataloader_worker,
    _TorchSerializedList,
    set_default_dataset_from_list_serialize_method,
)
from heron.data.samplers.distributed_sampler import InferenceSampler


def _dicts(n):
    return [{"image_id": i, "annotations": [{"bbox": [i, 0, 1, 1]}]} for i in range(n)]


# ---- DatasetFromList ----------------------------------------------------------------------


@pytest.mark.parametrize("serialize", [True, False])
def test_dataset_from_list_round_trips_items(serialize):
    items = _dicts(5) + [np.arange(3), "text", None]
    ds = DatasetFromList(items, serialize=serialize)
    assert len(ds) == len(items)
    for i, item in enumerate(items):
        got = ds[i]
        if isinstance(item, np.ndarray):
            np.testing.assert_array_equal(got, item)
        else:
            assert got == item


@pytest.mark.parametrize("serialize", [True, False])
def test_dataset_from_list_returns_copies(serialize):
    items = _dicts(3)
    ds = DatasetFromList(items, copy=True, serialize=serialize)
    got = ds[1]
    assert got is not items[1]
    got["annotations"][0]["bbox"][0] = 99
    assert ds[1]["annotations"][0]["bbox"][0] == 1
    assert items[1]["annotations"][0]["bbox"][0] == 1


def test_dataset_from_list_without_copy_or_serialize_returns_the_same_object():
    items = _dicts(2)
    assert DatasetFromList(items, copy=False, serialize=False)[0] is items[0]


def test_dataset_from_list_serializes_into_one_byte_tensor_by_default():
    ds = DatasetFromList(_dicts(4))
    assert isinstance(ds._lst, _TorchSerializedList)
    assert ds._lst._lst.dtype == torch.uint8 and ds._lst._lst.dim() == 1
    # end addresses are increasing and the last one is the buffer length
    ends = ds._lst._addr.tolist()
    assert ends == sorted(ends) and len(ends) == 4
    assert ends[-1] == len(ds._lst._lst)


def test_numpy_serialized_list_round_trips_and_uses_numpy_buffers():
    items = _dicts(3) + [{"x": "y" * 100}]
    lst = NumpySerializedList(items)
    assert lst._lst.dtype == np.uint8 and lst._lst.ndim == 1
    assert int(lst._addr[-1]) == len(lst._lst)
    assert [lst[i] for i in range(len(lst))] == items


@pytest.mark.parametrize("serialize", [True, False])
def test_dataset_from_list_survives_pickling(serialize):
    ds = DatasetFromList(_dicts(3), serialize=serialize)
    restored = pickle.loads(pickle.dumps(ds))
    assert [restored[i] for i in range(3)] == _dicts(3)


def test_dataset_from_list_empty():
    ds = DatasetFromList([])
    assert len(ds) == 0


def test_dataset_from_list_accepts_a_custom_serializer():
    calls = []

    def serializer(lst):
        calls.append(len(lst))
        return tuple(lst)

    ds = DatasetFromList([1, 2, 3], serialize=serializer)
    assert calls == [3]
    assert [ds[i] for i in range(3)] == [1, 2, 3]
    with set_default_dataset_from_list_serialize_method(serializer):
        DatasetFromList([4, 5])
    assert calls == [3, 2]
    assert isinstance(DatasetFromList([6])._lst, _TorchSerializedList)  # restored


def test_dataset_from_list_rejects_non_list():
    with pytest.raises(TypeError, match="lst must be a list, got dict"):
        DatasetFromList({"a": 1})
    with pytest.raises(TypeError, match="serialize must be a bool or a callable, got 'yes'"):
        DatasetFromList([1], serialize="yes")


# ---- MapDataset ---------------------------------------------------------------------------


def _none_for_odd(x):
    return None if x % 2 else x * 10


def test_map_dataset_replaces_rejected_items_with_valid_ones():
    ds = MapDataset(DatasetFromList(list(range(9))), _none_for_odd)
    assert len(ds) == 9
    assert ds[4] == 40  # accepted items map directly
    # odd indices are rejected; the fallback must be an accepted (even) item, mapped
    for i in range(9):
        assert ds[i] in {0, 20, 40, 60, 80}


def test_map_dataset_warns_after_three_consecutive_failures(caplog):
    calls = {"n": 0}

    def fail_three_times(x):
        calls["n"] += 1
        return None if calls["n"] <= 3 else x

    ds = MapDataset(DatasetFromList(list(range(10))), fail_three_times)
    with caplog.at_level(logging.WARNING, logger=common.__name__):
        assert ds[0] in range(1, 10)  # index 0 failed, a different one succeeded
    assert calls["n"] == 4
    warnings = [r for r in caplog.records if "retry count" in r.getMessage()]
    assert [r.getMessage().endswith("retry count: 3") for r in warnings] == [True]


def test_map_dataset_raises_when_every_item_is_rejected():
    ds = MapDataset(DatasetFromList([1, 2, 3]), lambda x: None)
    with pytest.raises(RuntimeError, match="map_func returned None for every item"):
        ds[0]


def test_map_dataset_survives_pickling():
    ds = MapDataset(DatasetFromList(list(range(4))), _none_for_odd)
    restored = pickle.loads(pickle.dumps(ds))
    assert isinstance(restored, MapDataset)
    assert [restored[i] for i in (0, 2)] == [0, 20]
    assert restored[1] in {0, 20}


class _Range(torch_data.IterableDataset):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter(range(self.n))

    def __len__(self):
        return self.n


def test_map_dataset_on_iterable_skips_rejected_items():
    ds = MapDataset(_Range(7), _none_for_odd)
    assert isinstance(ds, _MapIterableDataset)
    assert list(ds) == [0, 20, 40, 60]
    assert len(ds) == 7


# ---- ToIterableDataset --------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 3])
def test_to_iterable_dataset_with_two_workers_yields_each_index_once(chunk_size):
    size = 11
    ds = ToIterableDataset(
        DatasetFromList(list(range(size))), InferenceSampler(size), shard_chunk_size=chunk_size
    )
    assert len(ds) == size
    loader = torch_data.DataLoader(ds, batch_size=None, num_workers=2)
    got = [int(x) for x in loader]
    assert sorted(got) == list(range(size))


def test_to_iterable_dataset_in_main_process_follows_sampler_order():
    ds = ToIterableDataset(DatasetFromList(list("abcde")), InferenceSampler(5))
    assert list(ds) == list("abcde")


def test_shard_iterator_gives_worker_its_chunks(monkeypatch):
    # 3 workers, chunks of 2 over range(13): chunks [0,1] [2,3] [4,5] [6,7] [8,9] [10,11] [12]
    # worker 1 takes chunks 1 and 4; worker 0 takes chunks 0, 3 and the short chunk 6
    for worker_id, expected in [(0, [0, 1, 6, 7, 12]), (1, [2, 3, 8, 9]), (2, [4, 5, 10, 11])]:
        info = types.SimpleNamespace(id=worker_id, num_workers=3)
        monkeypatch.setattr(torch_data, "get_worker_info", lambda info=info: info)
        assert list(_shard_iterator_dataloader_worker(range(13), 2)) == expected


def test_to_iterable_dataset_rejects_bad_arguments():
    with pytest.raises(TypeError, match="map-style dataset"):
        ToIterableDataset(_Range(3), InferenceSampler(3))
    with pytest.raises(
        TypeError, match=r"sampler must be a torch\.utils\.data\.Sampler, got range"
    ):
        ToIterableDataset(DatasetFromList([1]), range(1))
    with pytest.raises(ValueError, match="shard_chunk_size must be > 0, got 0"):
        ToIterableDataset(DatasetFromList([1]), InferenceSampler(1), shard_chunk_size=0)


# ---- AspectRatioGroupedDataset ------------------------------------------------------------


def _img(i, w, h):
    return {"id": i, "width": w, "height": h}


def test_aspect_ratio_grouped_dataset_batches_same_orientation():
    # landscape (w > h): 0, 2, 3, 5; portrait or square: 1, 4, 6
    items = [_img(0, 4, 3), _img(1, 3, 4), _img(2, 5, 2), _img(3, 6, 1), _img(4, 2, 2)]
    items += [_img(5, 9, 8), _img(6, 1, 7)]
    batches = list(AspectRatioGroupedDataset(items, 2))
    assert [[d["id"] for d in b] for b in batches] == [[0, 2], [1, 4], [3, 5]]
    for batch in batches:
        assert len({d["width"] > d["height"] for d in batch}) == 1


def test_aspect_ratio_grouped_dataset_batch_size_one_and_empty():
    items = [_img(0, 4, 3), _img(1, 3, 4)]
    assert [[d["id"] for d in b] for b in AspectRatioGroupedDataset(items, 1)] == [[0], [1]]
    assert list(AspectRatioGroupedDataset([], 2)) == []


def test_aspect_ratio_grouped_dataset_errors():
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        AspectRatioGroupedDataset([], 0)
    with pytest.raises(KeyError, match="needs 'width' and 'height'"):
        list(AspectRatioGroupedDataset([{"width": 3}], 2))
