// The DOM of one node: a title bar, socket rows (inputs left, outputs right), one row per widget
// (with a small socket so a link can drive it), image previews, a progress bar and error texts.

import { createControlSelect, createWidget, el } from "./widgets.js";
import { primitiveTargetDef } from "./api_prompt.js";
import { typeColour, typeLabel } from "./types.js";

const MODE_CLASSES = { 2: "node-muted", 4: "node-bypassed" };

export class NodeView {
  // hooks: {onUpload(file) -> Promise<name>, imageUrl(image) -> url}
  constructor(graph, node, hooks) {
    this.graph = graph;
    this.node = node;
    this.hooks = hooks;
    this.widgets = new Map();
    this.element = el("div", { className: "node", "data-node-id": node.id, "data-type": node.type });
    this.render();
  }

  render() {
    const { node } = this;
    this.widgets.clear();
    this.element.replaceChildren();
    this.titleText = el("span", { className: "node-title-text", text: node.title });
    this.badge = el("span", { className: "node-badge" });
    this.collapseToggle = el("span", { className: "node-collapse", title: "collapse", text: node.flags.collapsed ? "▸" : "▾" });
    this.titleBar = el("div", { className: "node-title" }, [this.collapseToggle, this.titleText, this.badge]);
    this.element.append(this.titleBar);
    this.body = el("div", { className: "node-body" });
    this.element.append(this.body);
    if (node.subgraph) {
      const open = el("button", { type: "button", className: "node-open-subgraph", text: "open ⤵", title: "Show the nodes inside this subgraph" });
      open.addEventListener("click", () => this.hooks.openSubgraph && this.hooks.openSubgraph(node.id));
      this.body.append(el("div", { className: "node-subgraph-text" }, [
        el("span", { text: `subgraph · ${(node.subgraph.nodes || []).length} nodes ` }), open]));
    } else if (node.isMissing) this.body.append(el("div", { className: "node-missing-text", text: `type '${node.type}' is not installed` }));
    this.body.append(this.renderSockets());
    this.body.append(this.renderWidgets());
    this.preview = el("div", { className: "node-preview" });
    this.progress = el("div", { className: "node-progress" }, [el("div", { className: "node-progress-bar" })]);
    this.message = el("div", { className: "node-message" });
    this.body.append(this.preview, this.progress, this.message);
    this.element.append(el("div", { className: "node-resize", title: "resize" }));
    this.refreshFrame();
    this.refreshLinked();
    if (node.def && node.def.inputs.some((input) => input.upload)) this.showInputImage();
  }

  renderSockets() {
    const inputs = el("div", { className: "node-inputs" });
    for (const input of this.node.slotInputs.filter((slot) => !slot.widget)) {
      inputs.append(el("div", { className: "slot-row", "data-input": input.name }, [
        this.socket("in", input.type, { "data-input": input.name }),
        el("span", { className: "slot-label", text: (input.def && input.def.label) || input.name || typeLabel(input.type) }),
      ]));
    }
    const outputs = el("div", { className: "node-outputs" });
    this.node.outputs.forEach((output, slot) => {
      const type = this.graph.outputType(this.node.id, slot);
      outputs.append(el("div", { className: "slot-row slot-row-out", "data-output": slot }, [
        el("span", { className: "slot-label", text: output.name, title: output.tooltip || typeLabel(type) }),
        this.socket("out", type, { "data-slot": slot }),
      ]));
    });
    return el("div", { className: "node-slots" }, [inputs, outputs]);
  }

  socket(direction, type, attrs) {
    const dot = el("span", { className: `socket socket-${direction}`, "data-type": typeLabel(type), title: typeLabel(type), ...attrs });
    dot.style.setProperty("--socket-colour", typeColour(type));
    return dot;
  }

  renderWidgets() {
    const container = el("div", { className: "node-widgets" });
    const { node, graph } = this;
    if (node.type === "PrimitiveNode") return this.renderPrimitiveWidget(container);
    for (const input of node.def ? node.def.widgetInputs : []) {
      const widget = createWidget(input, node.values.get(input.name), {
        onChange: (value) => {
          graph.setValue(node.id, input.name, value);
          if (input.upload) this.showInputImage();
        },
        onUpload: (file) => this.hooks.onUpload(file).then((name) => { this.rememberUpload(name); return name; }),
      });
      this.widgets.set(input.name, widget);
      const row = el("div", { className: "widget-row", "data-input": input.name }, [
        this.socket("in", input.linkType, { "data-input": input.name, "data-widget": "true" }),
        el("label", { className: "widget-label", text: input.label, title: input.tooltip || input.name }),
        widget.element,
      ]);
      if (input.control) {
        const control = createControlSelect(node.controls.get(input.name), (mode) => graph.setControl(node.id, input.name, mode));
        control.name = `${input.name}-control`;
        row.append(control);
        this.widgets.get(input.name).control = control;
      }
      row.append(el("div", { className: "input-error-text" }));
      container.append(row);
    }
    return container;
  }

