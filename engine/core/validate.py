"""Validate an API-format prompt against the node schemas, reporting every problem at once.

Errors come in ComfyUI's shape (docs/protocol.md §1.3-1.4): a prompt-level `error` {type, message, details,
extra_info} and per-node `node_errors` {node_id: {errors, dependent_outputs, class_type}}. Only nodes with
errors of their own are listed; an output is dropped when any node it depends on has an error, and the prompt
fails when no output survives. Literal values are converted to their declared types in the returned prompt.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import posixpath
import traceback
from dataclasses import dataclass, field
from typing import Any, Iterable

from engine.core.graph import PromptFormatError, PromptGraph, PromptNode, as_link, is_link, parse_prompt, unwrap_literal
from engine.core.registry import NodeRegistry
from engine.core.schema import Input, NodeSchema
from engine.core.text_inputs import string_refusal
from engine.core.types import ANY, BOOLEAN, COMBO, FLOAT, INT, PRIMITIVES, STRING, types_compatible

_LIST_IN_DETAILS_LIMIT = 20


@dataclass
class ValidationResult:
    ok: bool
    error: dict[str, Any] | None = None
    node_errors: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    prompt: dict[str, Any] = field(default_factory=dict)

    def response(self) -> dict[str, Any]:
        """The body ComfyUI answers with a 400 (or the node_errors of a 200)."""
        return {"error": self.error, "node_errors": self.node_errors}


def _error(type_: str, message: str, details: str = "", **extra: Any) -> dict[str, Any]:
    if isinstance(extra.get("input_config"), _LazyConfig):
        extra["input_config"] = extra["input_config"]()
    return {"type": type_, "message": message, "details": details, "extra_info": extra}


def _prompt_error(type_: str, message: str, details: str = "", **extra: Any) -> ValidationResult:
    return ValidationResult(ok=False, error=_error(type_, message, details, **extra))


class _ChoiceCache:
    """Combo choices evaluated once per validation (file listings walk the disk)."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self._cache: dict[int, list[Any]] = {}

    def choices(self, inp: Input) -> list[Any]:
        key = id(inp)
        if key not in self._cache:
            self._cache[key] = inp.current_choices(self.env)
        return self._cache[key]


@functools.lru_cache(maxsize=None)
def hook_params(function: Any) -> tuple[frozenset[str], bool]:
    """(parameter names, accepts **kwargs) of a validate_inputs hook."""
    params = inspect.signature(function).parameters
    names = frozenset(n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
    return names, any(p.kind == p.VAR_KEYWORD for p in params.values())


def _convert_literal(inp: Input, value: Any) -> Any:
    """Convert a literal to the declared primitive type; raises ValueError/TypeError when it cannot."""
    if isinstance(value, (dict, list)):
        raise TypeError(f"expected {inp.type}, got a JSON {'object' if isinstance(value, dict) else 'array'}")
    if inp.type == INT:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"expected INT, got {value}")
        return int(value)
    if inp.type == FLOAT:
        result = float(value)
        if not math.isfinite(result):
            raise ValueError(f"expected a finite FLOAT, got {value}")
        return result
    if inp.type == STRING:
        if value is None:
            raise TypeError("expected STRING, got null")
        return str(value)
    if inp.type == BOOLEAN:
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off", ""):
                return False
            raise ValueError(f"expected BOOLEAN, got {value!r}")
        if value is None:
            raise TypeError("expected BOOLEAN, got null")
        return bool(value)
    return value


