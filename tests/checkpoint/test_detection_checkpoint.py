import logging
import os
import pickle

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from heron.checkpoint.detection_checkpoint import DetectionCheckpointer
from heron.utils.safe_pickle import UnsafePickleError
from tests.checkpoint.helpers import ConvNorm, FrozenBN, captured_records

_PREFIX = "backbone.bottom_up."


@pytest.fixture
def det_log():
    with captured_records("heron.checkpoint.detection_checkpoint") as records:
        yield records


_FrozenBN = FrozenBN
_ConvNorm = ConvNorm


class _TinyDetector(nn.Module):
    """Detectron2 key layout: backbone.bottom_up.{stem.conv1, res2.0.conv1, res2.0.shortcut}."""

    def __init__(self, with_pixel_buffers=False):
        super().__init__()
        bottom_up = nn.Module()
        bottom_up.stem = nn.Module()
        bottom_up.stem.conv1 = _ConvNorm(3, 4, 3)
        block = nn.Module()
        block.conv1 = _ConvNorm(4, 4, 1)
        block.shortcut = _ConvNorm(4, 8, 1)
        bottom_up.res2 = nn.Sequential(block)
        self.backbone = nn.Module()
        self.backbone.bottom_up = bottom_up
        if with_pixel_buffers:  # persistent, as in old Detectron2 models
            self.register_buffer("pixel_mean", torch.zeros(3, 1, 1))
            self.register_buffer("pixel_std", torch.ones(3, 1, 1))


def _distinct_values(model):
    """model.state_dict() with every tensor replaced by distinct float32 arrays."""
    return {
        key: np.arange(value.numel(), dtype=np.float32).reshape(value.shape) + 1000 * i
        for i, (key, value) in enumerate(model.state_dict().items())
    }


def _assert_loaded(model, expected):
    state = model.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(state[key], torch.as_tensor(value), rtol=0, atol=0)


def _write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)
    return str(path)


# ---------------------------------------------------------------- .pkl files


def test_detectron2_zoo_pkl_loads_exactly(tmp_path):
    weights = _distinct_values(_TinyDetector())
    path = _write_pickle(
        tmp_path / "model_final.pkl", {"model": weights, "__author__": "Detectron2 Model Zoo"}
    )
    model = _TinyDetector()
    rest = DetectionCheckpointer(model).load(path)
    _assert_loaded(model, weights)
    assert rest == {"__author__": "Detectron2 Model Zoo"}


def test_zoo_pkl_asking_for_matching_heuristics_matches_by_suffix(tmp_path):
    full = _distinct_values(_TinyDetector())
    backbone_only = {k[len(_PREFIX) :]: v for k, v in full.items()}
    path = _write_pickle(
        tmp_path / "r50.pkl",
        {"model": backbone_only, "__author__": "torchvision", "matching_heuristics": True},
    )
    model = _TinyDetector()
    DetectionCheckpointer(model).load(path)
    _assert_loaded(model, full)


def test_caffe2_detectron1_pkl_is_renamed_and_loaded(tmp_path, det_log):
    model = _TinyDetector()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    c2_to_d2 = {  # by hand from the Caffe2 naming rules
        "conv1_w": "stem.conv1.weight",
        "res_conv1_bn_s": "stem.conv1.norm.weight",
        "res_conv1_bn_b": "stem.conv1.norm.bias",
        "res2_0_branch2a_w": "res2.0.conv1.weight",
        "res2_0_branch2a_bn_s": "res2.0.conv1.norm.weight",
        "res2_0_branch2a_bn_b": "res2.0.conv1.norm.bias",
        "res2_0_branch1_w": "res2.0.shortcut.weight",
        "res2_0_branch1_bn_s": "res2.0.shortcut.norm.weight",
        "res2_0_branch1_bn_b": "res2.0.shortcut.norm.bias",
    }
    blobs = {
        c2: np.full(shapes[_PREFIX + d2], float(i), np.float32)
        for i, (c2, d2) in enumerate(c2_to_d2.items())
    }
    blobs["res2_0_branch2a_w_momentum"] = np.zeros((4, 4, 1, 1), np.float32)  # solver state
    path = _write_pickle(tmp_path / "model_final.pkl", {"blobs": blobs, "cfg": "..."})

    rest = DetectionCheckpointer(model).load(path)

    _assert_loaded(model, {_PREFIX + d2: blobs[c2] for c2, d2 in c2_to_d2.items()})
    assert rest == {"__author__": "Caffe2", "matching_heuristics": True}
    warning = "\n".join(r.getMessage() for r in det_log if r.levelno >= logging.WARNING)
    assert "momentum" not in warning  # dropped, not reported as unexpected
    assert "running_mean" in warning  # not in the file: reported missing