  // A Primitive shows the widget of the input it drives.
  renderPrimitiveWidget(container) {
    const { node, graph } = this;
    const def = primitiveTargetDef(graph, node);
    if (!def) {
      container.append(el("div", { className: "node-hint", text: "connect to a widget input" }));
      return container;
    }
    if (!node.values.has("value") || node.values.get("value") === undefined) node.values.set("value", def.default);
    const widget = createWidget(def, node.values.get("value"), { onChange: (value) => graph.setValue(node.id, "value", value) });
    this.widgets.set("value", widget);
    const row = el("div", { className: "widget-row", "data-input": "value" }, [
      el("label", { className: "widget-label", text: def.label }), widget.element]);
    if (def.widget === "INT" || def.widget === "FLOAT") {
      if (!node.controls.has("value")) node.controls.set("value", "fixed");
      row.append(createControlSelect(node.controls.get("value"), (mode) => graph.setControl(node.id, "value", mode)));
    }
    container.append(row);
    return container;
  }

  // An uploaded file becomes a choice of every upload combo (the server lists it from now on too).
  rememberUpload(name) {
    for (const input of this.node.def.inputs) {
      if (input.upload && !input.choices.includes(name)) input.choices.push(name);
    }
  }

  // Load-image nodes show the chosen input file.
  showInputImage() {
    const input = this.node.def.inputs.find((candidate) => candidate.upload);
    const name = this.node.values.get(input.name);
    if (!name || this.hasRunImages) return;
    const match = /^(.*) \[(input|output|temp)\]$/.exec(String(name));
    const [filename, type] = match ? [match[1], match[2]] : [String(name), "input"];
    const slash = filename.lastIndexOf("/");
    const image = { filename: filename.slice(slash + 1), subfolder: slash > 0 ? filename.slice(0, slash) : "", type };
    this.preview.replaceChildren(el("img", { className: "node-image node-input-image", src: this.hooks.imageUrl(image), alt: filename, draggable: "false" }));
  }

  // Size, position, mode and selection classes.
  refreshFrame() {
    const { node, element } = this;
    element.style.left = `${node.pos[0]}px`;
    element.style.top = `${node.pos[1]}px`;
    if (node.size && node.size[0]) element.style.width = `${Math.max(160, node.size[0])}px`;
    for (const cls of Object.values(MODE_CLASSES)) element.classList.remove(cls);
    if (MODE_CLASSES[node.mode]) element.classList.add(MODE_CLASSES[node.mode]);
    element.classList.toggle("node-collapsed", Boolean(node.flags.collapsed));
    element.classList.toggle("node-missing", node.isMissing && !node.subgraph);
    element.classList.toggle("node-subgraph", Boolean(node.subgraph));
    element.classList.toggle("node-output", Boolean(node.def && node.def.outputNode));
    this.titleText.textContent = node.title;
    this.collapseToggle.textContent = node.flags.collapsed ? "▸" : "▾";
    if (node.color) this.titleBar.style.background = node.color; else this.titleBar.style.removeProperty("background");
    if (node.bgcolor) this.element.style.setProperty("--node-bg", node.bgcolor); else this.element.style.removeProperty("--node-bg");
  }

  // A linked widget is driven by its link: greyed out, its socket filled.
  refreshLinked() {
    for (const socket of this.element.querySelectorAll(".socket-in")) {
      socket.classList.toggle("socket-linked", this.node.inputLinks.has(socket.dataset.input));
    }
    for (const [name, widget] of this.widgets) {
      if (name === "value" && this.node.type === "PrimitiveNode") continue;
      const linked = this.node.inputLinks.has(name);
      widget.setDisabled(linked);
      if (widget.control) widget.control.disabled = linked;
      const row = this.element.querySelector(`.widget-row[data-input="${CSS.escape(name)}"]`);
      if (row) row.classList.toggle("widget-linked", linked);
    }
    for (const socket of this.element.querySelectorAll(".socket-out")) {
      const links = this.node.outputLinks[Number(socket.dataset.slot)];
      socket.classList.toggle("socket-linked", Boolean(links && links.size));
    }
  }

