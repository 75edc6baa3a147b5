// Saving and loading workflows: ComfyUI's UI format (LiteGraph "version 0.4", also the newer link
// objects of version 1) and the API format (laid out automatically, since it has no positions).

import { CONTROL_MODES, UPLOAD_MARKER } from "./node_defs.js";
import { typeLabel } from "./types.js";

export function detectFormat(json) {
  if (!json || typeof json !== "object" || Array.isArray(json)) return null;
  if (Array.isArray(json.nodes)) return "ui";
  const values = Object.values(json);
  if (values.length && values.every((v) => v && typeof v === "object" && typeof v.class_type === "string")) return "api";
  if (json.prompt && detectFormat(json.prompt) === "api") return "api-wrapped";
  return null;
}

// ---------------------------------------------------------------- saving

export function serializeWorkflow(graph, { nodeIds = null, viewport = null } = {}) {
  const chosen = nodeIds ? new Set(nodeIds) : null;
  const nodes = [...graph.nodes.values()].filter((node) => !chosen || chosen.has(node.id));
  const order = executionOrder(graph);
  const links = [...graph.links.values()].filter(
    (link) => !chosen || (chosen.has(link.originId) && chosen.has(link.targetId)));
  const keptLinks = new Set(links.map((link) => link.id));
  const workflow = {
    last_node_id: graph.lastNodeId,
    last_link_id: graph.lastLinkId,
    nodes: nodes.map((node) => serializeNode(graph, node, order.get(node.id) ?? 0, keptLinks)),
    links: links.map((link) => [link.id, link.originId, link.originSlot, link.targetId,
      targetSlotIndex(graph.nodes.get(link.targetId), link.targetInput), link.type]),
    groups: chosen ? [] : graph.groups,
    config: {},
    extra: { ...graph.extra, ...(viewport ? { ds: viewport } : {}) },
    version: 0.4,
  };
  if (graph.definitions && !chosen) workflow.definitions = graph.definitions;
  return workflow;
}

function targetSlotIndex(node, inputName) {
  return node ? node.slotInputs.findIndex((input) => input.name === inputName) : -1;
}

function serializeNode(graph, node, order, keptLinks) {
  const inputs = node.slotInputs.map((input) => {
    const linkId = node.inputLinks.get(input.name);
    const entry = { name: input.name, type: typeLabel(input.type), link: keptLinks.has(linkId) ? linkId : null };
    if (input.widget) entry.widget = { name: input.name };
    return entry;
  });
  const outputCount = Math.max(node.outputs.length, node.outputLinks.length);
  const outputs = [];
  for (let slot = 0; slot < outputCount; slot++) {
    const output = node.outputs[slot] || { name: "", type: "*" };
    const linkIds = [...(node.outputLinks[slot] || [])].filter((id) => keptLinks.has(id));
    const type = node.type === "PrimitiveNode" || node.type === "Reroute" ? graph.outputType(node.id, slot) : output.type;
    outputs.push({ name: output.name, type: typeLabel(type), links: linkIds.length ? linkIds : null, slot_index: slot });
  }
  const entry = {
    id: node.id,
    type: node.type,
    pos: [...node.pos],
    size: node.size ? [...node.size] : [240, 120],
    flags: { ...node.flags },
    order,
    mode: node.mode,
    inputs,
    outputs,
    properties: { ...node.properties },
    widgets_values: widgetValues(graph, node),
  };
  if (node.def && node.title !== node.def.displayName) entry.title = node.title;
  if (!node.def && node.title !== node.type) entry.title = node.title;
  if (node.color) entry.color = node.color;
  if (node.bgcolor) entry.bgcolor = node.bgcolor;
  return entry;
}

export function widgetValues(graph, node) {
  if (node.isMissing) return node.missingWidgetValues ?? [];
  if (node.type === "PrimitiveNode") {
    const values = [node.values.get("value") ?? null];
    if (node.controls.has("value")) values.push(node.controls.get("value"));
    return values;
  }
  return node.def.widgetSlots.map(({ input, role }) => {
    if (role === "control") return node.controls.get(input.name) ?? "fixed";
    if (role === "upload") return UPLOAD_MARKER;
    return node.values.get(input.name);
  });
}

