import logging
import os

import numpy as np
import pytest
import torch
from torch import nn

from heron.checkpoint.checkpointer import Checkpointer, PeriodicCheckpointer
from heron.utils.safe_pickle import UnsafePickleError
from tests.checkpoint.helpers import captured_records


@pytest.fixture
def ckpt_log():
    with captured_records("heron.checkpoint.checkpointer") as records:
        yield records


def _messages(records, level):
    return "\n".join(r.getMessage() for r in records if r.levelno >= level)


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def _assert_same_state(a, b):
    assert a.state_dict().keys() == b.state_dict().keys()
    for key, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[key], value, rtol=0, atol=0)


class _ReportModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.kept = nn.Linear(2, 2, bias=False)
        self.absent = nn.Linear(2, 2, bias=False)
        self.resized = nn.Linear(2, 3, bias=False)


def _report_checkpoint():
    return {
        "model": {
            "kept.weight": torch.full((2, 2), 7.0),
            "resized.weight": torch.full((5, 2), 9.0),  # model has (3, 2)
            "extra.weight": torch.zeros(1),
        }
    }


# ---------------------------------------------------------------- saving


def test_save_writes_model_checkpointables_and_extra_data(tmp_path):
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    Checkpointer(model, str(tmp_path), optimizer=optimizer).save("model_0000009", iteration=9)

    data = torch.load(tmp_path / "model_0000009.pth", weights_only=True)
    assert set(data) == {"model", "optimizer", "iteration"}
    assert data["iteration"] == 9
    assert data["optimizer"]["param_groups"][0]["lr"] == 0.1
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    # atomic writes leave no temporary file behind
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]


def test_save_round_trips_through_load(tmp_path):
    source = _model(seed=0)
    source_opt = torch.optim.SGD(source.parameters(), lr=0.5, momentum=0.9)
    source(torch.ones(1, 3)).sum().backward()
    source_opt.step()  # creates momentum buffers
    Checkpointer(source, str(tmp_path), optimizer=source_opt).save("ckpt", iteration=3)

    target = _model(seed=1)
    target_opt = torch.optim.SGD(target.parameters(), lr=0.01, momentum=0.9)
    rest = Checkpointer(target, optimizer=target_opt).load(str(tmp_path / "ckpt.pth"))

    _assert_same_state(source, target)
    assert target_opt.state_dict()["param_groups"][0]["lr"] == 0.5
    assert len(target_opt.state_dict()["state"]) == 4  # momentum of 2 weights + 2 biases
    assert rest == {"iteration": 3}


def test_load_without_checkpointables_leaves_them_alone(tmp_path):
    source = _model()
    source_opt = torch.optim.SGD(source.parameters(), lr=0.5)
    Checkpointer(source, str(tmp_path), optimizer=source_opt).save("ckpt")

    target_opt = torch.optim.SGD(_model().parameters(), lr=0.01)
    checkpointer = Checkpointer(_model(), optimizer=target_opt)
    rest = checkpointer.load(str(tmp_path / "ckpt.pth"), checkpointables=[])
    assert target_opt.state_dict()["param_groups"][0]["lr"] == 0.01
    assert "optimizer" in rest  # not consumed, handed back


def test_save_is_disabled_without_dir_or_when_not_saving_to_disk(tmp_path):
    Checkpointer(_model(), "").save("x")
    Checkpointer(_model(), str(tmp_path), save_to_disk=False).save("x")
    assert os.listdir(tmp_path) == []


def test_save_rejects_names_with_a_directory(tmp_path):
    with pytest.raises(ValueError, match="must not contain a directory"):
        Checkpointer(_model(), str(tmp_path)).save("sub/model")


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = _model(seed=0)
    checkpointer = Checkpointer(model, str(tmp_path))
    checkpointer.save("model_final", iteration=1)
    good_bytes = (tmp_path / "model_final.pth").read_bytes()

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", crashing_save)
    with torch.no_grad():
        model[0].weight.fill_(123.0)
    with pytest.raises(RuntimeError, match="disk full"):
        checkpointer.save("model_final", iteration=2)
    monkeypatch.undo()

    assert (tmp_path / "model_final.pth").read_bytes() == good_bytes
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]
    restored = _model(seed=5)
    assert Checkpointer(restored).load(str(tmp_path / "model_final.pth")) == {"iteration": 1}
    _assert_same_state(_model(seed=0), restored)


