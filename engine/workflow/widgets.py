"""`widgets_values` of a UI node -> named input values, and the editor's queue-time text rewriting.

The editor saves widget values positionally, in the order the node's widget inputs are declared
(docs/protocol.md §7.2). Besides the real widgets the list may hold UI-only entries: the "control after generate"
mode after a seed ("fixed", "increment", "decrement", "randomize") and the upload button's value after an
upload combo ("image" for LoadImage). Older saves may lack trailing values of inputs added later (such as
DualCLIPLoader's `device`); those get the input's default, as the editor would show them.

At queue time the editor also rewrites some strings: `{a|b}` choices and comments in dynamic-prompt text
widgets, and `%date:...%` / `%Title.widget%` tokens in `filename_prefix`.
"""

from __future__ import annotations

import datetime as _dt
import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from engine.core.schema import Input, NodeSchema
from engine.core.types import INT

CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize", "increment-wrap"})
_LEGACY_SEED_NAMES = frozenset({"seed", "noise_seed"})
UPLOAD_SENTINELS = {"image_upload": "image", "audio_upload": "audio", "video_upload": "video",
                     "file_upload": "file"}


@dataclass
class WidgetValues:
    values: dict[str, Any]
    defaulted: list[str] = field(default_factory=list)  # inputs that had no saved value
    leftovers: list[Any] = field(default_factory=list)  # saved values no widget input accounts for


def widget_inputs(schema: NodeSchema) -> list[Input]:
    return [inp for inp in schema.inputs if inp.is_widget]


def has_control_widget(inp: Input) -> bool:
    """Whether the editor adds a "control after generate" widget (and a saved value) after this input."""
    if inp.extra.get("control_after_generate"):
        return True
    return inp.type == INT and inp.name in _LEGACY_SEED_NAMES and "control_after_generate" not in inp.extra


def is_control_value(value: Any) -> bool:
    return isinstance(value, str) and value in CONTROL_VALUES


def upload_sentinel(inp: Input) -> str | None:
    for option, sentinel in UPLOAD_SENTINELS.items():
        if inp.extra.get(option):
            return sentinel
    return None


def default_value(inp: Input, choice_env: Any = None) -> Any:
    """What the editor shows for a widget with no saved value: its default, else a combo's first choice."""
    if inp.default is not None:
        return inp.default
    if inp.is_combo and (not callable(inp.choices) or choice_env is not None):
        choices = inp.current_choices(choice_env)
        return choices[0] if choices else None
    return None


def map_widget_values(schema: NodeSchema, saved: Any, choice_env: Any = None,
                      named: dict[str, Any] | None = None) -> WidgetValues:
    """Map a node's saved `widgets_values` (list or object) onto its widget inputs by declaration order.

    `named` (the `widgets_values_named` newer editors save beside the list) wins where it names a widget.
    """
    widgets = widget_inputs(schema)
    names = {inp.name for inp in widgets}
    result = WidgetValues({})
    if isinstance(saved, dict):
        result.values = {name: value for name, value in saved.items() if name in names and value is not None}
        result.leftovers = [value for name, value in saved.items() if name not in names]
    elif isinstance(saved, list):
        _map_positional(widgets, list(saved), result)
    for name, value in (named or {}).items():
        if name in names and value is not None:
            result.values[name] = value
    for inp in widgets:
        if inp.name not in result.values:
            value = default_value(inp, choice_env)
            if value is not None:
                result.values[inp.name] = value
                result.defaulted.append(inp.name)
    return result


def _map_positional(widgets: list[Input], values: list[Any], result: WidgetValues) -> None:
    position = 0
    for index, inp in enumerate(widgets):
        if position >= len(values):
            return  # missing trailing values: defaults apply
        value = values[position]
        position += 1
        if value is not None:  # a hole (null) is a widget the editor did not serialise
            result.values[inp.name] = value
        if has_control_widget(inp) and position < len(values) and is_control_value(values[position]):
            position += 1
        sentinel = upload_sentinel(inp)
        if sentinel is not None:
            # The upload button's value is matched by value: its position relative to the node's other
            # widgets differs between nodes (LoadImage: right after the combo).
            remaining_widgets = len(widgets) - index - 1
            rest = values[position:]
            if sentinel in rest and len(rest) > remaining_widgets:
                del values[position + rest.index(sentinel)]
    result.leftovers = values[position:]


# --- Dynamic prompts -------------------------------------------------------------------------------------

_COMMENTS = re.compile(r"/\*.*?\*/|//[^\n]*", re.DOTALL)


def expand_dynamic_prompt(text: str, rng: random.Random) -> str:
    """The editor's dynamic prompts: strip /* */ and // comments, then pick one option of each {a|b|c}.

    Choices nest (`{a|{b|c}}`), a backslash escapes the next character (kept with its backslash, as the
    editor sends it), and an unclosed brace runs to the end of the text.
    """
    source = _COMMENTS.sub("", text)
    out, _ = _expand(source, 0, rng, inside_choice=False)
    return out


def _expand(text: str, pos: int, rng: random.Random, inside_choice: bool) -> tuple[str, int]:
    """Expand from `pos`; inside a choice block, stop after the closing brace. Returns (text, new pos)."""
    options: list[str] = []
    current: list[str] = []
    while pos < len(text):
        char = text[pos]
        pos += 1
        if char == "\\" and pos < len(text):
            current.append(char + text[pos])
            pos += 1
        elif char == "{":
            chosen, pos = _expand(text, pos, rng, inside_choice=True)
            current.append(chosen)
        elif inside_choice and char == "}":
            break
        elif inside_choice and char == "|":
            options.append("".join(current))
            current = []
        else:
            current.append(char)
    options.append("".join(current))
    if not inside_choice:
        return options[0], pos
    return options[rng.randrange(len(options))], pos


# --- filename_prefix tokens ------------------------------------------------------------------------------

_TOKEN = re.compile(r"%([^%]+)%")
_DATE_PARTS = re.compile(r"yyyy|yy|MM|M|dd|d|hh|h|mm|m|ss|s")


def format_date(pattern: str, moment: _dt.datetime) -> str:
    parts = {"yyyy": f"{moment.year:04d}", "yy": f"{moment.year % 100:02d}", "MM": f"{moment.month:02d}",
             "M": str(moment.month), "dd": f"{moment.day:02d}", "d": str(moment.day),
             "hh": f"{moment.hour:02d}", "h": str(moment.hour), "mm": f"{moment.minute:02d}",
             "m": str(moment.minute), "ss": f"{moment.second:02d}", "s": str(moment.second)}
    return _DATE_PARTS.sub(lambda match: parts[match.group(0)], pattern)


WidgetLookup = Callable[[str, str], Any]  # (node title, widget name) -> value, or None if not found


def apply_text_replacements(text: str, lookup: WidgetLookup, now: _dt.datetime | None = None) -> str:
    """The editor's `%date:yyyy-MM-dd%` and `%NodeTitle.widget%` substitution (filename_prefix).

    Tokens it cannot resolve are left as they are; the server substitutes its own (%width%, %year%, ...).
    """

    def replace(match: re.Match[str]) -> str:
        token = match.group(1)
        if token.startswith("date:"):
            return format_date(token[len("date:"):], now or _dt.datetime.now())
        title, dot, widget = token.rpartition(".")
        if not dot or not title:
            return match.group(0)
        value = lookup(title, widget)
        if value is None:
            return match.group(0)
        return str(value)

    return _TOKEN.sub(replace, text)