class _NodeValidator:
    def __init__(self, graph: PromptGraph, registry: NodeRegistry, choices: _ChoiceCache,
                 converted: dict[str, Any]) -> None:
        self.graph = graph
        self.registry = registry
        self.choices = choices
        self.converted = converted

    def validate(self, node: PromptNode) -> list[dict[str, Any]]:
        schema = self.registry[node.class_type]
        hook_names: frozenset[str] = frozenset()
        hook_all = False
        if schema.validate_inputs is not None:
            hook_names, hook_all = hook_params(schema.validate_inputs)
        errors: list[dict[str, Any]] = []
        literals: dict[str, Any] = {}
        received_types: dict[str, Any] = {}
        for inp in schema.inputs:
            if inp.name not in node.inputs:
                if not inp.optional:
                    errors.append(_error("required_input_missing", "Required input is missing", inp.name,
                                         input_name=inp.name))
                continue
            value = node.inputs[inp.name]
            if is_link(value):
                received = self._check_link(node, inp, value, errors, "input_types" in hook_names)
                if received is not None:
                    received_types[inp.name] = received
                continue
            skip_builtin = hook_all or inp.name in hook_names
            ok, converted = self._check_literal(inp, unwrap_literal(value), errors, skip_builtin)
            if ok:
                literals[inp.name] = converted
                self.converted[node.id]["inputs"][inp.name] = converted
        if schema.validate_inputs is not None and not errors:
            errors.extend(self._run_hook(schema, literals, received_types, hook_names, hook_all,
                                         self.choices.env))
        return errors

    def _check_link(self, node: PromptNode, inp: Input, value: list, errors: list, skip_types: bool) -> Any:
        link = as_link(value)
        config = _LazyConfig(inp, self.choices.env)
        if link is None:
            errors.append(_error("bad_linked_input", "Bad linked input, must be a length-2 list of "
                                 "[node_id, slot_index]", inp.name, input_name=inp.name, input_config=config,
                                 received_value=value))
            return None
        source = self.graph.nodes.get(link.source)
        if source is None:
            message = f"'{link.source}'"
            errors.append(_error("exception_during_inner_validation", "Exception when validating inner node",
                                 message, input_name=inp.name, input_config=config, exception_message=message,
                                 exception_type="KeyError",
                                 traceback=[f"input '{inp.name}' links to node '{link.source}', which is not "
                                            "in the prompt"], linked_node=value))
            return None
        source_schema = self.registry.get(source.class_type)
        if source_schema is None:
            return None  # reported on the source node itself
        outputs = source_schema.outputs
        if not 0 <= link.slot < len(outputs):
            errors.append(_error("bad_linked_input", "Output index out of range",
                                 f"{inp.name}: node '{source.id}' ({source.class_type}) has {len(outputs)} "
                                 f"output(s), the link asks for output {link.slot}",
                                 input_name=inp.name, input_config=config, linked_node=value))
            return None
        received = outputs[link.slot].type
        expected: Any = self.choices.choices(inp) if inp.is_combo else inp.type
        if not skip_types and not types_compatible(received, expected):
            expected_text = COMBO if inp.is_combo else inp.type
            errors.append(_error("return_type_mismatch", "Return type mismatch between linked nodes",
                                 f"{inp.name}, received_type({received}) mismatch input_type({expected_text})",
                                 input_name=inp.name, input_config=config, received_type=received,
                                 linked_node=value))
        return received

    def _check_literal(self, inp: Input, value: Any, errors: list, skip_builtin: bool) -> tuple[bool, Any]:
        config = _LazyConfig(inp, self.choices.env)
        if inp.is_combo:
            if skip_builtin:
                return True, value
            options = self.choices.choices(inp)
            if value not in options or (isinstance(value, bool) and not any(isinstance(o, bool) for o in options)):
                listed = (f"(list of length {len(options)})" if len(options) > _LIST_IN_DETAILS_LIMIT
                          else repr(options))
                close = close_matches(value, options)
                hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                hint = _kind_not_offered(value, options) + hint
                errors.append(_error("value_not_in_list", "Value not in list",
                                     f"{inp.name}: '{value}' not in {listed}{hint}", input_name=inp.name,
                                     input_config=config, received_value=value, close_matches=close))
                return False, value
            return True, value
        if inp.type not in PRIMITIVES:
            if inp.type == ANY:
                return True, value
            errors.append(_error("invalid_input_type", f"Input '{inp.name}' needs a link",
                                 f"{inp.name}: expected a link to a {inp.type} output, got the literal "
                                 f"{value!r}", input_name=inp.name, input_config=config, received_value=value))
            return False, value
        try:
            converted = _convert_literal(inp, value)
        except (TypeError, ValueError, OverflowError) as exc:
            errors.append(_error("invalid_input_type", f"Failed to convert an input value to a {inp.type} value",
                                 f"{inp.name}, {value!r}, {exc}", input_name=inp.name, input_config=config,
                                 received_value=value, exception_message=str(exc),
                                 exception_type=type(exc).__name__))
            return False, value
        refusal = string_refusal(inp, converted) if inp.type == STRING else None  # hooks or not (text_inputs)
        if refusal is not None:
            errors.append(_error(*refusal[:3], input_name=inp.name, input_config=config, **refusal[3]))
            return False, converted
        if skip_builtin or inp.type not in (INT, FLOAT):
            return True, converted
        if inp.min is not None and converted < inp.min:
            errors.append(_error("value_smaller_than_min", f"Value {converted} smaller than min of {inp.min}",
                                 inp.name, input_name=inp.name, input_config=config, received_value=converted))
            return False, converted
        if inp.max is not None and converted > inp.max:
            errors.append(_error("value_bigger_than_max", f"Value {converted} bigger than max of {inp.max}",
                                 inp.name, input_name=inp.name, input_config=config, received_value=converted))
            return False, converted
        return True, converted

    @staticmethod
    def _run_hook(schema: NodeSchema, literals: dict[str, Any], received_types: dict[str, Any],
                  names: frozenset[str], takes_all: bool, folders: Any) -> list[dict[str, Any]]:
        kwargs = {k: v for k, v in literals.items() if takes_all or k in names}
        if "input_types" in names:
            kwargs["input_types"] = received_types
        if "folders" in names and "folders" not in literals:  # hooks that check files get the folder layout
            kwargs["folders"] = folders
        try:
            verdict = schema.validate_inputs(**kwargs)  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001 - a node's own check that raises is a validation error, as in ComfyUI
            return [_error("exception_during_validation", "Exception when validating node", str(exc),
                           exception_type=type(exc).__name__, exception_message=str(exc),
                           traceback=traceback.format_exception(exc))]
        if verdict is True:
            return []
        details = verdict if isinstance(verdict, str) else ""
        return [_error("custom_validation_failed", "Custom validation failed for node",
                       details or f"{schema.name} rejected its inputs",
                       received_inputs={k: v for k, v in kwargs.items() if k != "folders"})]  # not the layout