# ---------------------------------------------------------------- finding and resuming


def test_checkpoint_discovery(tmp_path):
    checkpointer = Checkpointer(_model(), str(tmp_path))
    assert not checkpointer.has_checkpoint()
    assert checkpointer.get_checkpoint_file() == ""
    checkpointer.save("a")
    checkpointer.save("b")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert checkpointer.has_checkpoint()
    assert checkpointer.get_checkpoint_file() == os.path.join(str(tmp_path), "b.pth")
    assert sorted(checkpointer.get_all_checkpoint_files()) == [
        os.path.join(str(tmp_path), "a.pth"),
        os.path.join(str(tmp_path), "b.pth"),
    ]


def test_resume_or_load_prefers_last_checkpoint(tmp_path):
    out = tmp_path / "out"
    first, second = _model(seed=1), _model(seed=2)
    Checkpointer(first, str(out)).save("model_0000004", iteration=4)
    Checkpointer(second, str(out), optimizer=torch.optim.SGD(second.parameters(), lr=0.3)).save(
        "model_0000009", iteration=9
    )
    pretrained = _model(seed=3)
    Checkpointer(pretrained, str(tmp_path)).save("pretrained")

    target = _model(seed=4)
    optimizer = torch.optim.SGD(target.parameters(), lr=0.01)
    checkpointer = Checkpointer(target, str(out), optimizer=optimizer)

    rest = checkpointer.resume_or_load(str(tmp_path / "pretrained.pth"), resume=True)
    assert rest == {"iteration": 9}
    _assert_same_state(second, target)
    assert optimizer.state_dict()["param_groups"][0]["lr"] == 0.3

    rest = checkpointer.resume_or_load(str(tmp_path / "pretrained.pth"), resume=False)
    _assert_same_state(pretrained, target)
    assert "iteration" not in rest


def test_resume_without_last_checkpoint_loads_the_given_path(tmp_path):
    pretrained = _model(seed=3)
    Checkpointer(pretrained, str(tmp_path / "weights")).save("pretrained")
    target = _model(seed=4)
    Checkpointer(target, str(tmp_path / "empty_out")).resume_or_load(
        str(tmp_path / "weights" / "pretrained.pth"), resume=True
    )
    _assert_same_state(pretrained, target)


def test_load_of_empty_path_is_a_logged_no_op(ckpt_log):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert Checkpointer(model).load("") == {}
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])
    assert "No checkpoint found" in _messages(ckpt_log, logging.INFO)


def test_load_of_unregistered_checkpointable_raises(tmp_path):
    Checkpointer(_model(), str(tmp_path)).save("m")
    with pytest.raises(KeyError, match=r"\['scheduler'\].*known: \[\]"):
        Checkpointer(_model()).load(str(tmp_path / "m.pth"), checkpointables=["scheduler"])


def test_add_checkpointable_validates():
    checkpointer = Checkpointer(_model(), optimizer=torch.optim.SGD(_model().parameters(), lr=1))
    with pytest.raises(KeyError, match="optimizer"):
        checkpointer.add_checkpointable("optimizer", torch.optim.SGD(_model().parameters(), lr=1))
    with pytest.raises(TypeError, match="state_dict"):
        checkpointer.add_checkpointable("thing", object())


# ---------------------------------------------------------------- the load report


def test_load_report_has_exactly_the_missing_unexpected_and_misshaped_keys():
    model = _ReportModel()
    resized_before = model.resized.weight.detach().clone()

    incompatible = Checkpointer(model)._load_model(_report_checkpoint())

    assert incompatible.missing_keys == ["absent.weight"]
    assert incompatible.unexpected_keys == ["extra.weight"]
    assert incompatible.incorrect_shapes == [("resized.weight", (5, 2), (3, 2))]
    torch.testing.assert_close(model.kept.weight.detach(), torch.full((2, 2), 7.0))
    # the wrong-shaped tensor is never loaded: the model keeps its own value
    torch.testing.assert_close(model.resized.weight.detach(), resized_before, rtol=0, atol=0)


