"""Safe YAML reading for Detectron2 configs, including the one Python tag its zoo uses.

Detectron2's RetinaNet configs write their anchor sizes as
``!!python/object/apply:eval ["[[x, x * 2**(1.0/3), x * 2**(2.0/3) ] for x in [32, ...]]"]``,
which Detectron2 reads with ``yaml.unsafe_load`` (arbitrary code execution). Heron reads every
config with a ``yaml.SafeLoader`` subclass instead: that one tag is evaluated by a small
interpreter over a whitelist of ``ast`` nodes (numbers, lists and tuples, list comprehensions
over simple names, unary and binary arithmetic), and every other ``python/...`` tag is refused.
Nothing is ever passed to Python's ``eval``.
"""

from __future__ import annotations

import ast
import operator
from typing import IO, Any

import yaml

__all__ = ["EVAL_TAG", "load_yaml", "safe_eval_expression"]

# The tag as PyYAML resolves the "!!python/object/apply:eval" shorthand.
EVAL_TAG = "tag:yaml.org,2002:python/object/apply:eval"
_PYTHON_TAG_PREFIX = "tag:yaml.org,2002:python/"

_BINARY_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY_OPS = {ast.UAdd: operator.pos, ast.USub: operator.neg}
# Integer powers with a larger result are refused: ``9**9**9`` would never finish.
_MAX_INT_POWER_BITS = 1 << 16


class _Refused(Exception):
    """Raised inside the interpreter; turned into a ValueError naming file and expression."""


def safe_eval_expression(expr: str, filename: str = "<string>") -> Any:
    """Evaluate an arithmetic list expression from a config without using ``eval``.

    Accepted: int and float literals; lists and tuples; list comprehensions
    ``[<expr> for <name> in <expr>]`` (several ``for`` clauses allowed, no ``if``); names bound
    by an enclosing comprehension; unary ``+``/``-``; binary ``+ - * / // % **`` on numbers.

    Args:
        expr: the expression text, e.g. ``"[[x, x * 2**(1.0/3)] for x in [32, 64]]"``.
        filename: the config file it came from, used in error messages.

    Returns:
        The value: a number, or nested lists/tuples of numbers.

    Raises:
        ValueError: naming ``filename`` and ``expr``, if the expression does not parse or uses
            anything outside the whitelist (calls, attributes, subscripts, free names,
            strings, comparisons, ...).
    """
    if not isinstance(expr, str):
        raise ValueError(
            f"{filename}: !!python/object/apply:eval expects one string expression, "
            f"got {type(expr).__name__} {expr!r}"
        )
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        reason = e.msg if isinstance(e, SyntaxError) else repr(e)
        raise ValueError(f"{filename}: cannot parse eval expression {expr!r}: {reason}") from e
    try:
        return _evaluate(tree.body, {})
    except _Refused as e:
        raise ValueError(
            f"{filename}: refused to evaluate expression {expr!r}: {e}. Only numbers, lists, "
            "tuples, list comprehensions and arithmetic are allowed."
        ) from None
    except (ArithmeticError, TypeError, RecursionError) as e:
        raise ValueError(f"{filename}: evaluating expression {expr!r} failed: {e}") from e


def _evaluate(node: ast.AST, scope: dict[str, Any]) -> Any:
    """Interpret one whitelisted node; ``scope`` holds comprehension-bound names."""
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Refused(f"constant {value!r} is not a number")
        return value
    if isinstance(node, ast.List):
        return [_evaluate(elt, scope) for elt in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_evaluate(elt, scope) for elt in node.elts)
    if isinstance(node, ast.Name):
        if node.id not in scope:
            raise _Refused(f"name {node.id!r} is not bound by a comprehension")
        return scope[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPS:
        return _UNARY_OPS[type(node.op)](_number(_evaluate(node.operand, scope)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
        left = _number(_evaluate(node.left, scope))
        right = _number(_evaluate(node.right, scope))
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        return _BINARY_OPS[type(node.op)](left, right)
    if isinstance(node, ast.ListComp):
        out: list[Any] = []
        _run_generators(node.elt, node.generators, scope, out)
        return out
    raise _Refused(_describe(node))


def _run_generators(
    elt: ast.AST, generators: list[ast.comprehension], scope: dict[str, Any], out: list[Any]
) -> None:
    """Expand ``for`` clauses left to right (outermost first), appending each ``elt``."""
    if not generators:
        out.append(_evaluate(elt, scope))
        return
    gen = generators[0]
    if gen.ifs or gen.is_async:
        raise _Refused("comprehension conditions and async comprehensions are not allowed")
    if not isinstance(gen.target, ast.Name):
        raise _Refused("a comprehension target must be a single name")
    iterable = _evaluate(gen.iter, scope)
    if not isinstance(iterable, (list, tuple)):
        raise _Refused("a comprehension must iterate over a list or tuple")
    for item in iterable:
        _run_generators(elt, generators[1:], {**scope, gen.target.id: item}, out)


def _check_power(base: int | float, exponent: int | float) -> None:
    # Integer powers are exact and unbounded: refuse those whose result would be huge.
    if isinstance(base, int) and isinstance(exponent, int):
        result_bits = max(abs(base).bit_length(), 1) * abs(exponent)
        if result_bits > _MAX_INT_POWER_BITS:
            raise _Refused(f"{base}**{exponent} would have about {result_bits} bits")


def _number(value: Any) -> int | float:
    # Arithmetic on lists (repetition, concatenation) is refused: only numbers combine.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Refused(f"arithmetic on a {type(value).__name__} is not allowed")
    return value


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Call):
        return "function calls are not allowed"
    if isinstance(node, ast.Attribute):
        return f"attribute access ('.{node.attr}') is not allowed"
    if isinstance(node, ast.Subscript):
        return "subscripts are not allowed"
    return f"{type(node).__name__} expressions are not allowed"


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader plus the restricted eval tag; ``heron_filename`` names the file in errors."""

    heron_filename = "<string>"


def _construct_eval(loader: _ConfigLoader, node: yaml.Node) -> Any:
    filename = loader.heron_filename
    if not isinstance(node, yaml.SequenceNode) or len(node.value) != 1:
        raise ValueError(
            f"{filename}: !!python/object/apply:eval must be given a list holding exactly "
            f"one expression string ({node.start_mark})"
        )
    expr = loader.construct_object(node.value[0], deep=True)
    return safe_eval_expression(expr, filename)


def _refuse_python_tag(loader: _ConfigLoader, suffix: str, node: yaml.Node) -> Any:
    raise ValueError(
        f"{loader.heron_filename}: the YAML tag !!python/{suffix} is not allowed in configs "
        f"({node.start_mark}); only !!python/object/apply:eval with an arithmetic list "
        "expression is accepted"
    )


_ConfigLoader.add_constructor(EVAL_TAG, _construct_eval)
_ConfigLoader.add_multi_constructor(_PYTHON_TAG_PREFIX, _refuse_python_tag)


def load_yaml(stream: str | IO[str], filename: str = "<string>") -> Any:
    """Parse YAML text safely, evaluating the RetinaNet eval tag with the restricted evaluator.

    Args:
        stream: YAML text or an open text file.
        filename: where the text came from, used in error messages.

    Returns:
        The parsed document (usually a dict); None for an empty document.

    Raises:
        ValueError: naming ``filename``, on malformed YAML, a refused Python tag, an unknown
            tag or an eval expression outside the whitelist.
    """
    loader = _ConfigLoader(stream)
    loader.heron_filename = filename
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        raise ValueError(f"{filename}: cannot read YAML config: {e}") from e
    finally:
        loader.dispose()