def close_matches(value: Any, options: list[Any], limit: int = 3) -> list[Any]:
    """Choices that look like `value` (a model file saved under another folder or with another case).

    Names are compared without folders and extensions, so every '.safetensors' file does not look alike.
    """
    if not isinstance(value, str):
        return []

    def stem(text: str) -> str:
        base = posixpath.basename(text.replace("\\", "/")).lower()
        return base.rsplit(".", 1)[0] if "." in base else base

    by_stem: dict[str, list[str]] = {}
    for option in options:
        if isinstance(option, str):
            by_stem.setdefault(stem(option), []).append(option)
    found: list[str] = []
    for match in difflib.get_close_matches(stem(value), list(by_stem), n=limit, cutoff=0.7):
        found.extend(by_stem[match])
    return found[:limit]


class _LazyConfig:
    """input_config for error extra_info, built only when an error is reported (it is costly)."""

    def __init__(self, inp: Input, env: Any) -> None:
        self.inp, self.env = inp, env

    def __call__(self) -> Any:
        return self.inp.error_config(self.env)


def validate_prompt(prompt: Any, registry: NodeRegistry, folders: Any = None,
                    partial_targets: Iterable[str] | None = None) -> ValidationResult:
    try:
        graph = parse_prompt(prompt)
    except PromptFormatError as exc:
        return _prompt_error("invalid_prompt", exc.message, exc.details)
    unknown = [node for node in graph if node.class_type not in registry]
    if unknown:
        first = unknown[0]
        return _prompt_error("invalid_prompt", f"Cannot execute because node {first.class_type} does not exist.",
                             f"Node ID '#{first.id}'",
                             unknown_nodes={n.id: n.class_type for n in unknown})
    targets = None if partial_targets is None else {str(t) for t in partial_targets}
    outputs = [n.id for n in graph if registry[n.class_type].output_node and (targets is None or n.id in targets)]
    if not outputs:
        return _prompt_error("prompt_no_outputs", "Prompt has no outputs",
                             "Add an output node such as SaveImage or PreviewImage")

    # Copy only what conversion writes to (each node's inputs dict); values are JSON and left as they are.
    converted = {str(k): {**v, "inputs": dict(v.get("inputs") or {})} for k, v in prompt.items()}
    needed = graph.upstream(outputs)
    validator = _NodeValidator(graph, registry, _ChoiceCache(folders), converted)
    own_errors: dict[str, list[dict[str, Any]]] = {}
    for node_id in needed:
        errors = validator.validate(graph[node_id])
        if errors:
            own_errors[node_id] = errors
    _run_graph_validators(registry, converted, folders, needed, own_errors)
    cycle = graph.find_cycle(needed)
    if cycle:
        text = " -> ".join(cycle)
        for node_id in cycle[:-1]:
            own_errors.setdefault(node_id, []).append(
                _error("dependency_cycle", "Dependency cycle detected", text, cycle=cycle))

    node_errors: dict[str, Any] = {}
    good_outputs: list[str] = []
    for output_id in outputs:
        bad = [n for n in graph.upstream([output_id]) if n in own_errors] if own_errors else []
        if not bad:
            good_outputs.append(output_id)
        for node_id in bad:
            entry = node_errors.setdefault(node_id, {"errors": own_errors[node_id], "dependent_outputs": [],
                                                     "class_type": graph[node_id].class_type})
            entry["dependent_outputs"].append(output_id)

    if not good_outputs:
        return ValidationResult(ok=False, node_errors=node_errors, prompt=converted, error=_error(
            "prompt_outputs_failed_validation", "Prompt outputs failed validation", _summary(node_errors)))
    return ValidationResult(ok=True, node_errors=node_errors, outputs=good_outputs, prompt=converted)