def test_imagenet_caffe2_pkl_without_blobs_loads(tmp_path):
    model = _TinyDetector()
    stem = np.full((4, 3, 3, 3), 2.5, np.float32)
    path = _write_pickle(tmp_path / "R-50.pkl", {"conv1_w": stem, "fc1000_b": np.zeros(10)})
    DetectionCheckpointer(model).load(path)
    _assert_loaded(model, {_PREFIX + "stem.conv1.weight": stem})


class _RunsShellCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_malicious_pkl_is_refused_without_running(tmp_path):
    marker = tmp_path / "marker"
    path = _write_pickle(
        tmp_path / "evil.pkl", {"model": {}, "x": _RunsShellCommand(f"touch {marker}")}
    )
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl"):
        DetectionCheckpointer(_TinyDetector()).load(path)
    assert not marker.exists()


def test_pkl_that_is_not_a_dict_raises(tmp_path):
    path = _write_pickle(tmp_path / "list.pkl", [1, 2])
    with pytest.raises(ValueError, match=r"list\.pkl holds a list"):
        DetectionCheckpointer(_TinyDetector()).load(path)


# ---------------------------------------------------------------- .pth and .pyth files


def test_bare_state_dict_pth_loads(tmp_path):
    source = _TinyDetector()
    with torch.no_grad():
        for p in source.parameters():
            p.uniform_()
    path = tmp_path / "bare.pth"
    torch.save(source.state_dict(), path)
    model = _TinyDetector()
    assert DetectionCheckpointer(model).load(str(path)) == {}
    _assert_loaded(model, source.state_dict())


def test_url_query_turns_on_matching_heuristics(tmp_path):
    full = _distinct_values(_TinyDetector())
    path = tmp_path / "backbone.pth"
    torch.save({k[len(_PREFIX) :]: torch.as_tensor(v) for k, v in full.items()}, path)

    with pytest.raises(ValueError, match=r"backbone\.pth.*None of the checkpoint's keys match"):
        DetectionCheckpointer(_TinyDetector()).load(str(path))
    model = _TinyDetector()
    rest = DetectionCheckpointer(model).load(f"{path}?matching_heuristics=True")
    _assert_loaded(model, full)
    assert rest == {"matching_heuristics": True}


def test_unsupported_url_query_raises(tmp_path):
    path = tmp_path / "m.pth"
    torch.save(_TinyDetector().state_dict(), path)
    with pytest.raises(ValueError, match=r"Unsupported query.*strict"):
        DetectionCheckpointer(_TinyDetector()).load(f"{path}?strict=True")


def test_pycls_pyth_loads_without_batch_counters(tmp_path):
    full = _distinct_values(_TinyDetector())
    state = {k[len(_PREFIX) :]: torch.as_tensor(v) for k, v in full.items()}
    state["stem.conv1.norm.num_batches_tracked"] = torch.tensor(5)
    path = tmp_path / "regnet.pyth"
    torch.save({"model_state": state, "epoch": 3}, path)
    model = _TinyDetector()
    DetectionCheckpointer(model).load(str(path))
    _assert_loaded(model, full)


# ---------------------------------------------------------------- torchvision ResNets


def _mini_torchvision_resnet():
    """torchvision's naming on the tiny detector's shapes, plus a classifier."""

    def bn(c, offset):
        return {
            "weight": torch.full((c,), 1.0 + offset),
            "bias": torch.full((c,), 2.0 + offset),
            "running_mean": torch.full((c,), 3.0 + offset),
            "running_var": torch.full((c,), 4.0 + offset),
            "num_batches_tracked": torch.tensor(7),
        }

    state = {"conv1.weight": torch.full((4, 3, 3, 3), 0.5)}
    state.update({f"bn1.{k}": v for k, v in bn(4, 0).items()})
    state["layer1.0.conv1.weight"] = torch.full((4, 4, 1, 1), 0.25)
    state.update({f"layer1.0.bn1.{k}": v for k, v in bn(4, 10).items()})
    state["layer1.0.downsample.0.weight"] = torch.full((8, 4, 1, 1), 0.125)
    state.update({f"layer1.0.downsample.1.{k}": v for k, v in bn(8, 20).items()})
    state["fc.weight"] = torch.zeros(10, 8)
    state["fc.bias"] = torch.zeros(10)
    return state


