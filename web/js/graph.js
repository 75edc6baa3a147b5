// The graph being edited: nodes with widget values and positions, and typed links between them.
// No DOM here; the canvas view listens to changes and draws them.

import { ANY, typeLabel, typesCompatible } from "./types.js";

export class ConnectionRefused extends Error {}

export class GraphNode {
  constructor(id, type, def) {
    this.id = id;
    this.type = type;
    this.def = def; // null for a type the server does not know (drawn as missing, kept on save)
    this.title = def ? def.displayName : type;
    this.pos = [0, 0];
    this.size = null; // [w, h] once drawn or loaded
    this.mode = 0; // 0 always, 2 muted, 4 bypassed
    this.flags = {};
    this.color = undefined;
    this.bgcolor = undefined;
    this.properties = { "Node name for S&R": type };
    this.values = new Map(); // widget input name -> value
    this.controls = new Map(); // seed input name -> control mode (fixed/increment/decrement/randomize)
    this.inputLinks = new Map(); // input name -> link id
    this.outputLinks = []; // slot -> Set of link ids
    this.missingInputs = []; // [{name, type}] from the file, for a missing type
    this.missingOutputs = []; // [{name, type}]
    this.missingWidgetValues = null; // widgets_values of a missing type, written back unchanged
    this.missingLiterals = {}; // literal inputs of a missing type loaded from an API prompt, queued unchanged
    for (const input of def ? def.widgetInputs : []) {
      this.values.set(input.name, input.default);
      if (input.control) this.controls.set(input.name, "randomize");
    }
    const outputCount = def ? def.outputs.length : 0;
    for (let slot = 0; slot < outputCount; slot++) this.outputLinks.push(new Set());
  }

  get isMissing() {
    return this.def === null;
  }

  get isUiOnly() {
    return Boolean(this.def && this.def.uiOnly);
  }

  // Inputs as [{name, type, widget?}] in the order a UI workflow lists them: sockets first, then the
  // widget inputs (as newer ComfyUI front ends save them), so link target slots index into this list.
  get slotInputs() {
    if (!this.def) return this.missingInputs;
    const sockets = this.def.socketInputs.map((input) => ({ name: input.name, type: input.linkType, def: input }));
    const widgets = this.def.widgetInputs.map((input) => ({ name: input.name, type: input.linkType, def: input, widget: true }));
    return sockets.concat(widgets);
  }

  get outputs() {
    return this.def ? this.def.outputs : this.missingOutputs;
  }

  inputDef(name) {
    return this.def ? this.def.input(name) : null;
  }

  ensureOutputSlots(count) {
    while (this.outputLinks.length < count) this.outputLinks.push(new Set());
  }
}

export class Graph {
  constructor(defs) {
    this.defs = defs; // Map type -> NodeDef
    this.nodes = new Map();
    this.links = new Map();
    this.lastNodeId = 0;
    this.lastLinkId = 0;
    this.groups = [];
    this.extra = {};
    this.definitions = undefined; // subgraph definitions of a loaded file, kept for saving
    this.listeners = new Set();
  }