// Topological position of each node (the `order` field ComfyUI writes).
export function executionOrder(graph) {
  const indegree = new Map([...graph.nodes.keys()].map((id) => [id, 0]));
  for (const link of graph.links.values()) {
    if (indegree.has(link.targetId)) indegree.set(link.targetId, indegree.get(link.targetId) + 1);
  }
  const ready = [...indegree.entries()].filter(([, n]) => n === 0).map(([id]) => id).sort((a, b) => a - b);
  const order = new Map();
  while (ready.length) {
    const id = ready.shift();
    order.set(id, order.size);
    const node = graph.nodes.get(id);
    for (const linkIds of node.outputLinks) {
      for (const linkId of linkIds) {
        const link = graph.links.get(linkId);
        if (!link || !indegree.has(link.targetId)) continue;
        indegree.set(link.targetId, indegree.get(link.targetId) - 1);
        if (indegree.get(link.targetId) === 0) ready.push(link.targetId);
      }
    }
  }
  for (const id of graph.nodes.keys()) if (!order.has(id)) order.set(id, order.size);
  return order;
}

// ---------------------------------------------------------------- loading

function toPair(value, fallback) {
  if (Array.isArray(value) && value.length >= 2) return [Number(value[0]), Number(value[1])];
  if (value && typeof value === "object" && "0" in value) return [Number(value[0]), Number(value[1])];
  return fallback;
}

// Normalises both link shapes to {id, originId, originSlot, targetId, targetSlot, type}.
function readLink(raw) {
  if (Array.isArray(raw)) {
    const [id, originId, originSlot, targetId, targetSlot, type] = raw;
    return { id, originId, originSlot, targetId, targetSlot, type };
  }
  return { id: raw.id, originId: raw.origin_id, originSlot: raw.origin_slot, targetId: raw.target_id,
    targetSlot: raw.target_slot, type: raw.type };
}

// Adds one node of a UI workflow (a file or a pasted fragment) with its values and looks.
function addRawNode(graph, raw, { id, pos }, warnings) {
  const node = graph.addNode(raw.type, { id, pos, title: raw.title });
  node.size = toPair(raw.size, null);
  node.mode = Number(raw.mode) || 0;
  node.flags = raw.flags && typeof raw.flags === "object" ? { ...raw.flags } : {};
  node.color = raw.color;
  node.bgcolor = raw.bgcolor;
  if (raw.properties && typeof raw.properties === "object") node.properties = { ...raw.properties };
  const subgraph = node.isMissing ? findSubgraph(graph, raw.type) : null;
  if (subgraph) {
    node.subgraph = subgraph; // a subgraph instance: kept as saved, converted by the server when queued
    if (!raw.title) node.title = subgraph.name || "Subgraph";
  }
  if (node.isMissing) {
    if (!subgraph) warnings.push(`node #${node.id}: type '${raw.type}' is not installed`);
    node.missingInputs = (raw.inputs || []).map((input) => ({ name: input.name, type: input.type }));
    node.missingOutputs = (raw.outputs || []).map((output) => ({ name: output.name, type: output.type }));
    node.ensureOutputSlots(node.missingOutputs.length);
    node.missingWidgetValues = raw.widgets_values;
  } else {
    applyWidgetValues(node, raw.widgets_values);
  }
  return node;
}

// The definition (`definitions.subgraphs[]`) of a node type that is a subgraph id, if it is one.
export function findSubgraph(graph, type) {
  const subgraphs = (graph.definitions && graph.definitions.subgraphs) || [];
  return subgraphs.find((definition) => definition && definition.id === type) || null;
}

// Adds the links of a UI workflow; `rawNodes` maps file ids to file nodes, `ids` file ids to graph ids.
function addRawLinks(graph, rawLinks, rawNodes, ids, warnings) {
  for (const rawLink of rawLinks || []) {
    if (!rawLink) continue;
    const link = readLink(rawLink);
    const origin = graph.nodes.get(ids.get(Number(link.originId)));
    const target = graph.nodes.get(ids.get(Number(link.targetId)));
    if (!origin || !target) {
      warnings.push(`link ${link.id} joins a node that is not in the file`);
      continue;
    }
    const fileInput = (rawNodes.get(Number(link.targetId)).inputs || [])[link.targetSlot];
    const inputName = fileInput ? fileInput.name : (target.slotInputs[link.targetSlot] || {}).name;
    if (inputName === undefined || !target.slotInputs.some((input) => input.name === inputName)) {
      warnings.push(`link ${link.id}: ${target.title} has no input slot ${link.targetSlot}`);
      continue;
    }
    graph.addLink(origin.id, Number(link.originSlot), target.id, inputName, { id: ids === IDENTITY ? Number(link.id) : undefined, type: link.type });
  }
}

