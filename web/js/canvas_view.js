// The canvas: nodes as DOM elements in a pannable, zoomable world, links as SVG curves.
// Pointer handling (drag, connect, select, pan, zoom) lives in canvas_pointer.js.

import { NodeView } from "./node_view.js";
import { el } from "./widgets.js";
import { typeColour } from "./types.js";
import { attachPointerHandling } from "./canvas_pointer.js";

const SVG_NS = "http://www.w3.org/2000/svg";

export class CanvasView {
  // hooks: {onUpload, imageUrl, openSearch, notify, openContextMenu, onSelectionChange}
  constructor(root, graph, hooks) {
    this.root = root;
    this.graph = graph;
    this.hooks = hooks;
    this.scale = 1;
    this.offset = [0, 0];
    this.views = new Map();
    this.selection = new Set();
    this.world = el("div", { className: "world" });
    this.svg = document.createElementNS(SVG_NS, "svg");
    this.svg.classList.add("links");
    this.dragPath = document.createElementNS(SVG_NS, "path");
    this.dragPath.classList.add("link-drag");
    this.world.append(this.svg);
    this.root.append(this.world);
    this.hint = el("div", { className: "canvas-hint", text: "Double-click the canvas to add a node, or drop a workflow (.json or .png) here." });
    this.root.append(this.hint);
    this.linksPending = false;
    this.resizeObserver = new ResizeObserver((entries) => {
      for (const entry of entries) {
        const view = this.views.get(Number(entry.target.dataset.nodeId));
        if (!view || view.node.flags.collapsed) continue;
        const before = view.measured; // the height last seen (none on the first look: a fresh node)
        view.measured = entry.target.offsetHeight;
        view.node.size = [entry.target.offsetWidth, entry.target.offsetHeight];
        if (before !== undefined && view.measured > before) this.makeRoomBelow(view, before);
      }
      this.scheduleLinks();
    });
    graph.onChange((event) => this.onGraphChange(event));
    attachPointerHandling(this);
    this.applyTransform();
  }

  // ------------------------------------------------------------ graph changes

  onGraphChange(event) {
    switch (event.kind) {
      case "node-added": this.addView(event.node); break;
      case "node-removed": this.removeView(event.node.id); break;
      case "link-added":
      case "link-removed": this.onLinkChange(event.link); break;
      case "value": { const view = this.views.get(event.node.id); if (view) view.refreshValue(event.inputName); break; }
      case "mode":
      case "renamed":
      case "moved": { const view = this.views.get(event.node.id); if (view) view.refreshFrame(); this.scheduleLinks(); break; }
      case "cleared": for (const id of [...this.views.keys()]) this.removeView(id); this.renderGroups(); break;
      case "groups": this.renderGroups(); break;
      case "loaded": this.rerenderAll(); break;
      case "refresh": for (const id of event.nodeIds) this.views.get(id)?.render(); this.scheduleLinks(); break;
      default: break;
    }
    this.hint.hidden = this.graph.nodes.size > 0;
  }

  addView(node) {
    const view = new NodeView(this.graph, node, this.hooks);
    this.views.set(node.id, view);
    this.world.append(view.element);
    this.resizeObserver.observe(view.element);
    this.scheduleLinks();
    return view;
  }

  removeView(nodeId) {
    const view = this.views.get(nodeId);
    if (!view) return;
    this.resizeObserver.unobserve(view.element);
    view.element.remove();
    this.views.delete(nodeId);
    if (this.selection.delete(nodeId)) this.selectionChanged();
    this.scheduleLinks();
  }

  onLinkChange(link) {
    for (const id of [link.originId, link.targetId]) {
      const view = this.views.get(id);
      if (!view) continue;
      // Primitives and Reroutes take their look from what they connect to.
      if (view.node.type === "PrimitiveNode" || view.node.type === "Reroute") view.render();
      else view.refreshLinked();
    }
    this.scheduleLinks();
  }

  // Groups of a loaded workflow: titled boxes behind the nodes (dragging a title moves what it holds).
  renderGroups() {
    for (const old of this.world.querySelectorAll(".group")) old.remove();
    this.graph.groups.forEach((group, index) => {
      const [x, y, w, h] = group.bounding || [0, 0, 0, 0];
      const title = el("div", { className: "group-title", text: group.title || "Group" });
      if (group.font_size) title.style.fontSize = `${group.font_size}px`;
      const box = el("div", { className: "group", "data-group-index": index }, [title]);
      Object.assign(box.style, { left: `${x}px`, top: `${y}px`, width: `${w}px`, height: `${h}px` });
      if (group.color) box.style.setProperty("--group-colour", group.color);
      this.world.prepend(box);
    });
  }

  // The world rectangle a node covers now.
  rectOf(view) {
    const [x, y] = view.node.pos;
    return [x, y, x + view.element.offsetWidth, y + view.element.offsetHeight];
  }

