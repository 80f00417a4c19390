import itertools
import math

import pytest
import torch
from torch.utils.data.sampler import SequentialSampler

from heron.data.samplers.distributed_sampler import (
    InferenceSampler,
    RandomSubsetTrainingSampler,
    RepeatFactorTrainingSampler,
    TrainingSampler,
)
from heron.data.samplers.grouped_batch_sampler import GroupedBatchSampler
from heron.utils import comm


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def _as_rank(monkeypatch, rank, world_size):
    monkeypatch.setattr(comm, "get_rank", lambda: rank)
    monkeypatch.setattr(comm, "get_world_size", lambda: world_size)


# ---- TrainingSampler -------------------------------------------------------------------


def test_training_sampler_same_seed_gives_same_stream():
    assert _take(TrainingSampler(10, seed=3), 40) == _take(TrainingSampler(10, seed=3), 40)


def test_training_sampler_different_seeds_give_different_streams():
    # 40 draws from two independent shuffles of 10 items: coincidence has probability (1/10!)^4
    assert _take(TrainingSampler(10, seed=3), 40) != _take(TrainingSampler(10, seed=4), 40)


def test_training_sampler_each_epoch_is_a_permutation():
    stream = _take(TrainingSampler(7, seed=0), 7 * 5)
    for epoch in range(5):
        assert sorted(stream[epoch * 7 : (epoch + 1) * 7]) == list(range(7))


def test_training_sampler_without_shuffle_repeats_range():
    assert _take(TrainingSampler(3, shuffle=False, seed=0), 8) == [0, 1, 2, 0, 1, 2, 0, 1]


def test_training_sampler_seed_none_uses_shared_random_seed(monkeypatch):
    monkeypatch.setattr(comm, "shared_random_seed", lambda: 123)
    assert _take(TrainingSampler(10), 30) == _take(TrainingSampler(10, seed=123), 30)


@pytest.mark.parametrize("shuffle", [True, False])
def test_training_sampler_ranks_interleave_to_single_rank_stream(monkeypatch, shuffle):
    full = _take(TrainingSampler(5, shuffle=shuffle, seed=7), 30)
    _as_rank(monkeypatch, 0, 2)
    rank0 = _take(TrainingSampler(5, shuffle=shuffle, seed=7), 15)
    _as_rank(monkeypatch, 1, 2)
    rank1 = _take(TrainingSampler(5, shuffle=shuffle, seed=7), 15)
    assert rank0 == full[0::2]
    assert rank1 == full[1::2]


def test_training_sampler_single_item():
    assert _take(TrainingSampler(1, seed=0), 4) == [0, 0, 0, 0]


@pytest.mark.parametrize("size", [0, -3])
def test_training_sampler_rejects_non_positive_size(size):
    with pytest.raises(ValueError, match=f"size must be >= 1, got {size}"):
        TrainingSampler(size, seed=0)


def test_training_sampler_rejects_non_int_size():
    with pytest.raises(TypeError, match="size must be an int, got float"):
        TrainingSampler(3.0, seed=0)


# ---- RandomSubsetTrainingSampler --------------------------------------------------------


def test_random_subset_sampler_uses_int_of_size_times_ratio_items():
    # int(10 * 0.35) = 3 distinct items, each epoch walks all of them once
    sampler = RandomSubsetTrainingSampler(10, 0.35, seed_shuffle=0, seed_subset=1)
    stream = _take(sampler, 3 * 6)
    subset = sorted(set(stream))
    assert len(subset) == 3
    assert all(0 <= i < 10 for i in subset)
    for epoch in range(6):
        assert sorted(stream[epoch * 3 : (epoch + 1) * 3]) == subset


def test_random_subset_sampler_subset_depends_on_seed_subset_only():
    a = RandomSubsetTrainingSampler(100, 0.5, seed_shuffle=0, seed_subset=1)
    b = RandomSubsetTrainingSampler(100, 0.5, seed_shuffle=9, seed_subset=1)
    c = RandomSubsetTrainingSampler(100, 0.5, seed_shuffle=0, seed_subset=2)
    assert set(_take(a, 50)) == set(_take(b, 50))
    # two random halves of 100 items coincide with probability 1 / C(100, 50)
    assert set(_take(a, 50)) != set(_take(c, 50))


