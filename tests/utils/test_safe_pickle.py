import builtins
import codecs
import collections
import io
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from heron.utils.safe_pickle import UnsafePickleError, load_pickle


class _RunsShellCommand:
    """Pickles as a call to os.system, as a malicious checkpoint would."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _CallsEval:
    def __reduce__(self):
        return (builtins.eval, ("1 + 1",))


class _PlainObject:
    pass


class _EncodesWithRot13:
    def __reduce__(self):
        return (codecs.encode, ("abc", "rot13"))


def _d2_zoo_checkpoint():
    return {
        "model": {
            "backbone.bottom_up.stem.conv1.weight": np.arange(24, dtype=np.float32).reshape(
                2, 3, 2, 2
            ),
            "roi_heads.box_predictor.cls_score.bias": np.array([0.5, -1.0, 2.0], np.float32),
            "proposal_generator.anchor_generator.cell_anchors.0": np.zeros((3, 4), np.float64),
        },
        "__author__": "Detectron2 Model Zoo",
        "matching_heuristics": False,
    }


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_d2_zoo_pickle_with_numpy_arrays_loads(tmp_path, protocol):
    expected = _d2_zoo_checkpoint()
    path = tmp_path / "model_final.pkl"
    path.write_bytes(pickle.dumps(expected, protocol=protocol))

    loaded = load_pickle(str(path))

    assert loaded.keys() == expected.keys()
    assert loaded["__author__"] == "Detectron2 Model Zoo"
    assert loaded["matching_heuristics"] is False
    for key, array in expected["model"].items():
        assert loaded["model"][key].dtype == array.dtype
        np.testing.assert_array_equal(loaded["model"][key], array)


def test_python2_caffe2_style_pickle_loads_with_latin1_buffers():
    # Hand-written protocol-2 stream as Python 2 numpy writes it: the module is
    # "numpy.core.multiarray" and the array buffer is a py2 str (opcode U), which only
    # survives byte-exact when decoded as latin-1. Bytes of float32 [1.5, -2.0]:
    buffer = struct.pack("<2f", 1.5, -2.0)  # 00 00 c0 3f 00 00 00 c0
    stream = (
        b"\x80\x02}U\x0bres2_0_bn_s"
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
        b"(K\x01K\x02\x85cnumpy\ndtype\nU\x02f4K\x00K\x01\x87R"
        b"(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x08" + buffer + b"tbs."
    )
    loaded = load_pickle(io.BytesIO(stream))
    assert list(loaded) == ["res2_0_bn_s"]
    np.testing.assert_array_equal(loaded["res2_0_bn_s"], np.array([1.5, -2.0], np.float32))


def test_containers_numbers_strings_and_numpy_scalars_round_trip():
    value = collections.OrderedDict(
        [
            ("a", [1, 2.5, complex(1, -2), True, None]),
            ("b", (frozenset({1, 2}), {3}, b"\x00\xff", bytearray(b"ab"), "text")),
            ("c", {"iteration": np.int64(7), "lr": np.float32(0.25)}),
        ]
    )
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        loaded = load_pickle(io.BytesIO(pickle.dumps(value, protocol=protocol)))
        assert loaded == value
        assert type(loaded) is collections.OrderedDict
        assert loaded["c"]["iteration"].dtype == np.int64


def test_os_system_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_RunsShellCommand(f"echo pwned > {marker}")))

    with pytest.raises(UnsafePickleError, match=r"system") as excinfo:
        load_pickle(str(path))

    assert not marker.exists()
    assert str(path) in str(excinfo.value)
    # the refused global is named as written in the file ("posix.system" on Linux)
    assert f"'{os.system.__module__}.system'" in str(excinfo.value)
    assert isinstance(excinfo.value, pickle.UnpicklingError)


@pytest.mark.parametrize(
    ("payload", "refused"),
    [
        (_CallsEval(), "builtins.eval"),
        (_PlainObject(), f"{__name__}._PlainObject"),
        (torch.zeros(2), "torch._utils._rebuild_tensor_v2"),
    ],
)
def test_globals_outside_the_allowlist_are_refused(payload, refused):
    data = pickle.dumps({"model": {"w": payload}})
    with pytest.raises(UnsafePickleError, match=refused.replace(".", r"\.")):
        load_pickle(io.BytesIO(data))


def test_codecs_encode_is_limited_to_latin1():
    data = pickle.dumps(_EncodesWithRot13(), protocol=2)
    with pytest.raises(UnsafePickleError, match="rot13"):
        load_pickle(io.BytesIO(data))


def test_truncated_pickle_raises_value_error_naming_the_file(tmp_path):
    path = tmp_path / "cut.pkl"
    full = pickle.dumps(_d2_zoo_checkpoint(), protocol=2)
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(ValueError, match=r"cut\.pkl.*truncated"):
        load_pickle(str(path))


def test_empty_file_raises_value_error(tmp_path):
    path = tmp_path / "empty.pkl"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.pkl"):
        load_pickle(path)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_pickle(str(tmp_path / "absent.pkl"))
