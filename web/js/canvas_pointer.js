// Pointer handling on the canvas: drag nodes, draw links between typed sockets (refusing incompatible
// ones), pan with the background, zoom with the wheel, box-select with Ctrl/Shift, resize nodes, and
// open the node search on a double click (on the canvas or a node's title) or when a link is dropped on
// empty canvas. A press outside a form field takes the keyboard focus away from any field being edited, so
// Delete and the other shortcuts then act on the canvas.

import { ConnectionRefused } from "./graph.js";
import { typeColour } from "./types.js";
import { el } from "./widgets.js";

const INTERACTIVE = "input, textarea, select, button, a, label, option";

export function attachPointerHandling(view) {
  const { root } = view;
  let gesture = null; // {move(event), up(event)} while a drag is in progress

  root.addEventListener("pointerdown", (event) => {
    if (gesture) return;
    const target = event.target;
    if (target.closest(".search-menu, .context-menu")) return;
    if (!target.closest(INTERACTIVE)) releaseFocus(view);
    if (event.button === 1) { gesture = panGesture(view, event); }
    else if (event.button !== 0) return;
    else if (target.closest(".socket")) gesture = linkGesture(view, event, target.closest(".socket"));
    else if (target.closest(".node-resize")) gesture = resizeGesture(view, event, nodeIdOf(target));
    else if (target.closest(".group-title")) gesture = groupDragGesture(view, event, Number(target.closest(".group").dataset.groupIndex));
    else if (target.closest(".node")) {
      const nodeId = nodeIdOf(target);
      if (target.closest(".node-collapse")) { toggleCollapse(view, nodeId); return; }
      if (!view.selection.has(nodeId)) view.select([nodeId], { add: event.shiftKey || event.ctrlKey || event.metaKey });
      else if (event.ctrlKey || event.metaKey) { view.deselect(nodeId); return; }
      if (target.closest(INTERACTIVE)) return; // let the widget have it
      gesture = nodeDragGesture(view, event);
    } else if (event.ctrlKey || event.shiftKey || event.metaKey) gesture = boxSelectGesture(view, event);
    else {
      view.select([]);
      gesture = panGesture(view, event);
    }
    if (gesture) {
      event.preventDefault();
      root.setPointerCapture(event.pointerId);
    }
  });
  root.addEventListener("pointermove", (event) => { if (gesture) gesture.move(event); });
  const finish = (event) => {
    if (!gesture) return;
    const current = gesture;
    gesture = null;
    if (root.hasPointerCapture(event.pointerId)) root.releasePointerCapture(event.pointerId);
    current.up(event);
  };
  root.addEventListener("pointerup", finish);
  root.addEventListener("pointercancel", finish);

  root.addEventListener("wheel", (event) => {
    const scrollable = event.target.closest("textarea, select, .node-preview");
    if (scrollable && scrollable.scrollHeight > scrollable.clientHeight) return;
    event.preventDefault();
    view.zoomAt(event.clientX, event.clientY, Math.exp(-event.deltaY * 0.0015));
    view.scheduleLinks();
  }, { passive: false });

  root.addEventListener("dblclick", (event) => {
    const target = event.target;
    if (target.closest(".node") && !target.closest(".node-title")) return;
    view.hooks.openSearch({ clientX: event.clientX, clientY: event.clientY, worldPos: view.toWorld(event.clientX, event.clientY) });
  });

  root.addEventListener("contextmenu", (event) => {
    if (event.target.closest("input, textarea")) return;
    event.preventDefault();
    const nodeEl = event.target.closest(".node");
    const nodeId = nodeEl ? Number(nodeEl.dataset.nodeId) : null;
    if (nodeId !== null && !view.selection.has(nodeId)) view.select([nodeId]);
    view.hooks.openContextMenu({ clientX: event.clientX, clientY: event.clientY, nodeId, worldPos: view.toWorld(event.clientX, event.clientY) });
  });
}

function nodeIdOf(target) {
  const nodeEl = target.closest(".node");
  return nodeEl ? Number(nodeEl.dataset.nodeId) : null;
}

function toggleCollapse(view, nodeId) {
  const node = view.graph.nodes.get(nodeId);
  node.flags.collapsed = !node.flags.collapsed;
  view.graph.emit("mode", { node });
}

// The field being typed into (a prompt, a number) gives the keyboard back: its change is committed by the
// blur, and the canvas takes the focus so keys go to the shortcuts.
function releaseFocus(view) {
  const active = document.activeElement;
  if (active instanceof HTMLElement && active !== view.root && active.closest(INTERACTIVE)) active.blur();
  if (document.activeElement !== view.root) view.root.focus({ preventScroll: true });
}