def test_random_subset_sampler_full_ratio_is_a_permutation_of_all_items():
    stream = _take(RandomSubsetTrainingSampler(6, 1.0, seed_shuffle=0, seed_subset=0), 6)
    assert sorted(stream) == list(range(6))


@pytest.mark.parametrize("ratio", [0.0, 1.5, -0.1])
def test_random_subset_sampler_rejects_ratio_outside_unit_interval(ratio):
    with pytest.raises(ValueError, match="subset_ratio must be in"):
        RandomSubsetTrainingSampler(10, ratio, seed_shuffle=0, seed_subset=0)


def test_random_subset_sampler_rejects_empty_subset():
    with pytest.raises(ValueError, match=r"keeps no items"):
        RandomSubsetTrainingSampler(3, 0.2, seed_shuffle=0, seed_subset=0)


# ---- RepeatFactorTrainingSampler --------------------------------------------------------


def _record(*cats):
    return {"annotations": [{"category_id": c} for c in cats]}


def test_repeat_factors_follow_lvis_rule():
    # category 1 ("A") in 1 of 10 images: f = 0.1, r = max(1, sqrt(0.5 / 0.1)) = sqrt(5)
    # category 2 ("B") in all 10: f = 1, r = max(1, sqrt(0.5)) = 1
    # (image 0 repeats category 2; an image counts once per category)
    dicts = [_record(1, 2, 2)] + [_record(2) for _ in range(9)]
    factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, 0.5)
    expected = torch.tensor([math.sqrt(5)] + [1.0] * 9)
    torch.testing.assert_close(factors, expected)


def test_repeat_factors_without_sqrt_and_for_unannotated_images():
    # category 1 in 1 of 4 images: f = 0.25, r = 1 / 0.25 = 4; category 2 in 2 of 4:
    # r = max(1, 1 / 0.5) = 2; an image without annotations gets 1
    dicts = [_record(1, 2), _record(2), _record(), _record()]
    factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
        dicts, 1.0, sqrt=False
    )
    torch.testing.assert_close(factors, torch.tensor([4.0, 2.0, 1.0, 1.0]))


def test_repeat_factors_of_empty_dataset_is_empty():
    factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency([], 0.5)
    assert factors.shape == (0,)


def test_repeat_factors_names_record_without_annotations_key():
    with pytest.raises(KeyError, match=r"dataset_dicts\[1\] has no 'annotations'"):
        RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
            [_record(1), {"file_name": "x.jpg"}], 0.5
        )


def test_repeat_factor_sampler_expected_counts_match_factors():
    factors = torch.tensor([2.25, 0.5, 1.0, 0.0, 3.0])
    sampler = RepeatFactorTrainingSampler(factors, shuffle=False, seed=0)
    g = torch.Generator()
    g.manual_seed(0)
    epochs = 2000
    counts = torch.zeros(5)
    for _ in range(epochs):
        counts += torch.bincount(sampler._get_epoch_indices(g), minlength=5)
    mean = counts / epochs
    # integer factors are exact; fractional parts p give a per-epoch std of sqrt(p(1-p))
    # <= 0.5, so the 2000-epoch mean has std <= 0.5 / sqrt(2000) = 0.011; allow 5 std.
    torch.testing.assert_close(mean[[2, 3, 4]], torch.tensor([1.0, 0.0, 3.0]))
    assert abs(mean[0].item() - 2.25) < 0.056
    assert abs(mean[1].item() - 0.5) < 0.056


def test_repeat_factor_sampler_ranks_interleave_to_single_rank_stream(monkeypatch):
    factors = torch.tensor([1.5, 2.0, 0.3])
    full = _take(RepeatFactorTrainingSampler(factors, seed=5), 40)
    _as_rank(monkeypatch, 0, 2)
    rank0 = _take(RepeatFactorTrainingSampler(factors, seed=5), 20)
    _as_rank(monkeypatch, 1, 2)
    rank1 = _take(RepeatFactorTrainingSampler(factors, seed=5), 20)
    assert rank0 == full[0::2]
    assert rank1 == full[1::2]


