"""Value nodes (PrimitiveInt, ...Float, ...String, ...StringMultiline, ...Boolean) and the lazy Switch.

These are real executable nodes, unlike the editor-only `PrimitiveNode` that a UI workflow resolves away.
"""

from __future__ import annotations

from typing import Any

from engine.core.schema import Boolean, Input, Output, node
from engine.core.types import ANY, BOOLEAN, FLOAT, IMAGE, INT, STRING, types_compatible

# ComfyUI's primitives accept any 64-bit value (its bound is symmetric: -(2**63 - 1)).
INT64_LIMIT = 2**63 - 1
# ComfyUI's V3 "match type" template: both branches and the output share whatever type is connected.
MATCH_TYPE = "COMFY_MATCHTYPE_V3"
SWITCH_TEMPLATE = {"allowed_types": "*", "template_id": "switch"}
# Links *into* the switch skip the generic type check (its validate hook compares the two branches).
# Links *out of* it are checked against the consumer by engine.core.types, which may not know match types:
# then the output is declared "*" so that the switch can feed any input.
SWITCH_OUTPUT_TYPE = MATCH_TYPE if types_compatible(MATCH_TYPE, IMAGE) else ANY


def _pass_value(ctx: Any, value: Any):
    return (value,)


def _primitive(name: str, display_name: str, value_input: Input, output_type: str):
    return node(name, category="utils/primitive", display_name=display_name, inputs=[value_input],
                outputs=[output_type], description=f"A constant {output_type} value.")(_pass_value)


primitive_int = _primitive("PrimitiveInt", "Int", Input(
    "value", INT, min=-INT64_LIMIT, max=INT64_LIMIT, extra={"control_after_generate": True}), INT)
primitive_float = _primitive("PrimitiveFloat", "Float", Input(
    "value", FLOAT, min=-INT64_LIMIT, max=INT64_LIMIT, step=0.1), FLOAT)
primitive_string = _primitive("PrimitiveString", "String", Input(
    "value", STRING, extra={"multiline": False}), STRING)
primitive_string_multiline = _primitive("PrimitiveStringMultiline", "String (Multiline)", Input(
    "value", STRING, multiline=True), STRING)
primitive_boolean = _primitive("PrimitiveBoolean", "Boolean", Input("value", BOOLEAN), BOOLEAN)


def switch_needs(switch: Any = None, on_false: Any = None, on_true: Any = None, **_: Any) -> list[str]:
    """check_lazy_status: only the branch the switch selects is evaluated."""
    wanted = "on_true" if switch else "on_false"
    value = on_true if switch else on_false
    return [wanted] if value is None else []


def switch_types_match(input_types: dict[str, Any] | None = None, **_: Any) -> bool | str:
    """validate_inputs: both branches carry one type, and `switch` (when linked) is a BOOLEAN."""
    types = input_types or {}
    problems = []
    switch_type = types.get("switch")
    if switch_type is not None and not types_compatible(switch_type, BOOLEAN):
        problems.append(f"switch must be a BOOLEAN, but it is linked to a {switch_type} output")
    on_false, on_true = types.get("on_false"), types.get("on_true")
    if on_false is not None and on_true is not None and not types_compatible(on_false, on_true):
        problems.append(f"on_false ({on_false}) and on_true ({on_true}) must carry the same type")
    return "; ".join(problems) or True


@node("ComfySwitchNode", category="logic", display_name="Switch", experimental=True,
      inputs=[Boolean("switch", default=None),
              Input("on_false", MATCH_TYPE, lazy=True, extra={"template": SWITCH_TEMPLATE}),
              Input("on_true", MATCH_TYPE, lazy=True, extra={"template": SWITCH_TEMPLATE})],
      outputs=[Output(SWITCH_OUTPUT_TYPE, "output")], check_lazy_status=switch_needs,
      validate_inputs=switch_types_match,
      description="Passes on_true when switch is true, else on_false; only that branch runs.")
def comfy_switch(ctx: Any, switch: bool, on_false: Any = None, on_true: Any = None):
    return (on_true if switch else on_false,)


NODES = [primitive_int, primitive_float, primitive_string, primitive_string_multiline, primitive_boolean,
         comfy_switch]
