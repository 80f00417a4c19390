from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heron.solver.param_scheduler import (
    CompositeParamScheduler,
    ConstantParamScheduler,
    CosineParamScheduler,
    ExponentialParamScheduler,
    LinearParamScheduler,
    MultiStepParamScheduler,
    ParamScheduler,
    PolynomialDecayParamScheduler,
    StepParamScheduler,
    StepWithFixedGammaParamScheduler,
)

WHERE = st.floats(min_value=0.0, max_value=1.0, exclude_max=True, allow_nan=False)


def test_param_scheduler_subclass_without_call_cannot_be_built():
    class Incomplete(ParamScheduler):
        pass

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()


def test_constant_is_the_value_everywhere_before_one():
    sched = ConstantParamScheduler(0.3)
    assert [sched(w) for w in (0.0, 0.5, 0.999)] == [0.3, 0.3, 0.3]


def test_constant_rejects_where_at_one():
    with pytest.raises(ValueError, match="where must be in"):
        ConstantParamScheduler(0.3)(1.0)


@settings(max_examples=100, deadline=None)
@given(where=WHERE)
def test_cosine_follows_half_cosine_formula(where):
    start, end = 2.0, 0.5
    expected = end + 0.5 * (start - end) * (1 + math.cos(math.pi * where))
    assert CosineParamScheduler(start, end)(where) == pytest.approx(expected, rel=1e-12)


def test_cosine_endpoints_and_midpoint():
    sched = CosineParamScheduler(2.0, 0.5)
    # cos(0) = 1 -> start; cos(pi/2) = 0 -> mean; cos(pi) = -1 -> end
    assert sched(0.0) == 2.0
    assert sched(0.5) == pytest.approx(1.25)
    assert sched(1.0) == pytest.approx(0.5)


def test_exponential_decays_by_decay_over_the_run():
    sched = ExponentialParamScheduler(2.0, 0.25)
    assert sched(0.0) == 2.0
    assert sched(0.5) == pytest.approx(1.0)  # 2 * 0.25 ** 0.5 = 2 * 0.5
    assert sched(1.0) == pytest.approx(0.5)


def test_linear_interpolates_start_to_end():
    sched = LinearParamScheduler(1.0, 3.0)
    assert [sched(w) for w in (0.0, 0.25, 1.0)] == pytest.approx([1.0, 1.5, 3.0])


def test_polynomial_decay_formula():
    sched = PolynomialDecayParamScheduler(2.0, 2.0)
    assert sched(0.0) == 2.0
    assert sched(0.5) == pytest.approx(0.5)  # 2 * (1 - 0.5) ** 2
    assert sched(1.0) == 0.0


def test_multistep_changes_value_at_milestones():
    sched = MultiStepParamScheduler([1.0, 0.1, 0.01], num_updates=10, milestones=[4, 7])
    got = [sched(i / 10) for i in range(11)]
    # updates 0..3 -> 1, 4..6 -> 0.1, 7..10 -> 0.01
    assert got == [1.0] * 4 + [0.1] * 3 + [0.01] * 4


def test_multistep_default_milestones_are_equispaced():
    sched = MultiStepParamScheduler([1.0, 2.0, 3.0], num_updates=10)
    # width ceil(10 / 3) = 4 -> milestones [4, 8]
    assert [sched(i / 10) for i in range(10)] == [1.0] * 4 + [2.0] * 4 + [3.0] * 2


def test_multistep_last_milestone_is_num_updates_when_num_updates_missing():
    sched = MultiStepParamScheduler([1.0, 2.0, 3.0], milestones=[4, 7, 10])
    expected = MultiStepParamScheduler([1.0, 2.0, 3.0], num_updates=10, milestones=[4, 7])
    assert [sched(i / 10) for i in range(11)] == [expected(i / 10) for i in range(11)]


def test_multistep_epsilon_puts_a_rounded_down_where_on_its_milestone():
    sched = MultiStepParamScheduler([1.0, 2.0], num_updates=3, milestones=[1])
    # 1/3 in floating point times 3 is 0.999...; the epsilon lands it on update 1
    assert sched((1 / 3) * (1 - 1e-9)) == 2.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"values": [1, 2]}, "num_updates or milestones"),
        ({"values": [1, 2], "num_updates": 10, "milestones": [2, 3]}, "list of 1 update"),
        ({"values": [1, 2], "milestones": [5]}, "list of 2 update"),
        ({"values": [1, 2, 3], "num_updates": 2}, "num_updates must be at least"),
        ({"values": [1, 2], "num_updates": 10, "milestones": [10]}, "smaller than num_updates"),
        ({"values": [1, 2, 3], "num_updates": 10, "milestones": [5, 5]}, "strictly increasing"),
        ({"values": [1, 2], "num_updates": 10, "milestones": [0]}, "strictly increasing"),
    ],
)
def test_multistep_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiStepParamScheduler(**kwargs)


def test_multistep_accepts_where_one_and_rejects_beyond():
    sched = MultiStepParamScheduler([1.0, 2.0], num_updates=4, milestones=[2])
    assert sched(1.0) == 2.0
    with pytest.raises(ValueError, match=r"got 1\.25"):
        sched(1.25)


