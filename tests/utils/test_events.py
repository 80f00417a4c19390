from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from heron.utils.events import (
    EventStorage,
    HistoryBuffer,
    get_event_storage,
    has_event_storage,
    try_get_event_storage,
)

# ---------------------------------------------------------------- HistoryBuffer


def test_history_buffer_statistics_over_windows():
    buf = HistoryBuffer()
    for v in [1.0, 5.0, 2.0, 8.0]:
        buf.update(v)
    assert buf.latest() == 8.0
    assert buf.median(3) == 5.0  # median of [5, 2, 8]
    assert buf.avg(2) == 5.0  # (2 + 8) / 2
    assert buf.avg(100) == 4.0  # window larger than the data: (1 + 5 + 2 + 8) / 4
    assert buf.median(4) == 3.5  # (2 + 5) / 2
    assert buf.global_avg() == 4.0
    # default iteration is the count of values added before
    assert buf.values() == [(1.0, 0), (5.0, 1), (2.0, 2), (8.0, 3)]


def test_history_buffer_max_length_drops_oldest_but_global_avg_keeps_all():
    buf = HistoryBuffer(max_length=2)
    assert buf.max_length == 2
    for it, v in zip([10, 20, 30], [3.0, 6.0, 9.0]):
        buf.update(v, iteration=it)
    assert buf.values() == [(6.0, 20), (9.0, 30)]
    assert buf.avg(10) == 7.5  # (6 + 9) / 2
    assert buf.global_avg() == 6.0  # (3 + 6 + 9) / 3


def test_history_buffer_single_value():
    buf = HistoryBuffer()
    buf.update(2.5, iteration=7)
    assert buf.latest() == buf.median(20) == buf.avg(1) == buf.global_avg() == 2.5
    assert buf.values() == [(2.5, 7)]


def test_history_buffer_empty_raises_on_statistics_and_averages_to_zero():
    buf = HistoryBuffer()
    assert buf.values() == []
    assert buf.global_avg() == 0.0
    for call in (buf.latest, lambda: buf.median(5), lambda: buf.avg(5)):
        with pytest.raises(IndexError, match="HistoryBuffer is empty"):
            call()


def test_history_buffer_rejects_bad_sizes():
    with pytest.raises(ValueError, match="max_length must be >= 1, got 0"):
        HistoryBuffer(max_length=0)
    buf = HistoryBuffer()
    buf.update(1.0)
    with pytest.raises(ValueError, match="window_size must be >= 1, got 0"):
        buf.median(0)


# ---------------------------------------------------------------- storage stack


def test_get_event_storage_without_open_storage_raises_clear_error():
    assert not has_event_storage()
    assert try_get_event_storage() is None
    with pytest.raises(RuntimeError, match=r"inside a 'with EventStorage\(...\)' context"):
        get_event_storage()


def test_storage_context_pushes_and_pops_with_nesting():
    with EventStorage() as outer:
        assert get_event_storage() is outer
        assert has_event_storage()
        with EventStorage(start_iter=5) as inner:
            assert get_event_storage() is inner
            assert try_get_event_storage() is inner
        assert get_event_storage() is outer
    assert not has_event_storage()


def test_storage_is_popped_when_the_block_raises():
    with pytest.raises(ZeroDivisionError), EventStorage():
        1 / 0  # noqa: B018
    assert try_get_event_storage() is None


def test_exiting_storages_out_of_order_raises():
    a, b = EventStorage(), EventStorage()
    a.__enter__()
    b.__enter__()
    try:
        with pytest.raises(RuntimeError, match="out of order"):
            a.__exit__(None, None, None)
    finally:
        b.__exit__(None, None, None)
        a.__exit__(None, None, None)
    assert not has_event_storage()


# ---------------------------------------------------------------- scalars


def test_put_scalar_records_value_iteration_and_history():
    storage = EventStorage(start_iter=3)
    storage.put_scalar("loss", torch.tensor(0.5))
    storage.step()
    storage.put_scalar("loss", 0.25)
    assert storage.latest() == {"loss": (0.25, 4)}
    assert storage.history("loss").values() == [(0.5, 3), (0.25, 4)]
    assert isinstance(storage.latest()["loss"][0], float)
    assert storage.smoothing_hints() == {"loss": True}
    assert set(storage.histories()) == {"loss"}


def test_put_scalar_with_explicit_cur_iter():
    storage = EventStorage()
    storage.put_scalar("lr", 0.1, smoothing_hint=False, cur_iter=42)
    assert storage.latest() == {"lr": (0.1, 42)}
    assert storage.iter == 0


def test_put_scalar_conflicting_smoothing_hint_raises():
    storage = EventStorage()
    storage.put_scalar("lr", 0.1, smoothing_hint=False)
    with pytest.raises(ValueError, match=r"'lr' was put with smoothing_hint=False before"):
        storage.put_scalar("lr", 0.2, smoothing_hint=True)
    assert storage.latest() == {"lr": (0.1, 0)}  # the rejected value was not recorded


def test_put_scalars_records_each_keyword():
    storage = EventStorage()
    storage.put_scalars(loss_cls=1.0, loss_box=2.0, smoothing_hint=False, cur_iter=9)
    assert storage.latest() == {"loss_cls": (1.0, 9), "loss_box": (2.0, 9)}
    assert storage.smoothing_hints() == {"loss_cls": False, "loss_box": False}


def test_put_scalars_with_no_keywords_records_nothing():
    storage = EventStorage()
    storage.put_scalars()
    assert storage.latest() == {}
    assert storage.histories() == {}


