"""Checks a node declaration once, when it is registered, so a wrong one fails there with its name instead of
at run time on somebody's prompt.

Three things are checked:
- the inputs against the function's signature, the way the executor calls it: `function(ctx, **inputs)`, with
  the context first and, by keyword, every declared input the prompt sets (optional ones may be absent) and
  every hidden input (always given);
- the socket type names against `engine.core.types.KNOWN_TYPES` (comma unions part by part, "*" for any);
- the options against the type they decorate (no `multiline` on a MODEL socket, no `min` on a STRING).
"""

from __future__ import annotations

import inspect
from typing import Any

from engine.core.schema import Input, NodeSchema
from engine.core.types import BOOLEAN, COMBO, FLOAT, INT, MATCH_TYPE, PRIMITIVES, STRING, unknown_type_names

_NUMBERS = frozenset({INT, FLOAT})
# Front-end options that only mean something on some types (ComfyUI's input options); other options pass.
_OPTION_TYPES: dict[str, frozenset[str]] = {
    "min": _NUMBERS, "max": _NUMBERS, "step": _NUMBERS, "display": _NUMBERS, "round": frozenset({FLOAT}),
    "multiline": frozenset({STRING}), "dynamicPrompts": frozenset({STRING}), "placeholder": frozenset({STRING}),
    "label_on": frozenset({BOOLEAN}), "label_off": frozenset({BOOLEAN}),
    "control_after_generate": frozenset({INT, COMBO}),
    "image_upload": frozenset({COMBO}), "multiselect": frozenset({COMBO}), "options": frozenset({COMBO}),
    "remote": frozenset({COMBO}),
    "template": frozenset({MATCH_TYPE}),
}
_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
_POSITIONAL_KINDS = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                     inspect.Parameter.VAR_POSITIONAL)


class SchemaError(ValueError):
    """A node declaration that does not fit its function, names an unknown type or gives options that do not fit."""


def check_schema(schema: NodeSchema) -> None:
    """Raise `SchemaError` naming the node and the input when the declaration is wrong."""
    for inp in schema.inputs:
        _check_input_type(schema, inp)
        _check_options(schema, inp)
    for slot, output in enumerate(schema.outputs):
        unknown = unknown_type_names(output.type)
        if unknown:
            raise SchemaError(f"node {schema.name}: output {slot} ({output.display_name}) has unknown type "
                              f"{', '.join(map(repr, unknown))}; known types are listed in engine/core/types.py")
    clashes = sorted(set(schema.hidden) & {inp.name for inp in schema.inputs})
    if clashes:
        raise SchemaError(f"node {schema.name}: hidden input {clashes[0]!r} is also declared as an input")
    _check_signature(schema)


def _check_input_type(schema: NodeSchema, inp: Input) -> None:
    where = f"node {schema.name}: input {inp.name!r}"
    if inp.is_combo != (inp.type == COMBO):
        raise SchemaError(f"{where}: a combo needs both the COMBO type and its choices (use Combo(...))")
    unknown = unknown_type_names(inp.type)
    if unknown:
        raise SchemaError(f"{where} has unknown type {', '.join(map(repr, unknown))}; known types are listed in "
                          "engine/core/types.py")


def _check_options(schema: NodeSchema, inp: Input) -> None:
    where = f"node {schema.name}: input {inp.name!r} of type {inp.type}"
    given = {"min": inp.min, "max": inp.max, "step": inp.step, "round": inp.round,
             "multiline": inp.multiline or None, **inp.extra}
    for option, value in given.items():
        allowed = _OPTION_TYPES.get(option)
        if value is not None and allowed is not None and inp.type not in allowed:
            raise SchemaError(f"{where}: option {option!r} only fits {' or '.join(sorted(allowed))} inputs")
    is_widget_type = inp.is_combo or inp.type in PRIMITIVES
    if inp.force_input and not is_widget_type:
        raise SchemaError(f"{where}: force_input only fits widget types (INT, FLOAT, STRING, BOOLEAN, COMBO); "
                          "this input is a socket already")
    if inp.v3_combo and not inp.is_combo:
        raise SchemaError(f"{where}: v3_combo only fits combos")
    if inp.default is None:
        return
    if not is_widget_type:
        raise SchemaError(f"{where}: a default only fits widget types; a {inp.type} socket gets its value from a link")
    _check_default(where, inp)


def _check_default(where: str, inp: Input) -> None:
    default = inp.default
    fits = {INT: isinstance(default, int) and not isinstance(default, bool),
            FLOAT: isinstance(default, (int, float)) and not isinstance(default, bool),
            STRING: isinstance(default, str), BOOLEAN: isinstance(default, bool)}
    if not fits.get(inp.type, True):
        raise SchemaError(f"{where}: default {default!r} is not a {inp.type}")
    if inp.type in _NUMBERS:
        if inp.min is not None and inp.max is not None and inp.min > inp.max:
            raise SchemaError(f"{where}: min {inp.min} is above max {inp.max}")
        if (inp.min is not None and default < inp.min) or (inp.max is not None and default > inp.max):
            raise SchemaError(f"{where}: default {default} is outside [{inp.min}, {inp.max}]")
    if inp.is_combo and not callable(inp.choices) and inp.choices and not inp.extra.get("multiselect"):
        if default not in inp.choices:
            raise SchemaError(f"{where}: default {default!r} is not one of its choices")


def _check_signature(schema: NodeSchema) -> None:
    function = schema.function
    label = getattr(function, "__qualname__", repr(function))
    try:
        params = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return  # a C callable exposes no signature to compare with
    positional = [p for p in params if p.kind in _POSITIONAL_KINDS]
    if not positional:
        raise SchemaError(f"node {schema.name}: function {label} must take the node context as its first "
                          "positional parameter")
    context = positional[0]
    rest = [p for p in params if p is not context]
    by_keyword = {p.name for p in rest if p.kind in _KEYWORD_KINDS}
    takes_any_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    declared = {inp.name: inp for inp in schema.inputs}
    for name in [*declared, *schema.hidden]:
        if name not in by_keyword and not takes_any_keyword:
            kind = "hidden input" if name in schema.hidden else "input"
            raise SchemaError(f"node {schema.name}: {kind} {name!r} is declared but function {label} has no "
                              f"keyword parameter {name!r} (nor **kwargs)")
    for param in rest:
        if _gets_a_value(param, schema.hidden):
            continue
        inp = declared.get(param.name)
        if inp is None or param.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise SchemaError(f"node {schema.name}: parameter {param.name!r} of function {label} has no default "
                              "and is not a declared input")
        if inp.optional:
            raise SchemaError(f"node {schema.name}: optional input {param.name!r} may be left unconnected, so "
                              f"parameter {param.name!r} of function {label} needs a default")


def _gets_a_value(param: inspect.Parameter, hidden: Any) -> bool:
    """Whether a call can always fill `param`: it has a default, collects the rest, or is a hidden input."""
    if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
        return True
    return param.default is not inspect.Parameter.empty or (param.name in hidden and param.kind in _KEYWORD_KINDS)
