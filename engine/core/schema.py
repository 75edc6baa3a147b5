"""One typed declaration per node.

A node is declared once, as a `NodeSchema`, usually with the `@node(...)` decorator. That one declaration
drives validation (`engine.core.validate`), execution (`engine.core.executor`), the ComfyUI `/object_info` JSON
(`NodeSchema.object_info`) and the browser editor.

    @node("ImageInvert", category="image", display_name="Invert Image",
          inputs=[Socket("image", IMAGE)], outputs=[Output(IMAGE)])
    def image_invert(ctx, image):
        return (1.0 - image,)

Node functions take a `NodeContext` first (progress, interrupt check, folders, models), then the inputs as
keyword arguments, and return a tuple (one value per output), a `NodeResult` (outputs plus a `ui` dict), a
ComfyUI-style dict `{"ui": ..., "result": ...}`, or an `ExecutionBlocker`. They keep no state of their own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from engine.core.types import ANY, BOOLEAN, COMBO, FLOAT, INT, PRIMITIVES, STRING

# Combo choices may be computed when asked (file lists): a callable that receives the `choice_env`
# given to `object_info`/validation (the folder resolver) and returns the current choices.
Choices = Sequence[Any] | Callable[[Any], Sequence[Any]]

HIDDEN_KINDS = frozenset({"PROMPT", "EXTRA_PNGINFO", "UNIQUE_ID", "DYNPROMPT", "AUTH_TOKEN_COMFY_ORG",
                          "API_KEY_COMFY_ORG"})
_COMBO_NULL_CONFIG_LIMIT = 20  # ComfyUI sends `input_config: null` for combos longer than this


@dataclass(frozen=True)
class Input:
    """One input socket or widget. `type` is a ComfyUI type name; combos use `Combo(...)`."""

    name: str
    type: str
    optional: bool = False
    default: Any = None
    min: float | int | None = None
    max: float | int | None = None
    step: float | int | None = None
    round: float | bool | None = None
    multiline: bool = False
    tooltip: str | None = None
    force_input: bool = False
    lazy: bool = False
    raw_link: bool = False
    choices: Choices | None = None
    v3_combo: bool = False  # serialise as ["COMBO", {"options": [...]}] like ComfyUI's V3 nodes
    extra: Mapping[str, Any] = field(default_factory=dict)  # other front-end options, passed through

    @property
    def is_combo(self) -> bool:
        return self.choices is not None

    @property
    def is_widget(self) -> bool:
        """Whether the editor shows a widget (and a UI workflow stores a `widgets_values` entry)."""
        return (self.is_combo or self.type in PRIMITIVES) and not self.force_input

    def current_choices(self, choice_env: Any = None) -> list[Any]:
        if self.choices is None:
            return []
        if callable(self.choices):
            return list(self.choices(choice_env))
        return list(self.choices)

    def options(self, choice_env: Any = None) -> dict[str, Any]:
        """The option dict of the ComfyUI input spec (without the combo list for legacy combos)."""
        opts: dict[str, Any] = {}
        for key, value in (("default", self.default), ("min", self.min), ("max", self.max),
                           ("step", self.step), ("round", self.round), ("tooltip", self.tooltip)):
            if value is not None:
                opts[key] = value
        if self.multiline:
            opts["multiline"] = True
        if self.force_input:
            opts["forceInput"] = True
        if self.lazy:
            opts["lazy"] = True
        if self.raw_link:
            opts["rawLink"] = True
        opts.update(self.extra)
        if self.is_combo and self.v3_combo:
            opts["options"] = self.current_choices(choice_env)
        return opts

    def spec(self, choice_env: Any = None) -> list[Any]:
        """ComfyUI input spec: `[TYPE]` or `[TYPE, options]`."""
        if self.is_combo:
            head: Any = COMBO if self.v3_combo else self.current_choices(choice_env)
        else:
            head = self.type
        opts = self.options(choice_env)
        return [head, opts] if opts else [head]

    def error_config(self, choice_env: Any = None) -> list[Any] | None:
        """`input_config` for error extra_info: null for combos with many options, as ComfyUI does."""
        if self.is_combo and len(self.current_choices(choice_env)) > _COMBO_NULL_CONFIG_LIMIT:
            return None
        return self.spec(choice_env)


def Int(name: str, default: int = 0, min: int | None = None, max: int | None = None, step: int | None = None,
        **kw: Any) -> Input:
    return Input(name, INT, default=default, min=min, max=max, step=step, **kw)


def Float(name: str, default: float = 0.0, min: float | None = None, max: float | None = None,
          step: float | None = None, **kw: Any) -> Input:
    return Input(name, FLOAT, default=default, min=min, max=max, step=step, **kw)


def String(name: str, default: str = "", multiline: bool = False, **kw: Any) -> Input:
    return Input(name, STRING, default=default, multiline=multiline, **kw)


def Boolean(name: str, default: bool = False, **kw: Any) -> Input:
    return Input(name, BOOLEAN, default=default, **kw)


def Combo(name: str, choices: Choices, default: Any = None, **kw: Any) -> Input:
    return Input(name, COMBO, choices=choices, default=default, **kw)


def Socket(name: str, type: str, **kw: Any) -> Input:
    """A typed socket with no widget (MODEL, IMAGE, LATENT, ...)."""
    return Input(name, type, **kw)


def AnyInput(name: str, **kw: Any) -> Input:
    return Input(name, ANY, **kw)


@dataclass(frozen=True)
class Output:
    type: str
    name: str | None = None
    is_list: bool = False
    tooltip: str | None = None

    @property
    def display_name(self) -> str:
        return self.name or self.type


@dataclass
class NodeResult:
    """What a node returns when it has UI output (images for the editor and history) besides its values."""

    outputs: tuple[Any, ...] = ()
    ui: dict[str, list[Any]] | None = None
    expand: dict[str, Any] | None = None  # a subgraph in API format that replaces this node


@dataclass(frozen=True)
class ExecutionBlocker:
    """Returned (as an output value) to stop the nodes downstream; a message is reported once as an error."""

    message: str | None = None


NodeFunction = Callable[..., Any]


@dataclass(frozen=True)
class NodeSchema:
    __test__ = False  # node functions named test_* in test modules are not tests

    name: str
    function: NodeFunction
    inputs: tuple[Input, ...] = ()
    outputs: tuple[Output, ...] = ()
    hidden: Mapping[str, str] = field(default_factory=dict)  # input name -> PROMPT / EXTRA_PNGINFO / UNIQUE_ID
    category: str = "sd"
    display_name: str | None = None
    description: str = ""
    output_node: bool = False
    is_input_list: bool = False
    not_idempotent: bool = False
    deprecated: bool = False
    experimental: bool = False
    python_module: str = "nodes"
    # is_changed(**literal_inputs) -> token in the cache key; NaN means always re-run.
    is_changed: Callable[..., Any] | None = None
    # validate_inputs(**literal_inputs) -> True, False or an error string. The inputs it names skip the
    # built-in range and combo checks, as in ComfyUI.
    validate_inputs: Callable[..., Any] | None = None
    # check_lazy_status(**inputs) -> names of lazy inputs still needed (unevaluated ones are None).
    check_lazy_status: Callable[..., Sequence[str]] | None = None

    def __post_init__(self) -> None:
        names = [i.name for i in self.inputs]
        if len(set(names)) != len(names):
            raise ValueError(f"node {self.name}: duplicate input names {names}")
        for hidden_kind in self.hidden.values():
            if hidden_kind not in HIDDEN_KINDS:
                raise ValueError(f"node {self.name}: unknown hidden input kind {hidden_kind!r}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)

    @property
    def required_inputs(self) -> tuple[Input, ...]:
        return tuple(i for i in self.inputs if not i.optional)

    @property
    def optional_inputs(self) -> tuple[Input, ...]:
        return tuple(i for i in self.inputs if i.optional)

    def input(self, name: str) -> Input | None:
        for inp in self.inputs:
            if inp.name == name:
                return inp
        return None

    @property
    def output_types(self) -> tuple[str, ...]:
        return tuple(o.type for o in self.outputs)

    def object_info(self, choice_env: Any = None) -> dict[str, Any]:
        """This node's entry of ComfyUI's `/object_info`."""
        input_block: dict[str, Any] = {"required": {i.name: i.spec(choice_env) for i in self.required_inputs}}
        order: dict[str, list[str]] = {"required": [i.name for i in self.required_inputs]}
        if self.optional_inputs:
            input_block["optional"] = {i.name: i.spec(choice_env) for i in self.optional_inputs}
            order["optional"] = [i.name for i in self.optional_inputs]
        if self.hidden:
            input_block["hidden"] = dict(self.hidden)
            order["hidden"] = list(self.hidden)
        info: dict[str, Any] = {
            "input": input_block,
            "input_order": order,
            "output": [o.type for o in self.outputs],
            "output_is_list": [o.is_list for o in self.outputs],
            "output_name": [o.display_name for o in self.outputs],
            "name": self.name,
            "display_name": self.display_name or self.name,
            "description": self.description,
            "python_module": self.python_module,
            "category": self.category,
            "output_node": self.output_node,
        }
        if any(o.tooltip for o in self.outputs):
            info["output_tooltips"] = [o.tooltip for o in self.outputs]
        if self.deprecated:
            info["deprecated"] = True
        if self.experimental:
            info["experimental"] = True
        return info


def node(name: str, *, inputs: Iterable[Input] = (), outputs: Iterable[Output | str] = (),
         **options: Any) -> Callable[[NodeFunction], NodeSchema]:
    """Declare a node: decorates its function and returns the `NodeSchema`."""

    def wrap(function: NodeFunction) -> NodeSchema:
        outs = tuple(o if isinstance(o, Output) else Output(o) for o in outputs)
        module = options.pop("python_module", None) or _pack_module(function)
        return NodeSchema(name=name, function=function, inputs=tuple(inputs), outputs=outs,
                          python_module=module, **options)

    return wrap


def _pack_module(function: NodeFunction) -> str:
    module = getattr(function, "__module__", "nodes") or "nodes"
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "nodes" else module


def with_options(schema: NodeSchema, **changes: Any) -> NodeSchema:
    return dataclasses.replace(schema, **changes)


__all__ = [
    "ANY", "BOOLEAN", "COMBO", "FLOAT", "INT", "STRING", "AnyInput", "Boolean", "Combo", "ExecutionBlocker",
    "Float", "Input", "Int", "NodeResult", "NodeSchema", "Output", "Socket", "String", "node", "with_options",
]