def test_torchvision_resnet_pth_is_converted_on_load(tmp_path):
    tv = _mini_torchvision_resnet()
    path = tmp_path / "resnet.pth"
    torch.save(tv, path)
    model = _TinyDetector()
    checkpointer = DetectionCheckpointer(model)
    incompatible = checkpointer._load_model(checkpointer._load_file(str(path)))

    _assert_loaded(
        model,
        {
            _PREFIX + "stem.conv1.weight": tv["conv1.weight"],
            _PREFIX + "stem.conv1.norm.running_var": tv["bn1.running_var"],
            _PREFIX + "res2.0.conv1.weight": tv["layer1.0.conv1.weight"],
            _PREFIX + "res2.0.conv1.norm.bias": tv["layer1.0.bn1.bias"],
            _PREFIX + "res2.0.shortcut.weight": tv["layer1.0.downsample.0.weight"],
            _PREFIX + "res2.0.shortcut.norm.running_mean": tv["layer1.0.downsample.1.running_mean"],
        },
    )
    assert incompatible.missing_keys == []
    assert incompatible.incorrect_shapes == []
    # frozen norms have no batch counter; the classifier was dropped by the conversion
    assert sorted(incompatible.unexpected_keys) == [
        "res2.0.conv1.norm.num_batches_tracked",
        "res2.0.shortcut.norm.num_batches_tracked",
        "stem.conv1.norm.num_batches_tracked",
    ]


def test_model_with_torchvision_names_loads_torchvision_weights_unconverted(tmp_path):
    def make():
        model = nn.Module()
        model.conv1 = nn.Conv2d(3, 4, 3, bias=False)
        model.bn1 = nn.BatchNorm2d(4)
        model.layer1 = nn.Sequential(nn.Module())
        model.layer1[0].conv1 = nn.Conv2d(4, 4, 1, bias=False)
        return model

    source = make()
    with torch.no_grad():
        for p in source.parameters():
            p.uniform_()
    path = tmp_path / "tv.pth"
    torch.save(source.state_dict(), path)
    target = make()
    DetectionCheckpointer(target).load(str(path))
    _assert_loaded(target, source.state_dict())


# ---------------------------------------------------------------- report filtering


def test_pixel_buffers_and_cell_anchors_are_not_reported():
    model = _TinyDetector(with_pixel_buffers=True)
    weights = {k: v for k, v in _distinct_values(_TinyDetector()).items()}
    weights["proposal_generator.anchor_generator.cell_anchors.0"] = np.zeros((3, 4), np.float32)
    incompatible = DetectionCheckpointer(model)._load_model(
        {"model": weights, "__author__": "Detectron2 Model Zoo"}
    )
    assert incompatible == ([], [], [])


def test_save_to_disk_defaults_to_main_process(tmp_path):
    checkpointer = DetectionCheckpointer(_TinyDetector(), str(tmp_path))
    assert checkpointer.save_to_disk is True  # a single process is the main process
    checkpointer.save("model_final")
    assert (tmp_path / "model_final.pth").is_file()
    assert DetectionCheckpointer(_TinyDetector(), save_to_disk=False).save_to_disk is False


@pytest.fixture
def single_process_group(tmp_path):
    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    yield
    dist.destroy_process_group()


def test_ddp_wrapped_model_loads_and_checks_the_main_worker(tmp_path, single_process_group):
    source = _distinct_values(_TinyDetector())
    path = tmp_path / "w.pkl"
    _write_pickle(path, {"model": source, "__author__": "Detectron2 Model Zoo"})
    module = _TinyDetector()
    module.head = nn.Linear(1, 1)  # DDP needs a parameter
    checkpointer = DetectionCheckpointer(nn.parallel.DistributedDataParallel(module))
    checkpointer.load(str(path))
    _assert_loaded(module, source)
    with pytest.raises(FileNotFoundError, match="not found on main worker"):
        checkpointer.load(str(tmp_path / "absent.pkl"))
