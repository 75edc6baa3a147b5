"""What a UI -> API conversion gives back: the prompt, where each of its nodes came from in the editor's graph,
what was dropped and why, and warnings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class NodeOrigin:
    """Where a prompt node came from in the editor's graph."""

    ui_id: str
    type: str
    title: str
    subgraphs: tuple[tuple[str, str], ...] = ()  # (instance ui id, subgraph name), outermost first

    def describe(self) -> str:
        text = f"#{self.ui_id} '{self.title}'"
        for instance_id, name in reversed(self.subgraphs):
            text += f" in subgraph #{instance_id} '{name}'"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.ui_id, "type": self.type, "title": self.title,
                "subgraphs": [{"id": i, "name": n} for i, n in self.subgraphs], "description": self.describe()}


@dataclass
class UiConversion:
    prompt: dict[str, Any]
    origins: dict[str, NodeOrigin] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)  # prompt id -> why it was left out
    warnings: list[str] = field(default_factory=list)
    # download hints the workflow carries ({name, url, directory}; engine.workflow.model_hints)
    models: list[dict[str, str]] = field(default_factory=list)
