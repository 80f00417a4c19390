from __future__ import annotations

import json
import logging
import sys

import pytest
import torch

import heron.utils.events as events_module
from heron.utils.events import (
    CommonMetricPrinter,
    EventStorage,
    EventWriter,
    JSONWriter,
    TensorboardXWriter,
)

LOGGER = "heron.utils.events"


def _printed_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _put_training_history(storage: EventStorage) -> None:
    """Iterations 6..10 of a run, as a trainer would put them."""
    for itr, loss, t, dt in zip(
        range(6, 11),
        [5.0, 1.0, 3.0, 2.0, 4.0],
        [0.4, 0.6, 0.5, 0.7, 0.3],
        [0.1, 0.2, 0.3, 0.4, 0.5],
    ):
        storage.iter = itr
        storage.put_scalar("total_loss", loss)
        storage.put_scalar("time", t)
        storage.put_scalar("data_time", dt)
        storage.put_scalar("lr", 0.02, smoothing_hint=False)


# ---------------------------------------------------------------- EventWriter


def test_event_writer_base_close_is_a_no_op_and_write_must_be_overridden():
    writer = EventWriter()
    writer.close()
    with pytest.raises(NotImplementedError, match="EventWriter must implement write"):
        writer.write()


# ---------------------------------------------------------------- CommonMetricPrinter


def test_printer_line_has_detectron2_layout_values_and_eta(caplog, no_cuda):
    caplog.set_level(logging.INFO, logger=LOGGER)
    with EventStorage(start_iter=6) as storage:
        _put_training_history(storage)
        CommonMetricPrinter(max_iter=100, window_size=3).write()
        # eta: median of all times = median(0.4, 0.6, 0.5, 0.7, 0.3) = 0.5 s,
        #      times (max_iter - iter - 1) = (100 - 10 - 1) = 89 iterations -> 44.5 s -> 0:00:44
        assert storage.history("eta_seconds").latest() == pytest.approx(44.5)
    # total_loss: window 3 covers iterations 8, 9, 10 -> median(3, 2, 4) = 3
    # time: mean of all = 2.5 / 5 = 0.5; last_time 0.3
    # data_time: mean over iterations 8..10 = (0.3 + 0.4 + 0.5) / 3 = 0.4; last 0.5
    expected = (
        " eta: 0:00:44  iter: 10  total_loss: 3    time: 0.5000  last_time: 0.3000  "
        "data_time: 0.4000  last_data_time: 0.5000   lr: 0.02  "
    )
    assert _printed_lines(caplog) == [expected]


def test_printer_prints_every_loss_and_metric_scalar_in_put_order(caplog, no_cuda):
    caplog.set_level(logging.INFO, logger=LOGGER)
    with EventStorage(start_iter=3) as storage:
        storage.put_scalar("total_loss", 1.5)
        storage.put_scalar("loss_cls", 0.25)
        storage.put_scalar("fast_rcnn/cls_accuracy", 0.9)  # neither a loss nor a [metric]
        storage.put_scalar("[metric]mAP", 0.125)
        storage.put_scalar("loss_box_reg", 1.0 / 3.0)
        CommonMetricPrinter(max_iter=None).write()
    # no max_iter: no ETA; no time/data_time history: no timings; no lr: "N/A"
    expected = (
        " iter: 3  total_loss: 1.5  loss_cls: 0.25  loss_box_reg: 0.3333  "
        "[metric]mAP: 0.125   lr: N/A  "
    )
    assert _printed_lines(caplog) == [expected]


def test_printer_reports_max_mem_in_megabytes_when_cuda_is_available(caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger=LOGGER)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: 1536 * 1024 * 1024)
    with EventStorage() as storage:
        storage.put_scalar("loss", 2.0)
        CommonMetricPrinter().write()
    # 1536 MiB -> "1536M"
    assert _printed_lines(caplog) == [" iter: 0  loss: 2     lr: N/A  max_mem: 1536M"]


def test_printer_estimates_eta_from_wall_clock_without_time_history(caplog, monkeypatch, no_cuda):
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = iter([100.0, 105.0])
    monkeypatch.setattr(events_module.time, "perf_counter", lambda: next(clock))
    printer = CommonMetricPrinter(max_iter=100)
    with EventStorage() as storage:
        storage.put_scalar("loss", 1.0)
        printer.write()  # first write: nothing to measure yet, no ETA
        storage.iter = 10
        printer.write()
    # 5 s over 10 iterations = 0.5 s/iter, times (100 - 10 - 1) = 89 -> 44.5 s -> 0:00:44
    first, second = _printed_lines(caplog)
    assert "eta:" not in first
    assert second.startswith(" eta: 0:00:44  iter: 10  loss: 1")


