// Subgraphs of a UI workflow (ComfyUI's `definitions.subgraphs`). A node whose type is a subgraph id is
// drawn as a subgraph and can be opened: the canvas then shows the nodes inside, with a bar leading back.
// Values, titles, modes and positions changed inside are written into the definition on the way back; the
// subgraph's structure (its nodes and links) stays as it was. Queueing converts on the server
// (POST /api/workflow/convert), which flattens subgraphs exactly as `fluxgraph run` does.

import { el } from "./widgets.js";
import { loadUiWorkflow, serializeWorkflow, widgetValues } from "./ui_format.js";

export function usesSubgraphs(graph) {
  return [...graph.nodes.values()].some((node) => node.subgraph);
}

export class SubgraphNavigator {
  constructor(editor, bar) {
    this.editor = editor;
    this.bar = bar;
    this.stack = []; // [{parent: UI workflow of the level above, definition, title, history}]
  }

  get inside() {
    return this.stack.length > 0;
  }

  open(nodeId) {
    const { graph, canvas, history } = this.editor;
    const node = graph.nodes.get(nodeId);
    if (!node || !node.subgraph) return false;
    if (this.inside) this.writeBack(this.stack[this.stack.length - 1].definition);
    const definition = node.subgraph;
    const parent = serializeWorkflow(graph, { viewport: canvas.viewport });
    this.stack.push({ parent, definition, title: node.title, history: history.save() });
    const ids = (definition.nodes || []).map((raw) => Number(raw.id));
    const links = (definition.links || []).filter(Boolean);
    // Links from the subgraph's input and output (ids -10 and -20) have no node here: they are left out.
    const inner = links.filter((link) => !Array.isArray(link) && link.origin_id >= 0 && link.target_id >= 0);
    loadUiWorkflow(graph, {
      nodes: definition.nodes || [], links: inner, groups: definition.groups || [], definitions: parent.definitions,
      last_node_id: Math.max(0, ...ids), last_link_id: Math.max(0, ...links.map((link) => Number(link.id) || 0)),
      extra: {},
    });
    history.reset();
    this.render();
    this.editor.notify(`Inside subgraph ${node.title}: values and positions changed here are kept; Back returns`, "info");
    return true;
  }

  // Back one level (or all of them): the level above is loaded with this level's edits in its definition.
  back({ all = false } = {}) {
    const { graph, history } = this.editor;
    if (!this.inside) return false;
    let top;
    do {
      top = this.stack.pop();
      this.writeBack(top.definition);
    } while (all && this.stack.length);
    loadUiWorkflow(graph, top.parent);
    history.load(top.history);
    history.commit();
    this.render();
    return true;
  }

  writeBack(definition) {
    const { graph } = this.editor;
    for (const raw of definition.nodes || []) {
      const node = graph.nodes.get(Number(raw.id));
      if (!node || node.type !== raw.type) continue;
      raw.pos = [...node.pos];
      if (node.size) raw.size = [...node.size];
      raw.mode = node.mode;
      const defaultTitle = node.subgraph ? node.subgraph.name : node.def ? node.def.displayName : node.type;
      if (node.title !== defaultTitle) raw.title = node.title; else delete raw.title;
      if (!node.isMissing) raw.widgets_values = widgetValues(graph, node);
    }
  }

  render() {
    this.bar.hidden = !this.inside;
    if (!this.inside) { this.bar.replaceChildren(); return; }
    const back = el("button", { type: "button", id: "subgraph-back", text: "← Back" });
    back.addEventListener("click", () => this.back());
    const path = ["workflow", ...this.stack.map((level) => level.title)].join(" › ");
    this.bar.replaceChildren(back, el("span", { className: "subgraph-path", text: path }));
  }
}
