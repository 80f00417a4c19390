from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from heron.layers import batch_norm as bn_module
from heron.layers.batch_norm import (
    CycleBatchNormList,
    FrozenBatchNorm2d,
    LayerNorm,
    NaiveSyncBatchNorm,
    get_norm,
)


def _random_frozen_bn(channels=3, eps=1e-5, seed=0):
    g = torch.Generator().manual_seed(seed)
    frozen = FrozenBatchNorm2d(channels, eps=eps)
    frozen.weight = torch.rand(channels, generator=g) + 0.5
    frozen.bias = torch.randn(channels, generator=g)
    frozen.running_mean = torch.randn(channels, generator=g)
    frozen.running_var = torch.rand(channels, generator=g) + 0.5
    return frozen


# ---------------------------------------------------------------- FrozenBatchNorm2d


@pytest.mark.parametrize("requires_grad", [False, True])
def test_frozen_bn_starts_as_identity(requires_grad):
    x = torch.randn(2, 3, 4, 4, requires_grad=requires_grad)
    # running_var = 1 - eps, so the denominator sqrt(running_var + eps) is 1.
    torch.testing.assert_close(FrozenBatchNorm2d(3)(x), x)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_frozen_bn_applies_fixed_statistics(requires_grad):
    frozen = _random_frozen_bn()
    x = torch.randn(2, 3, 4, 4, requires_grad=requires_grad)
    shape = (1, 3, 1, 1)
    expected = (x - frozen.running_mean.view(shape)) / torch.sqrt(
        frozen.running_var.view(shape) + frozen.eps
    ) * frozen.weight.view(shape) + frozen.bias.view(shape)
    torch.testing.assert_close(frozen(x), expected)


def test_frozen_bn_gradient_reaches_input_only():
    frozen = _random_frozen_bn()
    x = torch.randn(1, 3, 2, 2, requires_grad=True)
    frozen(x).sum().backward()
    # d/dx of (x - m) * w / sqrt(v + eps) + b is w / sqrt(v + eps) per channel.
    per_channel = frozen.weight / torch.sqrt(frozen.running_var + frozen.eps)
    torch.testing.assert_close(x.grad, per_channel.view(1, 3, 1, 1).expand(1, 3, 2, 2))
    assert list(frozen.parameters()) == []


def test_frozen_bn_keeps_float16_input_dtype_on_grad_path():
    x = torch.randn(1, 3, 2, 2, dtype=torch.float16, requires_grad=True)
    assert _random_frozen_bn()(x).dtype == torch.float16


def test_frozen_bn_state_dict_has_detectron2_keys():
    assert list(FrozenBatchNorm2d(4).state_dict()) == [
        "weight",
        "bias",
        "running_mean",
        "running_var",
    ]


def test_frozen_bn_repr_names_features_and_eps():
    assert repr(FrozenBatchNorm2d(4, eps=1e-3)) == "FrozenBatchNorm2d(num_features=4, eps=0.001)"


def test_frozen_bn_loads_checkpoint_without_running_stats_and_version():
    # Caffe2-converted checkpoints have only weight and bias and no version metadata.
    frozen = _random_frozen_bn()
    frozen.load_state_dict({"weight": torch.full((3,), 2.0), "bias": torch.ones(3)})
    torch.testing.assert_close(frozen.running_mean, torch.zeros(3))
    torch.testing.assert_close(frozen.running_var, torch.ones(3))
    torch.testing.assert_close(frozen.weight, torch.full((3,), 2.0))


def test_frozen_bn_loads_version_1_checkpoint_without_running_stats():
    state = OrderedDict(weight=torch.ones(3), bias=torch.zeros(3))
    state._metadata = {"": {"version": 1}}
    frozen = _random_frozen_bn()
    frozen.load_state_dict(state)
    torch.testing.assert_close(frozen.running_var, torch.ones(3))


def test_frozen_bn_version_3_checkpoint_must_have_running_stats():
    state = OrderedDict(weight=torch.ones(3), bias=torch.zeros(3))
    state._metadata = {"": {"version": 3}}
    with pytest.raises(RuntimeError, match="running_mean"):
        FrozenBatchNorm2d(3).load_state_dict(state)