// F2 or the node menu: the title becomes a text field (Enter keeps, Escape cancels).
export function renameInPlace(view, nodeId) {
  const node = view.graph.nodes.get(nodeId);
  const nodeView = view.views.get(nodeId);
  if (!node || !nodeView) return;
  const titleEl = nodeView.titleText;
  const field = el("input", { type: "text", className: "title-edit", value: node.title });
  titleEl.replaceChildren(field);
  field.focus();
  field.select();
  const commit = (keep) => {
    if (!field.isConnected) return;
    const renamed = keep && field.value.trim() && field.value.trim() !== node.title;
    if (renamed) node.title = field.value.trim();
    titleEl.textContent = node.title;
    view.graph.emit(renamed ? "renamed" : "mode", { node });
  };
  field.addEventListener("keydown", (event) => {
    event.stopPropagation();
    if (event.key === "Enter") commit(true);
    if (event.key === "Escape") commit(false);
  });
  field.addEventListener("blur", () => commit(true));
}

function panGesture(view, event) {
  let last = [event.clientX, event.clientY];
  view.root.classList.add("panning");
  return {
    move(e) { view.panBy(e.clientX - last[0], e.clientY - last[1]); last = [e.clientX, e.clientY]; },
    up() { view.root.classList.remove("panning"); },
  };
}

function nodeDragGesture(view, event) {
  const start = view.toWorld(event.clientX, event.clientY);
  const origins = new Map([...view.selection].map((id) => [id, [...view.graph.nodes.get(id).pos]]));
  return {
    move(e) {
      const [x, y] = view.toWorld(e.clientX, e.clientY);
      for (const [id, [ox, oy]] of origins) view.graph.moveNode(id, [Math.round(ox + x - start[0]), Math.round(oy + y - start[1])]);
    },
    up() {},
  };
}

// Moves a group and the nodes whose top-left corner lies inside it.
function groupDragGesture(view, event, index) {
  const group = view.graph.groups[index];
  const [gx, gy, gw, gh] = group.bounding;
  const inside = [...view.graph.nodes.values()].filter((node) =>
    node.pos[0] >= gx && node.pos[0] <= gx + gw && node.pos[1] >= gy && node.pos[1] <= gy + gh);
  const origins = new Map(inside.map((node) => [node.id, [...node.pos]]));
  const start = view.toWorld(event.clientX, event.clientY);
  return {
    move(e) {
      const [x, y] = view.toWorld(e.clientX, e.clientY);
      const [dx, dy] = [Math.round(x - start[0]), Math.round(y - start[1])];
      group.bounding = [gx + dx, gy + dy, gw, gh];
      for (const [id, [ox, oy]] of origins) view.graph.moveNode(id, [ox + dx, oy + dy]);
      view.renderGroups();
    },
    up() { view.graph.emit("groups"); },
  };
}

function resizeGesture(view, event, nodeId) {
  const node = view.graph.nodes.get(nodeId);
  const element = view.views.get(nodeId).element;
  const startX = event.clientX;
  const startWidth = element.offsetWidth;
  return {
    move(e) {
      const width = Math.max(160, Math.round(startWidth + (e.clientX - startX) / view.scale));
      node.size = [width, element.offsetHeight];
      view.views.get(nodeId).refreshFrame();
      view.scheduleLinks();
    },
    up() {},
  };
}

function boxSelectGesture(view, event) {
  const start = view.toWorld(event.clientX, event.clientY);
  const box = el("div", { className: "select-box" });
  view.world.append(box);
  let end = start;
  const place = () => {
    box.style.left = `${Math.min(start[0], end[0])}px`;
    box.style.top = `${Math.min(start[1], end[1])}px`;
    box.style.width = `${Math.abs(end[0] - start[0])}px`;
    box.style.height = `${Math.abs(end[1] - start[1])}px`;
  };
  place();
  return {
    move(e) { end = view.toWorld(e.clientX, e.clientY); place(); },
    up() {
      box.remove();
      const [x0, x1] = [Math.min(start[0], end[0]), Math.max(start[0], end[0])];
      const [y0, y1] = [Math.min(start[1], end[1]), Math.max(start[1], end[1])];
      const inside = [...view.views.values()].filter(({ node, element }) =>
        node.pos[0] < x1 && node.pos[0] + element.offsetWidth > x0 && node.pos[1] < y1 && node.pos[1] + element.offsetHeight > y0);
      view.select(inside.map(({ node }) => node.id), { add: true });
    },
  };
}