def test_load_warns_with_a_table_naming_each_problem_key(tmp_path, ckpt_log):
    path = tmp_path / "report.pth"
    torch.save(_report_checkpoint(), path)
    Checkpointer(_ReportModel()).load(str(path))

    warning = _messages(ckpt_log, logging.WARNING)
    for expected in ("absent.weight", "extra.weight", "resized.weight", "(5, 2)", "(3, 2)"):
        assert expected in warning
    assert "| shape mismatch (not loaded)" in warning  # a tabulate "pipe" table


def test_missing_keys_are_grouped_by_module(ckpt_log):
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    Checkpointer(model)._log_incompatible_keys(
        Checkpointer(model)._load_model({"model": {"0.weight": torch.zeros(2, 2)}})
    )
    warning = _messages(ckpt_log, logging.WARNING)
    assert "0.bias" in warning
    assert "1.{weight, bias}" in warning


def test_keys_loaded_through_a_shared_module_are_not_reported_missing(ckpt_log):
    model = nn.Module()
    model.a = nn.Linear(2, 2, bias=False)
    model.b = model.a  # one module under two names: state_dict has a.weight and b.weight
    checkpointer = Checkpointer(model)
    incompatible = checkpointer._load_model({"model": {"a.weight": torch.ones(2, 2)}})
    assert incompatible.missing_keys == ["b.weight"]
    checkpointer._log_incompatible_keys(incompatible)
    assert "b.weight" not in _messages(ckpt_log, logging.WARNING)


def test_checkpoint_matching_no_model_key_raises_with_samples():
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(4)])  # 8 keys
    checkpoint = {"model": {f"head.fc{i}.weight": torch.zeros(1) for i in range(7)}}
    with pytest.raises(ValueError, match="None of the checkpoint's keys match") as excinfo:
        Checkpointer(model)._load_model(checkpoint)
    message = str(excinfo.value)
    # the first 5 names of each side, and no more
    for name in ["0.weight", "0.bias", "1.weight", "1.bias", "2.weight"]:
        assert f"'{name}'" in message
    assert "'2.bias'" not in message
    for i in range(5):
        assert f"head.fc{i}.weight" in message
    assert "head.fc5.weight" not in message
    assert "(8 keys)" in message and "(7 keys)" in message


def test_ddp_module_prefix_is_stripped():
    source = _model(seed=0)
    target = _model(seed=1)
    state = {"module." + k: v for k, v in source.state_dict().items()}
    incompatible = Checkpointer(target)._load_model({"model": state})
    assert incompatible == ([], [], [])
    _assert_same_state(source, target)


def test_numpy_arrays_are_converted_and_other_values_refused():
    model = nn.Linear(2, 1)
    Checkpointer(model)._load_model(
        {"model": {"weight": np.array([[1.0, 2.0]], np.float32), "bias": np.zeros(1, np.float32)}}
    )
    torch.testing.assert_close(model.weight.detach(), torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"'weight' is a list"):
        Checkpointer(model)._load_model({"model": {"weight": [[1.0, 2.0]]}})


def test_lazy_parameters_take_the_checkpoint_shape():
    model = nn.Sequential(nn.LazyLinear(3))
    weight, bias = torch.ones(3, 5), torch.zeros(3)
    incompatible = Checkpointer(model)._load_model({"model": {"0.weight": weight, "0.bias": bias}})
    assert incompatible.incorrect_shapes == []
    assert model[0].weight.shape == (3, 5)


def test_checkpoint_without_model_entry_raises():
    with pytest.raises(KeyError, match=r"no 'model' entry.*'weight'"):
        Checkpointer(nn.Linear(2, 1))._load_model({"weight": torch.zeros(1, 2)})


# ---------------------------------------------------------------- reading files