def test_frozen_bn_loads_batchnorm_checkpoint_ignoring_batch_counter():
    bn = nn.BatchNorm2d(3)
    bn.train()
    bn(torch.randn(4, 3, 5, 5) * 2 + 1)  # move the running statistics away from (0, 1)
    bn.eval()
    frozen = FrozenBatchNorm2d(3)
    frozen.load_state_dict(bn.state_dict())  # strict: num_batches_tracked must not be unexpected
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(frozen(x), bn(x))


def test_convert_frozen_batchnorm_replaces_nested_bns_and_keeps_outputs():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, eps=1e-3), nn.Sequential(nn.BatchNorm2d(4))
    )
    model.train()
    model(torch.randn(3, 3, 5, 5))  # non-trivial running statistics
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[2][0].bias.uniform_(-1, 1)
    model.eval()
    x = torch.randn(2, 3, 5, 5)
    before = model(x)
    converted = FrozenBatchNorm2d.convert_frozen_batchnorm(model)
    assert converted is model
    assert isinstance(model[1], FrozenBatchNorm2d) and isinstance(model[2][0], FrozenBatchNorm2d)
    assert model[1].eps == 1e-3
    torch.testing.assert_close(model(x), before)


def test_convert_frozen_batchnorm_of_a_bn_returns_new_module():
    bn = nn.BatchNorm2d(2)
    frozen = FrozenBatchNorm2d.convert_frozen_batchnorm(bn)
    assert isinstance(frozen, FrozenBatchNorm2d) and frozen is not bn
    # The copy does not alias the original's parameters.
    with torch.no_grad():
        bn.weight.fill_(5.0)
    torch.testing.assert_close(frozen.weight, torch.ones(2))


def test_convert_frozen_batchnorm_handles_syncbn_and_non_affine_bn():
    model = nn.Sequential(nn.SyncBatchNorm(2), nn.BatchNorm2d(2, affine=False))
    model[1].running_mean.fill_(3.0)
    FrozenBatchNorm2d.convert_frozen_batchnorm(model)
    assert all(isinstance(m, FrozenBatchNorm2d) for m in model)
    torch.testing.assert_close(model[1].weight, torch.ones(2))
    torch.testing.assert_close(model[1].running_mean, torch.full((2,), 3.0))


def test_convert_frozen_batchnorm_keeps_dtype():
    bn = nn.BatchNorm2d(2).double()
    assert FrozenBatchNorm2d.convert_frozen_batchnorm(bn).running_var.dtype == torch.float64


# ---------------------------------------------------------------- LayerNorm


def test_layer_norm_normalizes_over_channels_by_hand():
    x = torch.tensor([1.0, 3.0]).view(1, 2, 1, 1)
    # mean 2, biased variance 1 -> (-1, 1) / sqrt(1 + 1e-6)
    expected = torch.tensor([-1.0, 1.0]).view(1, 2, 1, 1) / (1 + 1e-6) ** 0.5
    torch.testing.assert_close(LayerNorm(2)(x), expected)


def test_layer_norm_matches_torch_layer_norm_on_channel_last_view():
    norm = LayerNorm(5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(2, 5, 3, 4)
    expected = F.layer_norm(x.permute(0, 2, 3, 1), (5,), norm.weight, norm.bias, 1e-6)
    torch.testing.assert_close(norm(x), expected.permute(0, 3, 1, 2))
    assert set(norm.state_dict()) == {"weight", "bias"}


# ---------------------------------------------------------------- get_norm


@pytest.mark.parametrize("norm", [None, ""])
def test_get_norm_without_norm_is_none(norm):
    assert get_norm(norm, 8) is None


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("BN", nn.BatchNorm2d),
        ("SyncBN", nn.SyncBatchNorm),
        ("nnSyncBN", nn.SyncBatchNorm),
        ("FrozenBN", FrozenBatchNorm2d),
        ("naiveSyncBN", NaiveSyncBatchNorm),
        ("LN", LayerNorm),
    ],
)
def test_get_norm_builds_named_norm_for_the_channels(name, cls):
    norm = get_norm(name, 64)
    assert type(norm) is cls
    assert norm.weight.shape == (64,)


