// Node definitions: the server's /object_info turned into what the editor draws.
// Each input becomes either a socket (MODEL, IMAGE, ...) or a widget (INT, FLOAT, STRING, BOOLEAN, combo);
// a widget input keeps a socket too, so a link can drive it instead of the widget.

import { ANY, COMBO, PRIMITIVES } from "./types.js";

export const CONTROL_MODES = ["fixed", "increment", "decrement", "randomize", "increment-wrap"];
export const UPLOAD_MARKER = "image"; // the value ComfyUI saves for the upload button in widgets_values

export class InputDef {
  constructor(name, spec, optional) {
    const [head, options] = Array.isArray(spec) ? spec : [spec, {}];
    this.name = name;
    this.optional = optional;
    this.options = options && typeof options === "object" ? options : {};
    this.choices = null;
    if (Array.isArray(head)) {
      this.type = COMBO;
      this.choices = head.slice();
    } else if (head === COMBO) {
      this.type = COMBO;
      this.choices = Array.isArray(this.options.options) ? this.options.options.slice() : [];
    } else {
      this.type = String(head);
    }
    this.label = this.options.display_name || name;
    this.tooltip = this.options.tooltip || "";
    const widgetCapable = this.choices !== null || PRIMITIVES.has(this.type);
    // forceInput: a socket with no widget (and no widgets_values entry).
    this.widget = widgetCapable && !this.options.forceInput ? (this.choices !== null ? COMBO : this.type) : null;
    this.control = this.widget === "INT" && this.options.control_after_generate === true;
    this.upload = this.widget === COMBO && this.options.image_upload === true ? "image" : null;
  }

  // The type a link must carry to feed this input (combos accept combo outputs).
  get linkType() {
    return this.choices !== null ? this.choices : this.type;
  }

  get default() {
    if ("default" in this.options) return this.options.default;
    switch (this.widget) {
      case "INT": return Math.max(0, this.options.min ?? 0);
      case "FLOAT": return Math.max(0, this.options.min ?? 0);
      case "STRING": return "";
      case "BOOLEAN": return false;
      case COMBO: return this.choices.length ? this.choices[0] : "";
      default: return null;
    }
  }
}

export class NodeDef {
  constructor(name, info) {
    this.name = name;
    this.displayName = info.display_name || name;
    this.category = info.category || "sd";
    this.description = info.description || "";
    this.outputNode = Boolean(info.output_node);
    this.deprecated = Boolean(info.deprecated);
    this.experimental = Boolean(info.experimental);
    this.uiOnly = Boolean(info.ui_only);
    this.inputs = [];
    const block = info.input || {};
    const order = info.input_order || {};
    for (const group of ["required", "optional"]) {
      const specs = block[group] || {};
      const names = Array.isArray(order[group]) ? order[group] : Object.keys(specs);
      for (const inputName of names) {
        if (inputName in specs) this.inputs.push(new InputDef(inputName, specs[inputName], group === "optional"));
      }
    }
    const types = info.output || [];
    this.outputs = types.map((type, index) => ({
      type: Array.isArray(type) ? type.slice() : String(type),
      name: (info.output_name && info.output_name[index]) || (Array.isArray(type) ? COMBO : String(type)),
      isList: Boolean(info.output_is_list && info.output_is_list[index]),
      tooltip: (info.output_tooltips && info.output_tooltips[index]) || "",
    }));
  }

  input(name) {
    return this.inputs.find((input) => input.name === name) || null;
  }

  get widgetInputs() {
    return this.inputs.filter((input) => input.widget !== null);
  }

  get socketInputs() {
    return this.inputs.filter((input) => input.widget === null);
  }

  // The entries of a UI workflow's widgets_values, in order: each widget's value, then the seed
  // control mode after a control_after_generate widget, then the upload marker after an upload combo.
  get widgetSlots() {
    const slots = [];
    for (const input of this.widgetInputs) {
      slots.push({ input, role: "value" });
      if (input.control) slots.push({ input, role: "control" });
      if (input.upload) slots.push({ input, role: "upload" });
    }
    return slots;
  }
}

// Editor-only node types that never reach the API prompt (§7.1 of docs/protocol.md).
const UI_ONLY_INFO = {
  Note: {
    display_name: "Note", category: "utils", ui_only: true, output: [],
    input: { required: { text: ["STRING", { multiline: true, default: "" }] } },
  },
  MarkdownNote: {
    display_name: "Markdown Note", category: "utils", ui_only: true, output: [],
    input: { required: { text: ["STRING", { multiline: true, default: "" }] } },
  },
  Reroute: {
    display_name: "Reroute", category: "utils", ui_only: true,
    input: { required: { "": [ANY, {}] } }, output: [ANY], output_name: [""],
  },
  PrimitiveNode: {
    display_name: "Primitive", category: "utils", ui_only: true,
    input: { required: {} }, output: [ANY], output_name: ["connect to widget input"],
  },
};

export const UI_ONLY_TYPES = new Set(Object.keys(UI_ONLY_INFO));

// Parses a whole /object_info answer; editor-only types are added unless the server defines them.
export function parseObjectInfo(objectInfo) {
  const defs = new Map();
  for (const [name, info] of Object.entries(objectInfo || {})) {
    if (info && typeof info === "object") defs.set(name, new NodeDef(name, info));
  }
  for (const [name, info] of Object.entries(UI_ONLY_INFO)) {
    if (!defs.has(name)) defs.set(name, new NodeDef(name, info));
  }
  return defs;
}

// Categories as a sorted list of [category, [defs sorted by display name]].
export function groupByCategory(defs) {
  const groups = new Map();
  for (const def of defs) {
    if (!groups.has(def.category)) groups.set(def.category, []);
    groups.get(def.category).push(def);
  }
  const sorted = [...groups.entries()].sort(([a], [b]) => a.localeCompare(b));
  for (const [, list] of sorted) list.sort((a, b) => a.displayName.localeCompare(b.displayName));
  return sorted;
}
