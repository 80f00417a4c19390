"""Tests of heron/engine/precise_bn.py: exact BN statistics over a fixed number of batches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from heron.engine.precise_bn import get_bn_modules, update_bn_stats

# two batches of 2 rows, 2 features
_X1 = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
_X2 = torch.tensor([[5.0, 10.0], [7.0, 6.0]])


def test_get_bn_modules_returns_training_mode_bn_only():
    model = nn.Sequential(nn.BatchNorm1d(2), nn.Linear(2, 2), nn.BatchNorm1d(2), nn.GroupNorm(1, 2))
    model[2].eval()
    assert get_bn_modules(model) == [model[0]]
    model.eval()
    assert get_bn_modules(model) == []


def test_update_bn_stats_sets_the_average_of_batch_statistics():
    bn = nn.BatchNorm1d(2)
    update_bn_stats(bn, [_X1, _X2], num_iters=2)
    # batch means: [2, 3] and [6, 8]; their average [4, 5.5] is the mean of all 4 rows:
    # (1 + 3 + 5 + 7) / 4 = 4, (2 + 4 + 10 + 6) / 4 = 5.5
    torch.testing.assert_close(bn.running_mean, torch.tensor([4.0, 5.5]))
    # unbiased batch variances: col 0: (1-2)^2 + (3-2)^2 = 2 and (5-6)^2 + (7-6)^2 = 2 -> 2;
    # col 1: (2-3)^2 + (4-3)^2 = 2 and (10-8)^2 + (6-8)^2 = 8 -> (2 + 8) / 2 = 5
    torch.testing.assert_close(bn.running_var, torch.tensor([2.0, 5.0]))
    assert bn.momentum == 0.1  # restored


def test_update_bn_stats_matches_numpy_mean_over_many_equal_batches():
    torch.manual_seed(0)
    batches = [torch.randn(8, 3) * 2 + 1 for _ in range(5)]
    bn = nn.BatchNorm1d(3, momentum=None)  # cumulative-average BN works the same
    update_bn_stats(bn, iter(batches), num_iters=5)
    data = torch.cat(batches).double().numpy()
    torch.testing.assert_close(bn.running_mean, torch.from_numpy(data.mean(0)).float())
    per_batch_var = torch.stack([b.var(0, unbiased=True) for b in batches]).mean(0)
    torch.testing.assert_close(bn.running_var, per_batch_var)
    assert bn.momentum is None


def test_update_bn_stats_uses_only_the_first_num_iters_batches():
    bn = nn.BatchNorm1d(2)
    update_bn_stats(bn, [_X1, _X2, _X2 * 100], num_iters=1)
    torch.testing.assert_close(bn.running_mean, torch.tensor([2.0, 3.0]))


def test_update_bn_stats_updates_bn_in_a_conv_model_and_leaves_eval_bn_alone():
    model = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.BatchNorm2d(1), nn.BatchNorm2d(1))
    nn.init.constant_(model[0].weight, 2.0)
    model[2].eval()
    x = torch.arange(8.0).reshape(2, 1, 2, 2)  # values 0..7, mean 3.5
    update_bn_stats(model, [x], num_iters=1)
    # conv doubles the input: mean 7
    torch.testing.assert_close(model[1].running_mean, torch.tensor([7.0]))
    torch.testing.assert_close(model[2].running_mean, torch.tensor([0.0]))


def test_update_bn_stats_without_bn_reads_nothing():
    update_bn_stats(nn.Linear(2, 2), [], num_iters=3)  # no error: no BN layer to update


def test_update_bn_stats_names_how_many_batches_arrived_and_keeps_old_stats():
    bn = nn.BatchNorm1d(2)
    with pytest.raises(ValueError, match=r"needs 3 batches .* stopped after 2"):
        update_bn_stats(bn, [_X1, _X2], num_iters=3)
    torch.testing.assert_close(bn.running_mean, torch.zeros(2))
    torch.testing.assert_close(bn.running_var, torch.ones(2))
    assert bn.momentum == 0.1


def test_update_bn_stats_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_iters must be a positive integer, got 0"):
        update_bn_stats(nn.BatchNorm1d(2), [_X1], num_iters=0)
    with pytest.raises(ValueError, match="progress must be None or 'tqdm', got 'bar'"):
        update_bn_stats(nn.BatchNorm1d(2), [_X1], num_iters=1, progress="bar")


def test_update_bn_stats_with_tqdm_progress():
    bn = nn.BatchNorm1d(2)
    update_bn_stats(bn, [_X1], num_iters=1, progress="tqdm")
    torch.testing.assert_close(bn.running_mean, torch.tensor([2.0, 3.0]))
