"""Toy node pack for engine tests: no models, no torch, counts its calls."""

from __future__ import annotations

from collections import Counter

from engine.core.registry import NodeRegistry
from engine.core.schema import (AnyInput, Boolean, Combo, ExecutionBlocker, Float, Int, NodeResult, Output, Socket,
                           String, node)

CALLS: Counter = Counter()


@node("Number", inputs=[Int("value", 1, min=-100, max=100)], outputs=[Output("INT")], category="toy")
def number(ctx, value):
    CALLS["Number"] += 1
    return (value,)


@node("Add", inputs=[Socket("a", "INT"), Socket("b", "INT", optional=True)], outputs=["INT"], category="toy")
def add(ctx, a, b=0):
    CALLS["Add"] += 1
    return (a + b,)


@node("Scale", inputs=[Socket("x", "INT"), Float("factor", 1.0, min=0.0, max=10.0),
                       Combo("mode", ["floor", "round"], default="round")], outputs=["INT"])
def scale(ctx, x, factor, mode):
    CALLS["Scale"] += 1
    value = x * factor
    return (int(value) if mode == "floor" else round(value),)


@node("Text", inputs=[String("text", "", multiline=True), Boolean("upper", False)], outputs=["STRING"])
def text(ctx, text, upper):
    CALLS["Text"] += 1
    return (text.upper() if upper else text,)


@node("Fail", inputs=[Socket("x", "INT")], outputs=["INT"])
def fail(ctx, x):
    CALLS["Fail"] += 1
    raise ValueError(f"cannot handle {x}")


@node("Steps", inputs=[Socket("x", "INT"), Int("steps", 3, min=1, max=1000)], outputs=["INT"])
def steps(ctx, x, steps):
    CALLS["Steps"] += 1
    for i in range(steps):
        ctx.progress(i + 1, steps)
    return (x,)


@node("Switch", inputs=[Boolean("switch", True), AnyInput("on_false", lazy=True),
                        AnyInput("on_true", lazy=True)], outputs=[Output("*", "output")],
      check_lazy_status=lambda switch, on_false=None, on_true=None: ["on_true" if switch else "on_false"])
def switch(ctx, switch, on_false=None, on_true=None):
    CALLS["Switch"] += 1
    return (on_true if switch else on_false,)


@node("Range", inputs=[Int("count", 3, min=0, max=100)], outputs=[Output("INT", is_list=True)])
def int_range(ctx, count):
    CALLS["Range"] += 1
    return (list(range(count)),)


@node("Sum", inputs=[Socket("values", "INT")], outputs=["INT"], is_input_list=True)
def total(ctx, values):
    CALLS["Sum"] += 1
    return (sum(values),)


@node("Block", inputs=[Socket("x", "INT")], outputs=["INT"])
def block(ctx, x):
    CALLS["Block"] += 1
    return ExecutionBlocker(None)


@node("Show", inputs=[AnyInput("value")], outputs=[], output_node=True, category="toy",
      hidden={"unique_id": "UNIQUE_ID"})
def show(ctx, value, unique_id=None):
    CALLS["Show"] += 1
    return NodeResult(ui={"text": [repr(value)]})


@node("EvenOnly", inputs=[Int("value", 0)], outputs=["INT"],
      validate_inputs=lambda value: True if value % 2 == 0 else f"value must be even, got {value}")
def even_only(ctx, value):
    return (value,)


@node("Volatile", inputs=[Int("value", 0)], outputs=["INT"], is_changed=lambda value: float("nan"))
def volatile(ctx, value):
    CALLS["Volatile"] += 1
    return (value,)


@node("Describe", inputs=[Socket("thing", "MODEL")], outputs=["STRING"])
def describe(ctx, thing):
    return (repr(thing),)


NODES = [describe, number, add, scale, text, fail, steps, switch, int_range, total, block, show, even_only, volatile]


def toy_registry() -> NodeRegistry:
    return NodeRegistry(NODES)