  // A node that grew (an image arrived, a text got longer) pushes down the nodes it now covers that it did
  // not cover before (overlaps a user made on purpose stay), and those push on in turn.
  makeRoomBelow(grown, oldHeight, gap = 20) {
    const meets = (a, b) => a[0] < b[2] && a[2] > b[0] && a[1] < b[3] && a[3] > b[1];
    const [gx0, gy0, gx1] = this.rectOf(grown);
    const queue = [[grown, [gx0, gy0, gx1, gy0 + oldHeight]]];
    const moved = new Set([grown.node.id]);
    while (queue.length) {
      const [view, before] = queue.shift();
      const now = this.rectOf(view);
      for (const other of this.views.values()) {
        if (moved.has(other.node.id) || other.node.flags.collapsed) continue;
        const rect = this.rectOf(other);
        if (rect[1] < now[1] || !meets(rect, now) || meets(rect, before)) continue;
        moved.add(other.node.id);
        this.graph.moveNode(other.node.id, [other.node.pos[0], Math.round(now[3] + gap)]);
        queue.push([other, rect]);
      }
    }
  }

  // Ctrl+G: a group box around the given nodes (saved in the workflow's `groups`, drawn behind the nodes).
  groupNodes(nodeIds, title = "Group", padding = 12, titleHeight = 34) {
    const views = nodeIds.map((id) => this.views.get(id)).filter(Boolean);
    if (!views.length) return null;
    const rects = views.map((view) => this.rectOf(view));
    const x0 = Math.min(...rects.map((r) => r[0])) - padding;
    const y0 = Math.min(...rects.map((r) => r[1])) - padding - titleHeight;
    const x1 = Math.max(...rects.map((r) => r[2])) + padding;
    const y1 = Math.max(...rects.map((r) => r[3])) + padding;
    const group = { title, bounding: [Math.round(x0), Math.round(y0), Math.round(x1 - x0), Math.round(y1 - y0)],
      color: "#3f789e", font_size: 24, flags: {} };
    this.graph.groups = [...this.graph.groups, group];
    this.graph.emit("groups");
    return group;
  }

  rerenderAll() {
    this.renderGroups();
    for (const view of this.views.values()) view.render();
    const ds = this.graph.extra && this.graph.extra.ds;
    if (ds && typeof ds.scale === "number" && Array.isArray(ds.offset)) {
      // LiteGraph stores screen = (world + offset) * scale; here screen = world * scale + offset.
      this.scale = ds.scale;
      this.offset = [ds.offset[0] * ds.scale, ds.offset[1] * ds.scale];
      this.applyTransform();
    } else {
      requestAnimationFrame(() => this.fitView());
    }
    this.scheduleLinks();
  }

  // The viewport as LiteGraph's `extra.ds`, for saving.
  get viewport() {
    return { scale: this.scale, offset: [this.offset[0] / this.scale, this.offset[1] / this.scale] };
  }

  // ------------------------------------------------------------ viewport

  applyTransform() {
    this.world.style.transform = `translate(${this.offset[0]}px, ${this.offset[1]}px) scale(${this.scale})`;
    this.root.style.setProperty("--grid-size", `${20 * this.scale}px`);
    this.root.style.backgroundPosition = `${this.offset[0]}px ${this.offset[1]}px`;
  }

  toWorld(clientX, clientY) {
    const rect = this.root.getBoundingClientRect();
    return [(clientX - rect.left - this.offset[0]) / this.scale, (clientY - rect.top - this.offset[1]) / this.scale];
  }

  zoomAt(clientX, clientY, factor) {
    const rect = this.root.getBoundingClientRect();
    const next = Math.min(4, Math.max(0.1, this.scale * factor));
    const [wx, wy] = this.toWorld(clientX, clientY);
    this.scale = next;
    this.offset = [clientX - rect.left - wx * next, clientY - rect.top - wy * next];
    this.applyTransform();
  }

  panBy(dx, dy) {
    this.offset = [this.offset[0] + dx, this.offset[1] + dy];
    this.applyTransform();
  }

  fitView(margin = 40) {
    if (!this.views.size) return;
    let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
    for (const view of this.views.values()) {
      const { node, element } = view;
      x0 = Math.min(x0, node.pos[0]);
      y0 = Math.min(y0, node.pos[1]);
      x1 = Math.max(x1, node.pos[0] + element.offsetWidth);
      y1 = Math.max(y1, node.pos[1] + element.offsetHeight);
    }
    for (const { bounding: [x, y, w, h] = [0, 0, 0, 0] } of this.graph.groups) {
      [x0, y0, x1, y1] = [Math.min(x0, x), Math.min(y0, y), Math.max(x1, x + w), Math.max(y1, y + h)];
    }
    const rect = this.root.getBoundingClientRect();
    const scale = Math.min(1.25, (rect.width - 2 * margin) / Math.max(1, x1 - x0), (rect.height - 2 * margin) / Math.max(1, y1 - y0));
    this.scale = Math.max(0.1, scale);
    this.offset = [margin - x0 * this.scale + (rect.width - 2 * margin - (x1 - x0) * this.scale) / 2, margin - y0 * this.scale];
    this.applyTransform();
    this.scheduleLinks();
  }

