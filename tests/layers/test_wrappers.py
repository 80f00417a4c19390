import pytest
import torch
from torch import nn
from torch.nn import functional as F

from heron.layers.wrappers import (
    BatchNorm2d,
    Conv2d,
    ConvTranspose2d,
    Linear,
    cat,
    check_if_dynamo_compiling,
    cross_entropy,
    empty_input_loss_func_wrapper,
    interpolate,
    move_device_like,
    nonzero_tuple,
    shapes_to_tensor,
)

# torch.jit.script / trace still work but warn that they are deprecated.
jit_deprecation = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:FutureWarning")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class _AddOne(nn.Module):
    def forward(self, x):
        return x + 1


def _constant_conv(value: float, **kwargs) -> Conv2d:
    conv = Conv2d(1, 1, kernel_size=1, bias=False, **kwargs)
    nn.init.constant_(conv.weight, value)
    return conv


def test_torch_classes_are_reexported_under_detectron2_names():
    assert ConvTranspose2d is nn.ConvTranspose2d
    assert BatchNorm2d is nn.BatchNorm2d
    assert Linear is nn.Linear
    assert interpolate is F.interpolate
    assert issubclass(Conv2d, nn.Conv2d)


def test_conv2d_applies_norm_before_activation():
    conv = _constant_conv(-0.5, norm=_AddOne(), activation=F.relu)
    # conv: 1 * -0.5 = -0.5; norm: +1 -> 0.5; relu -> 0.5.
    # (activation first would give relu(-0.5) + 1 = 1.)
    out = conv(torch.ones(1, 1, 2, 2))
    torch.testing.assert_close(out, torch.full((1, 1, 2, 2), 0.5))


def test_conv2d_without_norm_and_activation_is_plain_conv():
    conv = Conv2d(3, 4, kernel_size=3, padding=1)
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))
    assert conv.norm is None and conv.activation is None


def test_conv2d_registers_norm_as_submodule_named_norm():
    conv = Conv2d(3, 4, kernel_size=1, bias=False, norm=nn.BatchNorm2d(4))
    assert set(conv.state_dict()) == {
        "weight",
        "norm.weight",
        "norm.bias",
        "norm.running_mean",
        "norm.running_var",
        "norm.num_batches_tracked",
    }


@pytest.mark.parametrize("training", [True, False])
def test_conv2d_empty_batch_gives_empty_output_with_grad(training):
    conv = Conv2d(3, 4, kernel_size=3, stride=2, norm=nn.BatchNorm2d(4), activation=F.relu)
    conv.train(training)
    x = torch.zeros(0, 3, 9, 9, requires_grad=True)
    out = conv(x)
    # (9 - 3) // 2 + 1 = 4
    assert out.shape == (0, 4, 4, 4)
    out.sum().backward()
    assert x.grad.shape == x.shape


def test_conv2d_rejects_empty_batch_with_syncbn_in_training():
    conv = Conv2d(3, 4, kernel_size=1, norm=nn.SyncBatchNorm(4))
    with pytest.raises(ValueError, match="SyncBatchNorm does not support empty inputs"):
        conv(torch.zeros(0, 3, 4, 4))


def test_cat_returns_single_tensor_without_copy():
    t = torch.arange(3)
    assert cat([t]) is t


def test_cat_concatenates_several_tensors_along_dim():
    a, b = torch.zeros(2, 1), torch.ones(2, 2)
    torch.testing.assert_close(cat((a, b), dim=1), torch.tensor([[0.0, 1, 1], [0, 1, 1]]))


def test_cat_rejects_non_sequence():
    with pytest.raises(TypeError, match="list or tuple, got Tensor"):
        cat(torch.zeros(2))


def test_nonzero_tuple_gives_one_index_tensor_per_dim():
    x = torch.tensor([[0, 1], [1, 0]])
    rows, cols = nonzero_tuple(x)
    assert rows.tolist() == [0, 1]
    assert cols.tolist() == [1, 0]


def test_nonzero_tuple_of_empty_tensor_is_empty():
    (idx,) = nonzero_tuple(torch.zeros(0))
    assert idx.shape == (0,) and idx.dtype == torch.int64


@jit_deprecation
def test_nonzero_tuple_works_under_torchscript():
    scripted = torch.jit.script(nonzero_tuple)
    (idx,) = scripted(torch.tensor([0.0, 2.0, 3.0]))
    assert idx.tolist() == [1, 2]


def test_shapes_to_tensor_in_eager_mode():
    out = shapes_to_tensor([3, 4])
    assert out.tolist() == [3, 4] and out.dtype == torch.int64


@jit_deprecation
def test_shapes_to_tensor_follows_input_shape_when_traced():
    def sizes(x):
        return shapes_to_tensor([x.shape[0], x.shape[1]])

    traced = torch.jit.trace(sizes, torch.zeros(2, 3))
    # A constant [2, 3] would have been recorded if the sizes were not traced.
    assert traced(torch.zeros(5, 7)).tolist() == [5, 7]


@jit_deprecation
def test_shapes_to_tensor_rejects_ints_while_tracing():
    def sizes(x):
        return shapes_to_tensor([1, 2]) + x.sum()

    with pytest.raises(TypeError, match="must hold tensors"):
        torch.jit.trace(sizes, torch.zeros(2))


@pytest.mark.parametrize("device", DEVICES)
def test_move_device_like_moves_to_destination_device(device):
    src = torch.arange(3)
    dst = torch.zeros(1, device=device)
    out = move_device_like(src, dst)
    assert out.device == dst.device
    assert out.tolist() == [0, 1, 2]


@jit_deprecation
def test_move_device_like_is_traceable():
    def f(x):
        return move_device_like(torch.ones(2), x) * x

    traced = torch.jit.trace(f, torch.full((2,), 2.0))
    torch.testing.assert_close(traced(torch.full((2,), 3.0)), torch.full((2,), 3.0))


def test_check_if_dynamo_compiling_is_false_in_eager():
    assert check_if_dynamo_compiling() is False


def test_cross_entropy_matches_torch_for_nonempty_input():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    target = torch.tensor([0, 1])
    torch.testing.assert_close(cross_entropy(logits, target), F.cross_entropy(logits, target))
    torch.testing.assert_close(
        cross_entropy(logits, target, reduction="sum"),
        F.cross_entropy(logits, target, reduction="sum"),
    )


def test_cross_entropy_of_empty_input_is_zero_and_keeps_graph():
    logits = torch.zeros(0, 3, requires_grad=True)
    loss = cross_entropy(logits, torch.zeros(0, dtype=torch.int64))
    # torch would give NaN for the mean of nothing.
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert logits.grad.shape == (0, 3)


def test_empty_input_loss_func_wrapper_passes_kwargs_through():
    calls = []

    def fake_loss(input, target, *, reduction, weight=None):
        calls.append((reduction, weight))
        return input.sum()

    wrapped = empty_input_loss_func_wrapper(fake_loss)
    wrapped(torch.ones(2), torch.ones(2), reduction="sum", weight=3)
    # Empty target with "none" is not special-cased: the loss function sees it.
    wrapped(torch.ones(0), torch.ones(0), reduction="none")
    assert calls == [("sum", 3), ("none", None)]