  refreshValue(inputName) {
    const widget = this.widgets.get(inputName);
    // The widget being typed into already shows its value; rewriting it would move the caret.
    if (!widget || widget.element.contains(document.activeElement)) return;
    widget.setValue(this.node.values.get(inputName));
    if (widget.control) widget.control.value = this.node.controls.get(inputName) || "fixed";
    const def = this.node.inputDef(inputName);
    if (def && def.upload) this.showInputImage();
  }

  setSelected(flag) {
    this.element.classList.toggle("selected", flag);
  }

  // ------------------------------------------------------------ run state

  setExecuting(flag) {
    this.element.classList.toggle("node-executing", flag);
    if (flag) this.element.classList.remove("node-cached");
  }

  setCached(flag) {
    this.element.classList.toggle("node-cached", flag);
    this.badge.textContent = flag ? "cached" : this.badge.textContent === "cached" ? "" : this.badge.textContent;
  }

  setProgress(value, max) {
    const bar = this.progress.firstChild;
    if (value === null) {
      this.progress.classList.remove("active");
      bar.style.width = "0%";
      this.progress.removeAttribute("data-value");
      return;
    }
    const fraction = max > 0 ? Math.min(1, value / max) : 0;
    this.progress.classList.add("active");
    bar.style.width = `${(fraction * 100).toFixed(1)}%`;
    this.progress.dataset.value = `${value}/${max}`;
    this.progress.title = `${value} / ${max}`;
  }

  setImages(images) {
    this.hasRunImages = images.length > 0;
    this.preview.replaceChildren(...images.map((image) => {
      const img = el("img", { className: "node-image node-output-image", src: this.hooks.imageUrl(image, true), alt: image.filename, draggable: "false" });
      img.addEventListener("load", () => img.classList.toggle("small-image", img.naturalWidth < 256));
      img.dataset.filename = image.filename;
      img.dataset.imageType = image.type || "output";
      const link = el("a", { href: this.hooks.imageUrl(image), target: "_blank", rel: "noopener", className: "node-image-link" }, [img]);
      return link;
    }));
  }

  setPreviewBlob(url) {
    let img = this.preview.querySelector(".node-live-preview");
    if (!img) {
      img = el("img", { className: "node-image node-live-preview", alt: "preview" });
      this.preview.replaceChildren(img);
    }
    img.src = url;
  }

  setText(text) {
    this.message.textContent = text || "";
    this.message.classList.toggle("active", Boolean(text));
    this.message.classList.remove("node-message-error");
  }

  // errors: [{message, details, inputName}]
  setErrors(errors) {
    this.clearErrors();
    if (!errors.length) return;
    this.element.classList.add("node-error");
    const general = [];
    for (const error of errors) {
      const text = error.details ? `${error.message}: ${error.details}` : error.message;
      const row = error.inputName !== undefined && error.inputName !== null
        ? this.element.querySelector(`:is(.slot-row, .widget-row)[data-input="${CSS.escape(error.inputName)}"]`) : null;
      if (row) {
        row.classList.add("input-error");
        row.title = text;
        const slot = row.querySelector(".input-error-text") || row.appendChild(el("div", { className: "input-error-text" }));
        slot.textContent = text;
      } else {
        general.push(text);
      }
    }
    if (general.length) {
      this.message.textContent = general.join("\n");
      this.message.classList.add("active", "node-message-error");
    }
  }

  clearErrors() {
    this.element.classList.remove("node-error");
    for (const row of this.element.querySelectorAll(".input-error")) {
      row.classList.remove("input-error");
      row.removeAttribute("title");
      const slot = row.querySelector(".input-error-text");
      if (slot) slot.textContent = "";
    }
    if (this.message.classList.contains("node-message-error")) this.setText("");
  }

  clearRunState() {
    this.setExecuting(false);
    this.setCached(false);
    this.setProgress(null);
    this.clearErrors();
  }

  // Where a link attaches: the socket's centre, or the title's edge when the node is collapsed.
  socketElement(direction, key) {
    const selector = direction === "out" ? `.socket-out[data-slot="${key}"]` : `.socket-in[data-input="${CSS.escape(String(key))}"]`;
    return this.element.querySelector(selector);
  }
}