const IDENTITY = { get: (id) => id };

// Loads a UI-format workflow into `graph` (cleared first). Returns warnings about what could not load.
export function loadUiWorkflow(graph, workflow) {
  graph.clear();
  graph.definitions = workflow.definitions; // before the nodes: a node may be an instance of a subgraph
  const warnings = [];
  const rawNodes = new Map();
  for (const raw of workflow.nodes) {
    const node = addRawNode(graph, raw, { id: Number(raw.id), pos: toPair(raw.pos, [0, 0]) }, warnings);
    rawNodes.set(node.id, raw);
  }
  addRawLinks(graph, workflow.links, rawNodes, IDENTITY, warnings);
  graph.lastNodeId = Math.max(graph.lastNodeId, Number(workflow.last_node_id) || 0);
  graph.lastLinkId = Math.max(graph.lastLinkId, Number(workflow.last_link_id) || 0);
  graph.groups = Array.isArray(workflow.groups) ? workflow.groups : [];
  graph.extra = workflow.extra && typeof workflow.extra === "object" ? { ...workflow.extra } : {};
  graph.definitions = workflow.definitions;
  graph.emit("loaded");
  return warnings;
}

// Pastes copied nodes (a UI workflow fragment) with fresh ids, moved by `offset`; returns the new ids.
export function pasteFragment(graph, fragment, offset = [20, 20]) {
  const warnings = [];
  const rawNodes = new Map();
  const ids = new Map();
  for (const raw of fragment.nodes || []) {
    const pos = toPair(raw.pos, [0, 0]);
    const node = addRawNode(graph, raw, { pos: [pos[0] + offset[0], pos[1] + offset[1]] }, warnings);
    rawNodes.set(Number(raw.id), raw);
    ids.set(Number(raw.id), node.id);
  }
  addRawLinks(graph, fragment.links, rawNodes, ids, warnings);
  const created = [...ids.values()];
  graph.emit("refresh", { nodeIds: created });
  return created;
}

// Maps widgets_values onto the widget inputs (§7.2): by position, consuming the seed control value and
// the upload marker where they appear, and tolerating values missing at the end (older saves).
export function applyWidgetValues(node, values) {
  if (values && !Array.isArray(values) && typeof values === "object") {
    for (const [name, value] of Object.entries(values)) if (node.values.has(name)) node.values.set(name, value);
    return;
  }
  if (!Array.isArray(values)) return;
  if (node.type === "PrimitiveNode") {
    node.values.set("value", values[0]);
    if (CONTROL_MODES.includes(values[1])) node.controls.set("value", values[1]);
    return;
  }
  let index = 0;
  for (const input of node.def.widgetInputs) {
    if (index >= values.length) break;
    node.values.set(input.name, values[index++]);
    // Legacy front ends also saved a control value after INT widgets named seed/noise_seed.
    if (input.widget === "INT" && CONTROL_MODES.includes(values[index])) {
      node.controls.set(input.name, values[index++]);
    }
    if (input.upload && values[index] === UPLOAD_MARKER) index++;
  }
}