def test_history_of_unknown_name_lists_known_names():
    storage = EventStorage()
    storage.put_scalars(b=1.0, a=2.0)
    with pytest.raises(KeyError, match=r"'c'; known scalars: a, b"):
        storage.history("c")
    with pytest.raises(KeyError, match=r"known scalars: \(none\)"):
        EventStorage().history("c")


def test_latest_with_smoothing_hint_uses_median_over_last_iterations():
    storage = EventStorage()
    for it, v in enumerate([10.0, 1.0, 2.0, 3.0, 100.0]):
        storage.iter = it
        storage.put_scalar("smooth", v)
        storage.put_scalar("raw", v, smoothing_hint=False)
    result = storage.latest_with_smoothing_hint(window_size=3)
    # iterations 2, 3, 4 are within 3 of the latest (4): median(2, 3, 100) = 3
    assert result["smooth"] == (3.0, 4)
    assert result["raw"] == (100.0, 4)


def test_latest_with_smoothing_hint_counts_iterations_not_samples():
    storage = EventStorage()
    # two values at iteration 0, then one at 10: only the latter is within 5 iterations
    storage.put_scalar("x", 1.0, cur_iter=0)
    storage.put_scalar("x", 2.0, cur_iter=0)
    storage.put_scalar("x", 7.0, cur_iter=10)
    assert storage.count_samples("x", window_size=5) == 1
    assert storage.count_samples("x", window_size=11) == 3
    assert storage.latest_with_smoothing_hint(window_size=5) == {"x": (7.0, 10)}
    assert storage.latest_with_smoothing_hint(window_size=11) == {"x": (2.0, 10)}


def test_latest_with_smoothing_hint_of_empty_storage_is_empty():
    assert EventStorage().latest_with_smoothing_hint() == {}


# ---------------------------------------------------------------- iteration


def test_step_iter_setter_and_iteration_alias():
    storage = EventStorage(start_iter=7)
    assert storage.iter == storage.iteration == 7
    storage.step()
    assert storage.iter == 8
    storage.iter = 20.0
    assert storage.iter == 20 and isinstance(storage.iter, int)
    assert storage.iteration == 20


# ---------------------------------------------------------------- name scopes


def test_name_scope_prefixes_scalars_and_restores_after_block():
    storage = EventStorage()
    with storage.name_scope("val/"):
        storage.put_scalar("loss", 1.0)
    storage.put_scalar("loss", 2.0)
    assert storage.latest() == {"val/loss": (1.0, 0), "loss": (2.0, 0)}


def test_nested_name_scope_replaces_outer_prefix_as_in_detectron2():
    storage = EventStorage()
    with storage.name_scope("a"):
        with storage.name_scope("b"):
            storage.put_scalar("x", 1.0)
        storage.put_scalar("y", 2.0)
    assert set(storage.latest()) == {"b/x", "a/y"}


def test_name_scope_restores_prefix_when_block_raises():
    storage = EventStorage()
    with pytest.raises(RuntimeError), storage.name_scope("s"):
        raise RuntimeError("inside")
    storage.put_scalar("z", 0.0)
    assert set(storage.latest()) == {"z"}


# ---------------------------------------------------------------- images and histograms


def test_put_image_queues_with_iteration_and_clear_images_drops_them():
    storage = EventStorage(start_iter=2)
    img = torch.zeros(3, 4, 5)
    storage.put_image("vis", img)
    assert len(storage._vis_data) == 1
    name, tensor, itr = storage._vis_data[0]
    assert (name, itr) == ("vis", 2)
    assert tensor is img
    storage.clear_images()
    assert storage._vis_data == []


def test_put_histogram_matches_numpy_histogram():
    storage = EventStorage(start_iter=11)
    values = torch.tensor([0.0, 1.0, 2.0, 3.0, 3.0])
    storage.put_histogram("w", values, bins=3)
    (hist,) = storage._histograms
    ref_counts, ref_edges = np.histogram(values.numpy(), bins=3)
    assert hist["tag"] == "w"
    assert hist["global_step"] == 11
    assert (hist["min"], hist["max"], hist["num"]) == (0.0, 3.0, 5)
    assert hist["sum"] == 9.0  # 0 + 1 + 2 + 3 + 3
    assert hist["sum_squares"] == 23.0  # 0 + 1 + 4 + 9 + 9
    np.testing.assert_allclose(hist["bucket_limits"], ref_edges[1:], rtol=1e-6)  # [1, 2, 3]
    assert hist["bucket_counts"] == ref_counts.tolist()  # [1, 1, 3]
    storage.clear_histograms()
    assert storage._histograms == []


def test_put_histogram_flattens_and_accepts_integer_tensors():
    storage = EventStorage()
    storage.put_histogram("ints", torch.tensor([[1, 2], [3, 4]]), bins=2)
    hist = storage._histograms[0]
    assert hist["num"] == 4
    assert hist["bucket_counts"] == [2.0, 2.0]  # [1, 2.5) and [2.5, 4]
    assert hist["bucket_limits"] == [2.5, 4.0]
    assert math.isclose(hist["sum_squares"], 30.0)  # 1 + 4 + 9 + 16


def test_put_histogram_empty_tensor_or_bad_bins_raise():
    storage = EventStorage()
    with pytest.raises(ValueError, match=r"put_histogram\('e'\): hist_tensor is empty"):
        storage.put_histogram("e", torch.zeros(0))
    with pytest.raises(ValueError, match="bins must be >= 1, got 0"):
        storage.put_histogram("b", torch.ones(3), bins=0)
    assert storage._histograms == []