def test_step_splits_interval_into_equal_pieces():
    sched = StepParamScheduler(num_updates=9, values=[1.0, 2.0, 3.0])
    assert sched(0.0) == 1.0
    assert sched(0.3) == 1.0  # int(0.300001 * 3) = 0
    assert sched(1 / 3) == 2.0
    assert sched(0.7) == 3.0
    assert sched(1 - 1e-7) == 3.0  # the epsilon would index past the end


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_updates": 0, "values": [1.0]}, "num_updates must be > 0, got 0"),
        ({"num_updates": 5, "values": []}, "values must be a non-empty list"),
        ({"num_updates": 5, "values": 3.0}, "values must be a non-empty list"),
    ],
)
def test_step_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StepParamScheduler(**kwargs)


def test_step_gives_last_value_at_one_and_rejects_beyond():
    sched = StepParamScheduler(num_updates=3, values=[1.0, 2.0])
    assert sched(1.0) == 2.0
    with pytest.raises(ValueError, match=r"where must be in \[0, 1\].*got 1\.5"):
        sched(1.5)


def test_step_with_fixed_gamma_decays_num_decays_times():
    sched = StepWithFixedGammaParamScheduler(base_value=1.0, num_decays=2, gamma=0.5, num_updates=6)
    # values [1, 0.5, 0.25], each a third of the run
    assert [sched(i / 6) for i in range(6)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"base_value": 0.0}, "base_value must be a positive number"),
        ({"gamma": -0.1}, "gamma must be a positive number"),
        ({"gamma": True}, "gamma must be a positive number"),
        ({"num_decays": 0}, "num_decays must be a positive integer"),
        ({"num_decays": 2.0}, "num_decays must be a positive integer"),
        ({"num_updates": -3}, "num_updates must be a positive integer"),
    ],
)
def test_step_with_fixed_gamma_rejects_bad_arguments(kwargs, match):
    args = {"base_value": 1.0, "num_decays": 2, "gamma": 0.1, "num_updates": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        StepWithFixedGammaParamScheduler(**args)


def _reference_composite(where, pieces):
    """Piecewise evaluation written directly from the definition; pieces: (f, length, scaling)."""
    start = 0.0
    for index, (f, length, scaling) in enumerate(pieces):
        last = index == len(pieces) - 1
        if where + 1e-6 <= start + length or last:
            return f((where - start) / length if scaling == "rescaled" else where)
        start += length
    raise AssertionError("unreachable")


@settings(max_examples=100, deadline=None)
@given(
    where=WHERE, scalings=st.lists(st.sampled_from(["rescaled", "fixed"]), min_size=3, max_size=3)
)
def test_composite_matches_piecewise_definition(where, scalings):
    scheds = [
        LinearParamScheduler(0.0, 1.0),
        CosineParamScheduler(1.0, 0.2),
        ExponentialParamScheduler(2.0, 0.5),
    ]
    lengths = [0.25, 0.5, 0.25]
    composite = CompositeParamScheduler(scheds, lengths, scalings)
    expected = _reference_composite(where, list(zip(scheds, lengths, scalings)))
    assert composite(where) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_composite_rescaled_piece_sees_its_own_zero_to_one():
    composite = CompositeParamScheduler(
        [ConstantParamScheduler(5.0), LinearParamScheduler(0.0, 4.0)],
        lengths=[0.5, 0.5],
        interval_scaling=["rescaled", "rescaled"],
    )
    assert composite(0.25) == 5.0
    assert composite(0.75) == pytest.approx(2.0)  # (0.75 - 0.5) / 0.5 = 0.5 -> 0.5 * 4


def test_composite_fixed_piece_sees_global_where():
    composite = CompositeParamScheduler(
        [ConstantParamScheduler(5.0), LinearParamScheduler(0.0, 4.0)],
        lengths=[0.5, 0.5],
        interval_scaling=["rescaled", "fixed"],
    )
    assert composite(0.75) == pytest.approx(3.0)  # 0.75 * 4


def test_composite_adjusts_last_length_without_editing_callers_list():
    lengths = [0.3, 0.7004]
    composite = CompositeParamScheduler(
        [ConstantParamScheduler(1.0), ConstantParamScheduler(2.0)], lengths, ["fixed", "fixed"]
    )
    assert lengths == [0.3, 0.7004]
    assert composite._lengths == [0.3, 0.7]


def test_composite_zero_length_last_piece_does_not_divide_by_zero():
    composite = CompositeParamScheduler(
        [LinearParamScheduler(0.0, 1.0), LinearParamScheduler(3.0, 4.0)],
        lengths=[1.0, 0.0],
        interval_scaling=["rescaled", "rescaled"],
    )
    assert composite(0.5) == pytest.approx(0.5)
    assert composite(1.0) == 3.0  # past the end: the last piece at its start


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (([ConstantParamScheduler(1.0)], [0.5, 0.5], ["fixed"]), "same length"),
        (([], [], []), "at least one scheduler"),
        (([ConstantParamScheduler(1.0)], [0.9], ["fixed"]), "lengths must sum to 1"),
        (([ConstantParamScheduler(1.0)], [1.0], ["stretched"]), "got 'stretched'"),
        (([ConstantParamScheduler(1.0)], [1.0], ["fixed", "fixed"]), "one entry per scheduler"),
    ],
)
def test_composite_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        CompositeParamScheduler(*args)