// Loads an API-format prompt; positions are computed by column = longest path from a source node.
export function loadApiPrompt(graph, prompt, { columnWidth = 340, rowGap = 30 } = {}) {
  graph.clear();
  const warnings = [];
  const ids = new Map();
  let nextId = 1 + Math.max(0, ...Object.keys(prompt).map(Number).filter(Number.isInteger));
  for (const key of Object.keys(prompt)) ids.set(key, Number.isInteger(Number(key)) && Number(key) > 0 ? Number(key) : nextId++);
  for (const [key, entry] of Object.entries(prompt)) {
    const node = graph.addNode(entry.class_type, { id: ids.get(key), title: entry._meta && entry._meta.title });
    if (node.isMissing) warnings.push(`node ${key}: type '${entry.class_type}' is not installed`);
    for (const [name, value] of Object.entries(entry.inputs || {})) {
      if (Array.isArray(value)) continue;
      const literal = value && typeof value === "object" && "__value__" in value ? value.__value__ : value;
      if (node.values.has(name)) node.values.set(name, literal);
      else if (node.isMissing) node.missingLiterals[name] = value;
    }
    if (node.controls.size) for (const name of node.controls.keys()) node.controls.set(name, "fixed");
  }
  for (const [key, entry] of Object.entries(prompt)) {
    const target = graph.nodes.get(ids.get(key));
    for (const [name, value] of Object.entries(entry.inputs || {})) {
      if (!Array.isArray(value) || value.length !== 2) continue;
      const origin = graph.nodes.get(ids.get(String(value[0])));
      if (!origin) { warnings.push(`node ${key}: input '${name}' links to missing node ${value[0]}`); continue; }
      if (target.isMissing && !target.missingInputs.some((input) => input.name === name)) {
        target.missingInputs.push({ name, type: "*" });
      }
      if (origin.isMissing) {
        while (origin.missingOutputs.length <= value[1]) origin.missingOutputs.push({ name: "", type: "*" });
        origin.ensureOutputSlots(origin.missingOutputs.length);
      }
      if (!target.slotInputs.some((input) => input.name === name)) { warnings.push(`node ${key}: unknown input '${name}'`); continue; }
      graph.addLink(origin.id, Number(value[1]), target.id, name);
    }
  }
  layoutColumns(graph, { columnWidth, rowGap });
  graph.emit("loaded");
  return warnings;
}

export function estimateHeight(node) {
  const inputs = node.slotInputs.length;
  const multiline = node.def ? node.def.widgetInputs.filter((input) => input.options.multiline).length : 0;
  const outputs = node.outputs.length;
  return 40 + 26 * Math.max(inputs, outputs) + 70 * multiline + (node.def && node.def.outputNode ? 160 : 0);
}

// Columns by dependency depth; a node without inputs (a loader) sits just left of its first consumer, and
// each column is ordered by where its neighbours are, so links cross less.
export function layoutColumns(graph, { columnWidth = 340, rowGap = 30, origin = [40, 40] } = {}) {
  const order = [...executionOrder(graph).entries()].sort((a, b) => a[1] - b[1]).map(([id]) => id);
  const upstream = new Map(order.map((id) => [id, []]));
  const downstream = new Map(order.map((id) => [id, []]));
  for (const link of graph.links.values()) {
    if (!upstream.has(link.targetId) || !downstream.has(link.originId)) continue;
    upstream.get(link.targetId).push(link.originId);
    downstream.get(link.originId).push(link.targetId);
  }
  const depth = new Map();
  for (const id of order) depth.set(id, Math.max(0, ...upstream.get(id).map((up) => depth.get(up) + 1)));
  for (const id of [...order].reverse()) {
    if (upstream.get(id).length || !downstream.get(id).length) continue;
    depth.set(id, Math.max(0, Math.min(...downstream.get(id).map((down) => depth.get(down))) - 1));
  }
  const columns = new Map();
  for (const id of order) {
    if (!columns.has(depth.get(id))) columns.set(depth.get(id), []);
    columns.get(depth.get(id)).push(id);
  }
  const rank = new Map();
  const stack = () => {
    for (const [d, ids] of [...columns.entries()].sort((a, b) => a[0] - b[0])) {
      let y = origin[1];
      ids.forEach((id, index) => {
        const node = graph.nodes.get(id);
        node.pos = [origin[0] + d * columnWidth, y];
        rank.set(id, index);
        y += estimateHeight(node) + rowGap;
      });
    }
  };
  stack();
  for (let sweep = 0; sweep < 2; sweep++) {
    for (const ids of columns.values()) {
      const centre = (id) => {
        const neighbours = [...upstream.get(id), ...downstream.get(id)];
        if (!neighbours.length) return graph.nodes.get(id).pos[1];
        return neighbours.reduce((sum, other) => sum + graph.nodes.get(other).pos[1], 0) / neighbours.length;
      };
      const centres = new Map(ids.map((id) => [id, centre(id)]));
      ids.sort((a, b) => centres.get(a) - centres.get(b) || rank.get(a) - rank.get(b));
    }
    stack();
  }
}
