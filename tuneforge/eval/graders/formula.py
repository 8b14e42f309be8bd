"""The `multi` grader's `calculate_output`: arithmetic over sub-grader scores, as OpenAI's.

Allowed: numbers, sub-grader names, + - * / ^ (or **), parentheses and min, max, abs, floor,
ceil, exp, sqrt, log. Parsed with `ast` and evaluated by walking the tree: no `eval`, so a
config cannot run code through a formula.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Mapping

FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min,
    "max": max,
    "abs": abs,
    "floor": math.floor,
    "ceil": math.ceil,
    "exp": math.exp,
    "sqrt": math.sqrt,
    "log": math.log,
}
_BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
}


class FormulaError(ValueError):
    pass


def parse_formula(text: str, names: set[str]) -> ast.Expression:
    """The checked tree of `text`; FormulaError says what is not allowed (unknown name, operator...)."""
    try:
        # OpenAI writes powers as ^; as Python's ** it keeps the precedence of a power (0.3 * s^2 squares s only)
        tree = ast.parse(text.strip().replace("^", "**"), mode="eval")
    except SyntaxError as exc:
        raise FormulaError(f"not a formula ({exc.msg} at column {exc.offset})") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in names and node.id not in FUNCTIONS:
            raise FormulaError(
                f"unknown name '{node.id}': use the sub-graders ({', '.join(sorted(names))}) or {', '.join(FUNCTIONS)}"
            )
        if isinstance(node, ast.Call) and not (
            isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS and not node.keywords
        ):
            raise FormulaError(f"only {', '.join(FUNCTIONS)} can be called")
        if isinstance(node, ast.BinOp) and type(node.op) not in _BINARY:
            raise FormulaError(f"operator {type(node.op).__name__} is not allowed: use + - * / ^")
        if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float)):
            raise FormulaError(f"{node.value!r} is not a number")
        if not isinstance(
            node,
            (
                ast.Expression,
                ast.BinOp,
                ast.UnaryOp,
                ast.Name,
                ast.Constant,
                ast.Call,
                ast.Load,
                ast.USub,
                ast.UAdd,
                *_BINARY,
            ),
        ):
            raise FormulaError(f"{type(node).__name__} is not allowed in a formula")
    return tree


def evaluate(tree: ast.Expression, scores: Mapping[str, float]) -> float:
    """The formula's value for one item's sub-grader scores (ZeroDivisionError etc. propagate)."""
    return float(_eval(tree.body, scores))


def _eval(node: ast.AST, scores: Mapping[str, float]) -> float:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return scores[node.id]
    if isinstance(node, ast.UnaryOp):
        value = _eval(node.operand, scores)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_eval(node.left, scores), _eval(node.right, scores))
    if isinstance(node, ast.Call):
        return FUNCTIONS[node.func.id](*(_eval(a, scores) for a in node.args))
    raise FormulaError(f"{type(node).__name__} is not allowed in a formula")  # parse_formula refuses these first