def test_repeat_factor_sampler_is_deterministic_given_seed():
    factors = torch.tensor([1.5, 2.0, 0.3, 1.0])
    a = _take(RepeatFactorTrainingSampler(factors, seed=5), 50)
    assert a == _take(RepeatFactorTrainingSampler(factors, seed=5), 50)
    assert a != _take(RepeatFactorTrainingSampler(factors, seed=6), 50)


def test_repeat_factor_sampler_rejects_negative_and_2d_factors():
    with pytest.raises(ValueError, match=r"negative at indices \[1\]"):
        RepeatFactorTrainingSampler(torch.tensor([1.0, -1.0]), seed=0)
    with pytest.raises(ValueError, match=r"got shape \(2, 1\)"):
        RepeatFactorTrainingSampler(torch.ones(2, 1), seed=0)


# ---- InferenceSampler ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 5, 7])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_inference_sampler_shards_cover_range_in_order(monkeypatch, size, world_size):
    shards = []
    for rank in range(world_size):
        _as_rank(monkeypatch, rank, world_size)
        sampler = InferenceSampler(size)
        shards.append(list(sampler))
        assert len(sampler) == len(shards[-1])
    assert list(itertools.chain(*shards)) == list(range(size))
    lengths = [len(s) for s in shards]
    assert max(lengths) - min(lengths) <= 1
    assert lengths == sorted(lengths, reverse=True)  # the extra items go to the first ranks


def test_inference_sampler_splits_seven_over_three_ranks():
    # 7 = 3 + 2 + 2: the one leftover item goes to rank 0
    shards = [list(InferenceSampler._get_local_indices(7, 3, r)) for r in range(3)]
    assert shards == [[0, 1, 2], [3, 4], [5, 6]]


def test_inference_sampler_rejects_negative_size():
    with pytest.raises(ValueError, match="size must be >= 0, got -1"):
        InferenceSampler(-1)


# ---- GroupedBatchSampler ------------------------------------------------------------------


def test_grouped_batch_sampler_batches_within_groups_in_stream_order():
    group_ids = [0, 1, 0, 0, 1, 1, 0, 1, 0]
    sampler = GroupedBatchSampler(SequentialSampler(range(9)), group_ids, 2)
    # 0,2 fill group 0 first; then 1,4 (group 1); 3,6 (group 0); 5,7 (group 1); 8 stays
    assert list(sampler) == [[0, 2], [1, 4], [3, 6], [5, 7]]


def test_grouped_batch_sampler_batches_hold_one_group_with_training_sampler():
    group_ids = [0, 1, 1, 0, 1, 0, 0, 1, 1, 0]
    batches = _take(GroupedBatchSampler(TrainingSampler(10, seed=0), group_ids, 3), 20)
    for batch in batches:
        assert len(batch) == 3
        assert len({group_ids[i] for i in batch}) == 1


def test_grouped_batch_sampler_rejects_non_sampler():
    with pytest.raises(
        ValueError, match=r"sampler must be a torch\.utils\.data\.Sampler, got list"
    ):
        GroupedBatchSampler([0, 1], [0, 0], 1)


def test_grouped_batch_sampler_rejects_bad_group_ids_and_batch_size():
    with pytest.raises(ValueError, match=r"group_ids must be 1-d \(N,\), got shape \(2, 1\)"):
        GroupedBatchSampler(SequentialSampler(range(2)), [[0], [1]], 1)
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        GroupedBatchSampler(SequentialSampler(range(2)), [0, 1], 0)


def test_grouped_batch_sampler_has_no_len():
    sampler = GroupedBatchSampler(SequentialSampler(range(2)), [0, 1], 1)
    with pytest.raises(TypeError, match="not defined"):
        len(sampler)
