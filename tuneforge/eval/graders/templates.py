"""OpenAI-style grader templates: `{{sample.output_text}}`, `{{sample.output_json}}`, `{{item.field}}`.

`sample` is the model's answer, `item` the test example (its fields and `reference`, the expected
answer). A template that is exactly one reference keeps the value's type (an object for
json_match); otherwise every reference is written into the text (objects as JSON).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

_REF = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_PATH = re.compile(r"^(sample|item)(\.[A-Za-z_][A-Za-z0-9_\-]*)+$")
SAMPLE_FIELDS = ("output_text", "output_json")


class MissingField(KeyError):
    """A template names a field the sample or item does not have (that item's grade is an error)."""

    def __str__(self) -> str:
        return str(self.args[0])


def references(template: str) -> list[str]:
    """The dotted paths a template reads, e.g. ['sample.output_text', 'item.fact']."""
    return _REF.findall(template)


def template_problems(template: str) -> list[str]:
    """What is wrong with a template's references (empty when it is fine); checked with the config."""
    out = []
    for path in references(template):
        if not _PATH.match(path):
            out.append(f"'{{{{{path}}}}}' is not sample.FIELD or item.FIELD")
        elif path.startswith("sample.") and path.split(".")[1] not in SAMPLE_FIELDS:
            out.append(f"'{{{{{path}}}}}': a sample has {', '.join(SAMPLE_FIELDS)}")
    if template.count("{{") != len(references(template)):
        out.append("unbalanced '{{' (write references as {{item.field}})")
    return out


def lookup(path: str, scope: Mapping[str, Any]) -> Any:
    node: Any = scope
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise MissingField(f"{{{{{path}}}}}: no field '{part}'")
        node = node[part]
    return node


def resolve(template: str, scope: Mapping[str, Any]) -> Any:
    """The template's value for one (sample, item): the raw value for a lone reference, else text."""
    whole = _REF.fullmatch(template.strip())
    if whole:
        return lookup(whole.group(1), scope)
    return _REF.sub(lambda m: as_text(lookup(m.group(1), scope)), template)


def render(template: str, scope: Mapping[str, Any]) -> str:
    """The template as text (a lone reference to an object is written as JSON)."""
    return as_text(resolve(template, scope))


def as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)
