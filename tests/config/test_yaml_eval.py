import math

import pytest

from heron.config.yaml_eval import load_yaml, safe_eval_expression

RETINANET_EXPR = "[[x, x * 2**(1.0/3), x * 2**(2.0/3) ] for x in [32, 64, 128, 256, 512 ]]"


def test_retinanet_anchor_expression_gives_three_sizes_per_octave():
    sizes = safe_eval_expression(RETINANET_EXPR, "Base-RetinaNet.yaml")
    assert len(sizes) == 5
    for row, x in zip(sizes, [32, 64, 128, 256, 512]):
        # the same float operations as the expression, in the same order
        assert row == [x, x * math.pow(2, 1.0 / 3), x * math.pow(2, 2.0 / 3)]
    # hand check: 2**(1/3) = 1.259921..., 2**(2/3) = 1.587401...
    assert sizes[0][0] == 32 and isinstance(sizes[0][0], int)
    assert sizes[0][1] == pytest.approx(32 * 1.2599210498948732, rel=1e-15)
    assert sizes[0][2] == pytest.approx(32 * 1.5874010519681994, rel=1e-15)
    assert sizes[4][2] == pytest.approx(812.7493386077181, rel=1e-15)


def test_eval_tag_in_yaml_is_evaluated_restrictedly():
    text = f'SIZES: !!python/object/apply:eval ["{RETINANET_EXPR}"]\n'
    loaded = load_yaml(text, "retina.yaml")
    assert loaded["SIZES"][1][0] == 64
    assert loaded["SIZES"][1][2] == 64 * 2 ** (2.0 / 3)


def test_eval_tag_over_several_lines_as_in_the_zoo():
    text = 'SIZES:\n  !!python/object/apply:eval [\n    "[[x, x * 2] for x in [1, 2]]",\n  ]\n'
    assert load_yaml(text, "f.yaml") == {"SIZES": [[1, 2], [2, 4]]}


def test_arithmetic_operators_and_nesting():
    assert safe_eval_expression("[-1, +2, 7 // 2, 7 % 4, 1 / 4, 2 ** 10, 3 - 5]") == [
        -1,
        2,
        3,
        3,
        0.25,
        1024,
        -2,
    ]
    assert safe_eval_expression("(1, (2.5, 3))") == (1, (2.5, 3))
    assert safe_eval_expression("[x * y for x in [1, 2] for y in [10, 20]]") == [10, 20, 20, 40]
    assert safe_eval_expression("[[y for y in [x, -x]] for x in (1, 2)]") == [[1, -1], [2, -2]]
    assert safe_eval_expression("[]") == []


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("__import__('os').system('x')", "function calls"),
        ("open('f')", "function calls"),
        ("(1).real", "attribute access"),
        ("[1, 2][0]", "subscripts"),
        ("x + 1", "name 'x' is not bound"),
        ("'abc'", "not a number"),
        ("True", "not a number"),
        ("[x for x in [1, 2] if x > 1]", "conditions"),
        ("[0] * 10", "arithmetic on a list"),
        ("9 ** 9 ** 9", "bits"),
        ("lambda: 1", "Lambda"),
        ("{1: 2}", "Dict"),
        ("[x for x in 5]", "iterate over a list"),
    ],
)
def test_expressions_outside_the_whitelist_are_refused_naming_file(expr, reason):
    with pytest.raises(ValueError, match=r"cfg/bad\.yaml") as info:
        safe_eval_expression(expr, "cfg/bad.yaml")
    assert reason in str(info.value)
    assert repr(expr) in str(info.value)


def test_syntax_error_names_file():
    with pytest.raises(ValueError, match=r"bad\.yaml: cannot parse"):
        safe_eval_expression("[1, 2", "bad.yaml")


def test_division_by_zero_is_a_value_error():
    with pytest.raises(ValueError, match=r"z\.yaml.*failed"):
        safe_eval_expression("1 / 0", "z.yaml")


def test_refused_call_inside_eval_tag_names_file():
    text = "A: !!python/object/apply:eval [\"__import__('os').system('x')\"]\n"
    with pytest.raises(ValueError, match=r"evil\.yaml.*function calls"):
        load_yaml(text, "evil.yaml")


@pytest.mark.parametrize(
    "tag_text",
    [
        'A: !!python/object/apply:os.system ["echo hi"]\n',
        "A: !!python/name:os.system\n",
        "A: !!python/object:collections.OrderedDict {}\n",
        "A: !!python/tuple [1, 2]\n",
    ],
)
def test_other_python_tags_are_refused_naming_file(tag_text):
    with pytest.raises(ValueError, match=r"tagged\.yaml: the YAML tag !!python/.* is not allowed"):
        load_yaml(tag_text, "tagged.yaml")


def test_eval_tag_needs_exactly_one_string():
    with pytest.raises(ValueError, match="exactly one expression"):
        load_yaml('A: !!python/object/apply:eval ["1", "2"]\n', "two.yaml")
    with pytest.raises(ValueError, match="exactly one expression"):
        load_yaml("A: !!python/object/apply:eval {args: ['1']}\n", "map.yaml")
    with pytest.raises(ValueError, match=r"one\.yaml.*one string expression"):
        load_yaml("A: !!python/object/apply:eval [5]\n", "one.yaml")


def test_unknown_tags_and_malformed_yaml_name_the_file():
    with pytest.raises(ValueError, match=r"custom\.yaml: cannot read YAML"):
        load_yaml("A: !custom 1\n", "custom.yaml")
    with pytest.raises(ValueError, match=r"broken\.yaml: cannot read YAML"):
        load_yaml("A: [1, 2\n", "broken.yaml")


def test_plain_yaml_loads_as_safe_load_does():
    assert load_yaml("A: 1\nB: [x, 2.5]\nC: {D: null}\n") == {
        "A": 1,
        "B": ["x", 2.5],
        "C": {"D": None},
    }
    assert load_yaml("") is None