def test_get_norm_gn_uses_32_groups():
    norm = get_norm("GN", 64)
    assert isinstance(norm, nn.GroupNorm)
    assert (norm.num_groups, norm.num_channels) == (32, 64)


def test_get_norm_naive_sync_bn_stats_modes():
    assert get_norm("naiveSyncBN", 4)._stats_mode == ""
    assert get_norm("naiveSyncBN_N", 4)._stats_mode == "N"


def test_get_norm_calls_a_callable_with_the_channels():
    norm = get_norm(lambda c: nn.GroupNorm(2, c), 6)
    assert (norm.num_groups, norm.num_channels) == (2, 6)


def test_get_norm_unknown_name_lists_known_names():
    with pytest.raises(KeyError, match=r"unknown norm 'BatchNorm'.*BN, SyncBN, FrozenBN, GN"):
        get_norm("BatchNorm", 4)


def test_get_norm_rejects_non_callable():
    with pytest.raises(TypeError, match="got int"):
        get_norm(3, 4)


# ---------------------------------------------------------------- NaiveSyncBatchNorm


def test_naive_sync_bn_with_one_process_equals_batchnorm():
    torch.manual_seed(0)
    naive, ref = NaiveSyncBatchNorm(3), nn.BatchNorm2d(3)
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(naive(x), ref(x))
    torch.testing.assert_close(naive.running_var, ref.running_var)


def test_naive_sync_bn_rejects_unknown_stats_mode():
    with pytest.raises(ValueError, match="stats_mode must be"):
        NaiveSyncBatchNorm(3, stats_mode="M")


def _local_stats(x):
    return torch.cat([x.mean(dim=[0, 2, 3]), (x * x).mean(dim=[0, 2, 3])])


def _fake_two_ranks(monkeypatch, other_vec):
    """Pretend a second rank exists whose contribution to the all-reduce is other_vec."""
    monkeypatch.setattr(bn_module, "_world_size", lambda: 2)
    monkeypatch.setattr(bn_module, "_differentiable_all_reduce", lambda v: v + other_vec)