def test_load_of_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"absent\.pth"):
        Checkpointer(_model()).load(str(tmp_path / "absent.pth"))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_file_raises_value_error_naming_it(tmp_path, damage):
    good = tmp_path / "good.pth"
    torch.save({"model": _model().state_dict()}, good)
    data = {"truncated": good.read_bytes()[:200], "garbage": b"not a checkpoint", "empty": b""}
    bad = tmp_path / f"{damage}.pth"
    bad.write_bytes(data[damage])
    with pytest.raises(ValueError, match=f"{damage}\\.pth"):
        Checkpointer(_model()).load(str(bad))


def test_file_that_is_not_a_dict_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match=r"list\.pth holds a list"):
        Checkpointer(_model())._load_file(str(path))


class _Opaque:
    pass


def test_file_with_arbitrary_objects_is_refused(tmp_path):
    path = tmp_path / "opaque.pth"
    torch.save({"model": {}, "extra": _Opaque()}, path)
    with pytest.raises(UnsafePickleError, match=r"opaque\.pth"):
        Checkpointer(_model())._load_file(str(path))


def test_pth_with_numpy_arrays_loads(tmp_path):
    path = tmp_path / "np.pth"
    torch.save({"model": {"weight": np.ones((1, 2), np.float32)}, "it": np.int64(4)}, path)
    loaded = Checkpointer(nn.Linear(2, 1))._load_file(str(path))
    np.testing.assert_array_equal(loaded["model"]["weight"], np.ones((1, 2), np.float32))
    assert loaded["it"] == 4


# ---------------------------------------------------------------- periodic saving


def test_periodic_checkpointer_saves_on_period_and_keeps_the_newest(tmp_path):
    checkpointer = Checkpointer(_model(), str(tmp_path))
    periodic = PeriodicCheckpointer(checkpointer, period=3, max_iter=10, max_to_keep=2)
    for iteration in range(10):
        periodic.step(iteration, epoch=1)
    # saves after iterations 2, 5, 8 ((it + 1) % 3 == 0) and the final one at 9 = 10 - 1;
    # keeping 2 periodic files deletes model_0000002
    assert sorted(os.listdir(tmp_path)) == [
        "last_checkpoint",
        "model_0000005.pth",
        "model_0000008.pth",
        "model_final.pth",
    ]
    final = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert final["iteration"] == 9 and final["epoch"] == 1
    periodic.save("manual", iteration=42)
    assert torch.load(tmp_path / "manual.pth", weights_only=True)["iteration"] == 42


def test_periodic_checkpointer_validates_arguments():
    checkpointer = Checkpointer(_model())
    with pytest.raises(ValueError, match="period"):
        PeriodicCheckpointer(checkpointer, period=0)
    with pytest.raises(ValueError, match="max_to_keep"):
        PeriodicCheckpointer(checkpointer, period=1, max_to_keep=0)


_KILLED_WRITER = r"""
import os, signal, sys
import torch
from torch import nn
from heron.checkpoint.checkpointer import Checkpointer

save_dir = sys.argv[1]
torch.manual_seed(0)
model = nn.Linear(64, 64)
checkpointer = Checkpointer(model, save_dir)
checkpointer.save("model_0000000")

real_save = torch.save

def save_then_die(obj, f, *args, **kwargs):
    # write part of the next checkpoint, then die as if killed (no cleanup handlers run)
    real_save(obj, f, *args, **kwargs)
    f.flush()
    f.truncate(f.tell() // 2)
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = save_then_die
with torch.no_grad():
    model.weight.add_(1.0)
checkpointer.save("model_0000001")
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_a_process_killed_while_saving_leaves_the_previous_checkpoint_loadable(tmp_path):
    import signal
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(tmp_path)], capture_output=True, timeout=120
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    # the half-written file never took the checkpoint's name, and last_checkpoint still
    # points at the previous one, which loads
    assert not (tmp_path / "model_0000001.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"
    torch.manual_seed(0)
    expected = nn.Linear(64, 64)
    model = nn.Linear(64, 64)
    checkpointer = Checkpointer(model, str(tmp_path))
    assert checkpointer.get_checkpoint_file().endswith("model_0000000.pth")
    checkpointer.resume_or_load("", resume=True)
    _assert_same_state(model, expected)