  // ------------------------------------------------------------ selection

  select(nodeIds, { add = false } = {}) {
    if (!add) for (const id of this.selection) this.views.get(id)?.setSelected(false);
    if (!add) this.selection.clear();
    for (const id of nodeIds) {
      if (!this.views.has(id)) continue;
      this.selection.add(id);
      this.views.get(id).setSelected(true);
    }
    this.selectionChanged();
  }

  deselect(nodeId) {
    if (this.selection.delete(nodeId)) this.views.get(nodeId)?.setSelected(false);
    this.selectionChanged();
  }

  selectionChanged() {
    if (this.hooks.onSelectionChange) this.hooks.onSelectionChange([...this.selection]);
  }

  // ------------------------------------------------------------ links

  scheduleLinks() {
    if (this.linksPending) return;
    this.linksPending = true;
    requestAnimationFrame(() => { this.linksPending = false; this.drawLinks(); });
  }

  // Centre of a socket in world coordinates; a collapsed node's links attach to its title's edge.
  socketPoint(nodeId, direction, key) {
    const view = this.views.get(nodeId);
    if (!view) return null;
    const rootRect = this.root.getBoundingClientRect();
    const socket = view.node.flags.collapsed ? null : view.socketElement(direction, key);
    let x;
    let y;
    if (socket && socket.offsetParent !== null) {
      const rect = socket.getBoundingClientRect();
      x = rect.left + rect.width / 2;
      y = rect.top + rect.height / 2;
    } else {
      const rect = view.titleBar.getBoundingClientRect();
      x = direction === "out" ? rect.right : rect.left;
      y = rect.top + rect.height / 2;
    }
    return [(x - rootRect.left - this.offset[0]) / this.scale, (y - rootRect.top - this.offset[1]) / this.scale];
  }

  static curve([x1, y1], [x2, y2]) {
    const dx = Math.max(40, Math.abs(x2 - x1) * 0.5);
    return `M ${x1} ${y1} C ${x1 + dx} ${y1}, ${x2 - dx} ${y2}, ${x2} ${y2}`;
  }

  drawLinks() {
    const paths = [];
    for (const link of this.graph.links.values()) {
      const from = this.socketPoint(link.originId, "out", link.originSlot);
      const to = this.socketPoint(link.targetId, "in", link.targetInput);
      if (!from || !to) continue;
      const path = document.createElementNS(SVG_NS, "path");
      path.classList.add("link");
      path.setAttribute("d", CanvasView.curve(from, to));
      path.setAttribute("stroke", typeColour(link.type));
      path.dataset.linkId = link.id;
      path.dataset.origin = `${link.originId}:${link.originSlot}`;
      path.dataset.target = `${link.targetId}:${link.targetInput}`;
      paths.push(path);
    }
    this.svg.replaceChildren(...paths, this.dragPath);
  }

  showDragLink(from, to, colour) {
    this.dragPath.setAttribute("d", CanvasView.curve(from, to));
    this.dragPath.setAttribute("stroke", colour);
    this.dragPath.style.display = "";
    if (!this.dragPath.isConnected) this.svg.append(this.dragPath);
  }

  hideDragLink() {
    this.dragPath.style.display = "none";
  }

  // Marks sockets that could take a link being dragged; `test(direction, nodeId, key)` -> bool.
  markCompatible(direction, test) {
    for (const view of this.views.values()) {
      for (const socket of view.element.querySelectorAll(`.socket-${direction}`)) {
        const key = direction === "in" ? socket.dataset.input : Number(socket.dataset.slot);
        const ok = test(view.node.id, key);
        socket.classList.toggle("socket-compatible", ok);
        socket.classList.toggle("socket-incompatible", !ok);
      }
    }
  }

  clearMarks() {
    for (const socket of this.root.querySelectorAll(".socket-compatible, .socket-incompatible")) {
      socket.classList.remove("socket-compatible", "socket-incompatible");
    }
  }

  flash(element, cls = "flash-refused") {
    if (!element) return;
    element.classList.remove(cls);
    void element.offsetWidth; // restart the animation
    element.classList.add(cls);
    setTimeout(() => element.classList.remove(cls), 900);
  }

  // ------------------------------------------------------------ run state, by server node id

  viewFor(serverNodeId) {
    if (serverNodeId === null || serverNodeId === undefined) return null;
    const id = Number(String(serverNodeId).split(":")[0]);
    return this.views.get(id) || null;
  }
}