def test_naive_sync_bn_equal_weight_mode_uses_statistics_of_all_ranks(monkeypatch):
    torch.manual_seed(0)
    x_here, x_other = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4) * 3 + 1
    _fake_two_ranks(monkeypatch, _local_stats(x_other))
    naive = NaiveSyncBatchNorm(3)
    out = naive(x_here)
    # Equal (N, H, W) on both ranks: the statistics are those of the concatenated batch.
    ref = nn.BatchNorm2d(3)
    both = torch.cat([x_here, x_other])
    torch.testing.assert_close(out, ref(both)[:2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(naive.running_mean, ref.running_mean)
    # The running variance gets the biased variance (torch's BN uses the unbiased one).
    biased_var = both.var(dim=[0, 2, 3], unbiased=False)
    torch.testing.assert_close(naive.running_var, 0.9 * 1 + 0.1 * biased_var)


def test_naive_sync_bn_n_mode_weights_ranks_by_batch_size(monkeypatch):
    torch.manual_seed(0)
    x_here, x_other = torch.randn(1, 3, 4, 4), torch.randn(3, 3, 4, 4) + 2
    other = torch.cat([_local_stats(x_other), torch.ones(1)]) * 3  # rank sends vec * N
    _fake_two_ranks(monkeypatch, other)
    naive = NaiveSyncBatchNorm(3, stats_mode="N")
    out = naive(x_here)
    ref = nn.BatchNorm2d(3)
    torch.testing.assert_close(out, ref(torch.cat([x_here, x_other]))[:1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(naive.running_mean, ref.running_mean)


def test_naive_sync_bn_n_mode_accepts_an_empty_rank(monkeypatch):
    x_other = torch.full((2, 1, 2, 2), 4.0)
    _fake_two_ranks(monkeypatch, torch.cat([_local_stats(x_other), torch.ones(1)]) * 2)
    naive = NaiveSyncBatchNorm(1, stats_mode="N")
    x = torch.zeros(0, 1, 2, 2, requires_grad=True)
    out = naive(x)
    assert out.shape == (0, 1, 2, 2)
    out.sum().backward()
    # The other rank's mean 4 moves the running mean: 0.9 * 0 + 0.1 * 4.
    torch.testing.assert_close(naive.running_mean, torch.tensor([0.4]))


def test_naive_sync_bn_n_mode_keeps_running_stats_when_all_ranks_are_empty(monkeypatch):
    _fake_two_ranks(monkeypatch, torch.zeros(3))
    naive = NaiveSyncBatchNorm(1, stats_mode="N")
    naive(torch.zeros(0, 1, 2, 2))
    torch.testing.assert_close(naive.running_mean, torch.zeros(1))
    torch.testing.assert_close(naive.running_var, torch.ones(1))


def test_naive_sync_bn_equal_weight_mode_rejects_empty_batch(monkeypatch):
    _fake_two_ranks(monkeypatch, torch.zeros(2))
    with pytest.raises(ValueError, match='stats_mode="N"'):
        NaiveSyncBatchNorm(1)(torch.zeros(0, 1, 2, 2))


def test_naive_sync_bn_in_eval_uses_running_statistics(monkeypatch):
    _fake_two_ranks(monkeypatch, torch.zeros(2))
    naive = NaiveSyncBatchNorm(1).eval()
    naive.running_mean.fill_(1.0)
    x = torch.full((1, 1, 1, 1), 3.0)
    # (3 - 1) / sqrt(1 + 1e-5)
    torch.testing.assert_close(naive(x), torch.full((1, 1, 1, 1), 2.0 / (1 + 1e-5) ** 0.5))


def test_naive_sync_bn_returns_float16_for_float16_input(monkeypatch):
    x = torch.randn(2, 2, 3, 3, dtype=torch.float16)
    _fake_two_ranks(monkeypatch, _local_stats(x.float()))
    assert NaiveSyncBatchNorm(2)(x).dtype == torch.float16


# ---------------------------------------------------------------- CycleBatchNormList


def test_cycle_batchnorm_list_alternates_statistics_per_call():
    cycle = CycleBatchNormList(2, num_features=1)
    cycle(torch.full((2, 1, 2, 2), 1.0) + torch.tensor([[-1.0], [1.0]]).view(2, 1, 1, 1))
    cycle(torch.full((2, 1, 2, 2), 5.0) + torch.tensor([[-1.0], [1.0]]).view(2, 1, 1, 1))
    # Each layer saw one batch: running_mean = 0.1 * batch mean.
    torch.testing.assert_close(cycle[0].running_mean, torch.tensor([0.1]))
    torch.testing.assert_close(cycle[1].running_mean, torch.tensor([0.5]))


def test_cycle_batchnorm_list_applies_shared_affine():
    cycle = CycleBatchNormList(2, num_features=1).eval()
    with torch.no_grad():
        cycle.weight.fill_(2.0)
        cycle.bias.fill_(1.0)
    x = torch.full((1, 1, 1, 1), 3.0)
    # eval: (3 - 0) / sqrt(1 + 1e-5) * 2 + 1, same for both layers
    expected = torch.full((1, 1, 1, 1), 3.0 / (1 + 1e-5) ** 0.5 * 2 + 1)
    torch.testing.assert_close(cycle(x), expected)
    torch.testing.assert_close(cycle(x), expected)
    assert {"weight", "bias", "0.running_mean", "1.running_var"} <= set(cycle.state_dict())
    assert cycle.extra_repr() == "affine=True"


def test_cycle_batchnorm_list_without_affine_has_no_parameters():
    cycle = CycleBatchNormList(3, num_features=2, affine=False)
    assert list(cycle.parameters()) == []
    assert len(cycle) == 3