def _run_graph_validators(registry: NodeRegistry, prompt: dict[str, Any], folders: Any, needed: set[str],
                          own_errors: dict[str, list[dict[str, Any]]]) -> None:
    """Checks across nodes that packs declare (GRAPH_VALIDATORS); only on prompts that are sound so far."""
    if own_errors:
        return
    for check in registry.graph_validators:
        try:
            found = check(prompt, folders)
        except Exception as exc:  # noqa: BLE001 - a broken check fails the prompt, reported on its first needed node
            first = next(node_id for node_id in prompt if node_id in needed)
            own_errors.setdefault(first, []).append(
                _error("exception_during_validation", "Exception when validating the graph", str(exc),
                       exception_type=type(exc).__name__, traceback=traceback.format_exception(exc)))
            continue
        for node_id, message in found.items():
            if node_id in needed:
                own_errors.setdefault(node_id, []).append(
                    _error("custom_validation_failed", "Custom validation failed for node", message))


def _summary(node_errors: dict[str, Any]) -> str:
    lines = []
    for node_id, entry in node_errors.items():
        for err in entry["errors"]:
            lines.append(f"{entry['class_type']} #{node_id}: {err['message']}: {err['details']}")
    return "\n".join(lines)


def _kind_not_offered(value: Any, options: list) -> str:
    """"; this input offers no '.gguf' files" when a file name's extension is one no option has: the file is
    likely of a kind another node loads (a GGUF model given to UNETLoader), not misspelt."""
    if not isinstance(value, str) or "." not in value.rsplit("/", 1)[-1]:
        return ""
    suffix = "." + value.rsplit(".", 1)[-1].lower()
    if len(suffix) > 12 or any(isinstance(o, str) and o.lower().endswith(suffix) for o in options):
        return ""
    return f"; this input offers no '{suffix}' files"