// Dragging from a socket. From an output: drop on an input. From an input: drop on an output, or, if
// the input was linked, the link is picked up and re-plugged from its origin.
function linkGesture(view, event, socket) {
  const { graph } = view;
  const nodeId = nodeIdOf(socket);
  let from;
  if (socket.classList.contains("socket-out")) from = { kind: "output", nodeId, slot: Number(socket.dataset.slot) };
  else {
    const existing = graph.inputLink(nodeId, socket.dataset.input);
    if (existing) {
      graph.removeLink(existing.id);
      from = { kind: "output", nodeId: existing.originId, slot: existing.originSlot };
    } else from = { kind: "input", nodeId, input: socket.dataset.input };
  }
  const anchor = from.kind === "output" ? view.socketPoint(from.nodeId, "out", from.slot) : view.socketPoint(from.nodeId, "in", from.input);
  const colour = typeColour(from.kind === "output" ? graph.outputType(from.nodeId, from.slot) : graph.inputType(graph.nodes.get(from.nodeId), from.input));
  if (from.kind === "output") view.markCompatible("in", (id, name) => graph.canConnect(from.nodeId, from.slot, id, name).ok);
  else view.markCompatible("out", (id, slot) => graph.canConnect(id, slot, from.nodeId, from.input).ok);
  view.root.classList.add("linking");
  const draw = (e) => {
    const point = view.toWorld(e.clientX, e.clientY);
    if (from.kind === "output") view.showDragLink(anchor, point, colour); else view.showDragLink(point, anchor, colour);
  };
  draw(event);
  return {
    move: draw,
    up(e) {
      view.hideDragLink();
      view.clearMarks();
      view.root.classList.remove("linking");
      dropLink(view, from, e);
    },
  };
}

function dropLink(view, from, event) {
  const { graph } = view;
  const hit = document.elementFromPoint(event.clientX, event.clientY);
  const nodeEl = hit && hit.closest(".node");
  if (!nodeEl) {
    if (hit && hit.closest("#canvas")) offerNewNode(view, from, event);
    return;
  }
  const targetId = Number(nodeEl.dataset.nodeId);
  const target = graph.nodes.get(targetId);
  let origin;
  let input;
  let feedback;
  if (from.kind === "output") {
    origin = [from.nodeId, from.slot];
    const row = hit.closest("[data-input]");
    feedback = row && (row.classList.contains("socket") ? row : row.querySelector(".socket-in"));
    input = row ? row.dataset.input
      : (target.slotInputs.find((slot) => !target.inputLinks.has(slot.name) && graph.canConnect(from.nodeId, from.slot, targetId, slot.name).ok) || {}).name;
    if (input === undefined) {
      view.hooks.notify(`${target.title} has no free input that takes this output`, "error");
      view.flash(nodeEl);
      return;
    }
  } else {
    const row = hit.closest("[data-output]");
    const socket = hit.closest(".socket-out");
    const slot = socket ? Number(socket.dataset.slot) : row ? Number(row.dataset.output)
      : target.outputs.findIndex((_, index) => graph.canConnect(targetId, index, from.nodeId, from.input).ok);
    if (slot < 0 || Number.isNaN(slot)) {
      view.hooks.notify(`${target.title} has no output that fits this input`, "error");
      view.flash(nodeEl);
      return;
    }
    origin = [targetId, slot];
    input = from.input;
    feedback = nodeEl.querySelector(`.socket-out[data-slot="${slot}"]`);
    if (targetId === from.nodeId) return;
  }
  const receiver = from.kind === "output" ? targetId : from.nodeId;
  if (from.kind === "output" && receiver === from.nodeId) return;
  try {
    graph.connect(origin[0], origin[1], receiver, input);
  } catch (error) {
    if (!(error instanceof ConnectionRefused)) throw error;
    view.hooks.notify(`Refused: ${error.message}`, "error");
    view.flash(feedback || nodeEl);
  }
}

// A link dropped on empty canvas: pick a node to create, connected to the link's end.
function offerNewNode(view, from, event) {
  const { graph } = view;
  const type = from.kind === "output" ? graph.outputType(from.nodeId, from.slot) : graph.inputType(graph.nodes.get(from.nodeId), from.input);
  const worldPos = view.toWorld(event.clientX, event.clientY);
  view.hooks.openSearch({
    clientX: event.clientX, clientY: event.clientY, worldPos,
    filter: { kind: from.kind === "output" ? "input" : "output", type },
    onPick(node) {
      if (from.kind === "output") {
        const slot = node.slotInputs.find((input) => graph.canConnect(from.nodeId, from.slot, node.id, input.name).ok);
        if (slot) graph.connect(from.nodeId, from.slot, node.id, slot.name);
      } else {
        node.pos = [worldPos[0] - 220, worldPos[1]];
        graph.moveNode(node.id, node.pos);
        const slot = node.outputs.findIndex((_, index) => graph.canConnect(node.id, index, from.nodeId, from.input).ok);
        if (slot >= 0) graph.connect(node.id, slot, from.nodeId, from.input);
      }
    },
  });
}