def test_printer_writes_at_most_once_per_iteration_and_not_at_max_iter(caplog, no_cuda):
    caplog.set_level(logging.INFO, logger=LOGGER)
    printer = CommonMetricPrinter(max_iter=5)
    with EventStorage(start_iter=3) as storage:
        storage.put_scalar("loss", 1.0)
        printer.write()
        printer.write()  # same iteration: skipped
        storage.iter = 4
        printer.write()
        storage.iter = 5  # == max_iter: training is over, nothing printed
        printer.write()
    lines = _printed_lines(caplog)
    assert [line.split("iter: ")[1].split()[0] for line in lines] == ["3", "4"]


# ---------------------------------------------------------------- JSONWriter


def _read_json_lines(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_json_writer_writes_only_scalars_updated_since_last_write(tmp_path):
    path = tmp_path / "metrics.json"
    writer = JSONWriter(str(path))
    with EventStorage() as storage:
        storage.put_scalar("a", 1.0)
        storage.step()
        storage.put_scalar("a", 3.0)
        storage.put_scalar("b", 7.0, smoothing_hint=False)
        writer.write()
        storage.step()
        storage.put_scalar("a", 5.0)
        writer.write()
        writer.write()  # nothing new: no line
    writer.close()
    assert _read_json_lines(path) == [
        {"a": 2.0, "b": 7.0, "iteration": 1},  # a: median(1, 3) = 2; b unsmoothed
        {"a": 3.0, "iteration": 2},  # a: median(1, 3, 5) = 3; b not updated
    ]


def test_json_writer_groups_scalars_by_iteration_in_increasing_order(tmp_path):
    path = tmp_path / "metrics.json"
    writer = JSONWriter(str(path), window_size=1)
    with EventStorage(start_iter=10) as storage:
        storage.put_scalar("late", 4.0, cur_iter=12)
        storage.put_scalar("early", 2.0, cur_iter=11)
        writer.write()
    writer.close()
    assert _read_json_lines(path) == [
        {"early": 2.0, "iteration": 11},
        {"late": 4.0, "iteration": 12},
    ]


def test_json_writer_appends_to_an_existing_file_and_flushes_each_write(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"iteration": 0, "old": 1}) + "\n")
    writer = JSONWriter(str(path))
    with EventStorage(start_iter=1) as storage:
        storage.put_scalar("loss", 0.5)
        writer.write()
        # flushed: readable before close
        assert _read_json_lines(path) == [
            {"iteration": 0, "old": 1},
            {"iteration": 1, "loss": 0.5},
        ]
    writer.close()


# ---------------------------------------------------------------- TensorboardXWriter


def test_tensorboard_writer_round_trips_scalars_images_and_histograms(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    writer = TensorboardXWriter(str(tmp_path), window_size=1)
    with EventStorage() as storage:
        storage.put_scalar("loss", 1.5)
        storage.put_image("vis", torch.zeros(3, 4, 5))
        storage.put_histogram("weights", torch.tensor([0.0, 1.0, 1.0, 3.0]), bins=3)
        writer.write()
        assert storage._vis_data == [] and storage._histograms == []  # consumed
        storage.step()
        storage.put_scalar("loss", 0.5)
        storage.put_scalar("lr", 0.1, smoothing_hint=False)
        writer.write()
    writer.close()

    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(0, 1.5), (1, 0.5)]
    assert [(e.step, pytest.approx(e.value)) for e in acc.Scalars("lr")] == [(1, 0.1)]
    images = acc.Images("vis")
    assert [(e.step, e.width, e.height) for e in images] == [(0, 5, 4)]
    (hist,) = acc.Histograms("weights")
    # 4 values in [0, 3], 3 buckets of width 1: counts [1, 2, 1]
    assert hist.step == 0
    assert (hist.histogram_value.min, hist.histogram_value.max) == (0.0, 3.0)
    assert hist.histogram_value.num == 4
    assert hist.histogram_value.sum == 5.0 and hist.histogram_value.sum_squares == 11.0
    assert list(hist.histogram_value.bucket) == [1.0, 2.0, 1.0]


def test_tensorboard_writer_without_tensorboard_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r"pip install 'heron\[tb\]'"):
        TensorboardXWriter(str(tmp_path))