  onChange(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  emit(kind, detail = {}) {
    for (const listener of this.listeners) listener({ kind, ...detail });
  }

  clear() {
    this.nodes.clear();
    this.links.clear();
    this.lastNodeId = 0;
    this.lastLinkId = 0;
    this.groups = [];
    this.extra = {};
    this.definitions = undefined;
    this.emit("cleared");
  }

  addNode(type, { id, pos, title } = {}) {
    const def = this.defs.get(type) || null;
    const nodeId = id ?? this.lastNodeId + 1;
    if (this.nodes.has(nodeId)) throw new Error(`node id ${nodeId} is already used`);
    const node = new GraphNode(nodeId, type, def);
    if (pos) node.pos = [pos[0], pos[1]];
    if (title) node.title = title;
    this.nodes.set(nodeId, node);
    this.lastNodeId = Math.max(this.lastNodeId, nodeId);
    this.emit("node-added", { node });
    return node;
  }

  removeNode(nodeId) {
    const node = this.nodes.get(nodeId);
    if (!node) return;
    for (const link of this.linksOf(nodeId)) this.removeLink(link.id);
    this.nodes.delete(nodeId);
    this.emit("node-removed", { node });
  }

  linksOf(nodeId) {
    return [...this.links.values()].filter((link) => link.originId === nodeId || link.targetId === nodeId);
  }

  inputLink(nodeId, inputName) {
    const node = this.nodes.get(nodeId);
    const linkId = node && node.inputLinks.get(inputName);
    return linkId === undefined ? null : this.links.get(linkId) || null;
  }

  setValue(nodeId, inputName, value) {
    const node = this.nodes.get(nodeId);
    if (!node) return;
    node.values.set(inputName, value);
    this.emit("value", { node, inputName, value });
  }

  setControl(nodeId, inputName, mode) {
    const node = this.nodes.get(nodeId);
    if (!node) return;
    node.controls.set(inputName, mode);
    this.emit("value", { node, inputName, control: mode });
  }

  setMode(nodeId, mode) {
    const node = this.nodes.get(nodeId);
    if (!node) return;
    node.mode = mode;
    this.emit("mode", { node });
  }

  moveNode(nodeId, pos) {
    const node = this.nodes.get(nodeId);
    if (!node) return;
    node.pos = [pos[0], pos[1]];
    this.emit("moved", { node });
  }

  // The type an output slot really carries: a Reroute passes on what feeds it, a Primitive takes the
  // type of the widget it drives.
  outputType(nodeId, slot, seen = new Set()) {
    const node = this.nodes.get(nodeId);
    if (!node) return ANY;
    if (seen.has(nodeId)) return ANY;
    seen.add(nodeId);
    if (node.type === "Reroute") {
      const upstream = this.inputLink(nodeId, "");
      return upstream ? this.outputType(upstream.originId, upstream.originSlot, seen) : ANY;
    }
    if (node.type === "PrimitiveNode") {
      const first = [...(node.outputLinks[0] || [])].map((id) => this.links.get(id)).find(Boolean);
      return first ? first.type : ANY;
    }
    const output = node.outputs[slot];
    return output ? output.type : ANY;
  }

  // The input types a node's output already feeds (a Reroute forwards the question downstream).
  downstreamTypes(nodeId, seen = new Set()) {
    const node = this.nodes.get(nodeId);
    if (!node || seen.has(nodeId)) return [];
    seen.add(nodeId);
    const types = [];
    for (const linkId of node.outputLinks[0] || []) {
      const link = this.links.get(linkId);
      const target = link && this.nodes.get(link.targetId);
      if (!target) continue;
      if (target.type === "Reroute") types.push(...this.downstreamTypes(target.id, seen));
      else types.push(this.inputType(target, link.targetInput));
    }
    return types;
  }

  inputType(node, inputName) {
    const slot = node.slotInputs.find((input) => input.name === inputName);
    return slot ? slot.type : null;
  }

  // Whether origin.slot may feed target.inputName; gives the reason when not.
  canConnect(originId, originSlot, targetId, inputName) {
    const origin = this.nodes.get(originId);
    const target = this.nodes.get(targetId);
    if (!origin || !target) return { ok: false, reason: "node not found" };
    if (originId === targetId) return { ok: false, reason: "a node cannot feed itself" };
    if (originSlot < 0 || originSlot >= Math.max(origin.outputs.length, origin.outputLinks.length)) {
      return { ok: false, reason: `${origin.title} has no output ${originSlot}` };
    }
    const inputType = this.inputType(target, inputName);
    if (inputType === null) return { ok: false, reason: `${target.title} has no input '${inputName}'` };
    if (origin.type === "PrimitiveNode") {
      const def = target.inputDef(inputName);
      if (!def || def.widget === null) return { ok: false, reason: "a Primitive only feeds widget inputs" };
      const current = this.outputType(originId, 0);
      if (current !== ANY && !typesCompatible(current, inputType)) {
        return { ok: false, reason: `this Primitive already drives ${typeLabel(current)} widgets` };
      }
      return { ok: true };
    }
    const outputType = this.outputType(originId, originSlot);
    if (!typesCompatible(outputType, inputType)) {
      return { ok: false, reason: `cannot connect ${typeLabel(outputType)} to ${typeLabel(inputType)} input '${inputName || "input"}' of ${target.title}` };
    }
    if (target.type === "Reroute") {
      for (const downstream of this.downstreamTypes(targetId)) {
        if (!typesCompatible(outputType, downstream)) {
          return { ok: false, reason: `this Reroute feeds ${typeLabel(downstream)}, not ${typeLabel(outputType)}` };
        }
      }
    }
    if (this.reaches(targetId, originId)) return { ok: false, reason: "that link would make a cycle" };
    return { ok: true };
  }

  // Whether `toId` is downstream of `fromId` (used to refuse cycles).
  reaches(fromId, toId) {
    const stack = [fromId];
    const seen = new Set();
    while (stack.length) {
      const current = stack.pop();
      if (current === toId) return true;
      if (seen.has(current)) continue;
      seen.add(current);
      const node = this.nodes.get(current);
      for (const linkIds of node ? node.outputLinks : []) {
        for (const linkId of linkIds) {
          const link = this.links.get(linkId);
          if (link) stack.push(link.targetId);
        }
      }
    }
    return false;
  }

  connect(originId, originSlot, targetId, inputName, { id, type } = {}) {
    const verdict = this.canConnect(originId, originSlot, targetId, inputName);
    if (!verdict.ok) throw new ConnectionRefused(verdict.reason);
    return this.addLink(originId, originSlot, targetId, inputName, { id, type });
  }

  // Adds a link without the type check (used when loading files that may hold odd but valid links).
  addLink(originId, originSlot, targetId, inputName, { id, type } = {}) {
    const origin = this.nodes.get(originId);
    const target = this.nodes.get(targetId);
    const existing = this.inputLink(targetId, inputName);
    if (existing) this.removeLink(existing.id);
    const linkId = id ?? this.lastLinkId + 1;
    const linkType = type ?? typeLabel(origin.type === "PrimitiveNode" ? this.inputType(target, inputName) : this.outputType(originId, originSlot));
    const link = { id: linkId, originId, originSlot, targetId, targetInput: inputName, type: linkType };
    this.links.set(linkId, link);
    this.lastLinkId = Math.max(this.lastLinkId, linkId);
    origin.ensureOutputSlots(originSlot + 1);
    origin.outputLinks[originSlot].add(linkId);
    target.inputLinks.set(inputName, linkId);
    this.emit("link-added", { link });
    return link;
  }

  removeLink(linkId) {
    const link = this.links.get(linkId);
    if (!link) return;
    this.links.delete(linkId);
    const origin = this.nodes.get(link.originId);
    if (origin && origin.outputLinks[link.originSlot]) origin.outputLinks[link.originSlot].delete(linkId);
    const target = this.nodes.get(link.targetId);
    if (target && target.inputLinks.get(link.targetInput) === linkId) target.inputLinks.delete(link.targetInput);
    this.emit("link-removed", { link });
  }

  disconnectInput(targetId, inputName) {
    const link = this.inputLink(targetId, inputName);
    if (link) this.removeLink(link.id);
  }
}
