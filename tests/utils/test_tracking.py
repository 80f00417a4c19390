from __future__ import annotations

import glob
import json
import os
import struct
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from heron.config.config import CfgNode
from heron.utils.events import EventStorage
from heron.utils.tracking import MLflowWriter, WandbWriter, _mlflow_key, flatten_config

# ---------------------------------------------------------------- flatten_config


def test_flatten_config_joins_nested_keys_with_dots():
    cfg = CfgNode({"MODEL": CfgNode({"RPN": CfgNode({"IOU": [0.3, 0.7]}), "ON": True})})
    cfg.LR = 0.02
    assert flatten_config(cfg) == {"MODEL.RPN.IOU": [0.3, 0.7], "MODEL.ON": True, "LR": 0.02}
    assert flatten_config({"a": {"b": 1}}, prefix="x.") == {"x.a.b": 1}
    assert flatten_config({}) == {}


def test_flatten_config_rejects_non_mappings():
    with pytest.raises(TypeError, match="config must be a dict, CfgNode or DictConfig"):
        flatten_config([1, 2])


# ---------------------------------------------------------------- MLflow


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("loss_cls", "loss_cls"),
        ("fast_rcnn/cls_accuracy", "fast_rcnn/cls_accuracy"),
        ("[metric] acc:top1", "_metric_ acc_top1"),
        ("/a//b/", "a/b"),
        ("./x/../y", "_/x/_/y"),
        ("///", "_"),
    ],
)
def test_mlflow_key_sanitises_names_mlflow_refuses(name, key):
    from mlflow.utils.validation import _validate_metric_name

    assert _mlflow_key(name) == key
    _validate_metric_name(key)  # raises if MLflow would refuse it


@pytest.mark.parametrize("as_uri", [True, False])
def test_mlflow_writer_logs_params_and_scalars_per_iteration_to_a_local_store(
    tmp_path, monkeypatch, as_uri
):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = tmp_path / "mlruns"
    uri = store.as_uri() if as_uri else str(store)
    writer = MLflowWriter(
        tracking_uri=uri,
        experiment_name="exp",
        run_name="r1",
        params={"SOLVER": {"BASE_LR": 0.02}, "bad:key": [1, 2]},
        window_size=1,
    )
    with EventStorage() as storage:
        storage.put_scalar("loss", 2.0)
        storage.put_scalar("[metric]ap", 0.5, smoothing_hint=False)
        writer.write()
        storage.step()
        storage.put_scalar("loss", 1.0)
        writer.write()
    writer.close()

    client = MlflowClient(tracking_uri=store.as_uri())
    run = client.get_run(writer.run_id)
    assert run.info.run_name == "r1" and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "exp"
    assert run.data.params == {"SOLVER.BASE_LR": "0.02", "bad_key": "[1, 2]"}
    history = client.get_metric_history(writer.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(0, 2.0), (1, 1.0)]
    # "[metric]ap" was put once, at iteration 0, and is not logged again at iteration 1
    ap = client.get_metric_history(writer.run_id, "_metric_ap")
    assert [(m.step, m.value) for m in ap] == [(0, 0.5)]


def test_mlflow_writer_without_mlflow_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ImportError, match=r"pip install 'heron\[mlflow\]'"):
        MLflowWriter(tracking_uri="unused")


# ---------------------------------------------------------------- Weights & Biases


def _read_wandb_records(run_file: str) -> dict[str, list]:
    """Read the records of an offline run's ``.wandb`` file, by record type.

    wandb ships no offline reader, so this parses the file directly: a 7-byte header
    (":W&B", magic, version), then LevelDB-log records in 32 KiB blocks (7-byte header:
    crc32, little-endian length, type 1=full 2=first 3=middle 4=last), each a serialized
    ``wandb_internal_pb2.Record``.
    """
    from wandb.proto import wandb_internal_pb2

    with open(run_file, "rb") as f:
        data = f.read()
    records: dict[str, list] = {}
    if data[:4] != b":W&B":
        return records  # header not written yet
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer too short for a header: padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):
            break  # a record still being written
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            records.setdefault(record.WhichOneof("record_type"), []).append(record)
    return records


def _read_wandb_history(run_file: str) -> dict[int, dict[str, object]]:
    """Return the logged history rows of an offline run, by step."""
    rows: dict[int, dict[str, object]] = {}
    for record in _read_wandb_records(run_file).get("history", []):
        items = record.history.item
        row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}
        rows[int(row["_step"])] = row
    return rows


def test_wandb_writer_offline_run_keeps_scalars_and_images_per_iteration(tmp_path, monkeypatch):
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    writer = WandbWriter(
        project="heron-test",
        config={"SOLVER": {"BASE_LR": 0.02}},
        mode="offline",
        dir=str(tmp_path),
        window_size=1,
    )
    assert writer.run.config["SOLVER.BASE_LR"] == 0.02
    with EventStorage() as storage:
        storage.put_scalar("loss", 2.0)
        storage.put_image("vis", torch.ones(3, 4, 5))  # float 1.0 -> white, 5 wide, 4 high
        writer.write()
        assert storage._vis_data == []
        storage.iter = 3
        storage.put_scalar("loss", 1.0)
        storage.put_scalar("lr", 0.1, smoothing_hint=False)
        writer.write()
    writer.close()

    (run_dir,) = glob.glob(os.path.join(tmp_path, "wandb", "offline-run-*"))
    (run_file,) = glob.glob(os.path.join(run_dir, "run-*.wandb"))
    # wandb-core writes the run file in its own process and finish() can return before it
    # has; wait (at most 10 s) for the run's final "exit" record.
    deadline = time.monotonic() + 10.0
    while "exit" not in _read_wandb_records(run_file) and time.monotonic() < deadline:
        time.sleep(0.05)
    rows = _read_wandb_history(run_file)
    assert sorted(rows) == [0, 3]
    assert rows[0]["loss"] == 2.0 and "lr" not in rows[0]
    assert (rows[0]["vis/width"], rows[0]["vis/height"]) == (5, 4)
    with Image.open(os.path.join(run_dir, "files", rows[0]["vis/path"])) as png:
        pixels = np.asarray(png.convert("RGB"))
    assert pixels.shape == (4, 5, 3) and (pixels == 255).all()
    assert rows[3]["loss"] == 1.0 and rows[3]["lr"] == 0.1


def test_wandb_writer_without_wandb_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match=r"pip install 'heron\[wandb\]'"):
        WandbWriter(mode="offline")
