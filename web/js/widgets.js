// One form control per widget input, built from the input's schema options:
// INT/FLOAT (min, max, step, round), STRING (multiline, placeholder), BOOLEAN (label_on/label_off),
// combos (both the list form and V3's COMBO form), the seed control and the image upload button.

import { CONTROL_MODES } from "./node_defs.js";

function el(tag, attrs = {}, children = []) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "className") element.className = value;
    else if (key === "text") element.textContent = value;
    else element.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) element.append(child);
  return element;
}

export { el };

function decimals(step) {
  const text = String(step);
  return text.includes("e-") ? Number(text.split("e-")[1]) : (text.split(".")[1] || "").length;
}

// The value a number widget keeps for what was typed: integer for INT, clamped to [min, max],
// FLOAT rounded to `round` (or to the precision of `step`; `round: false` keeps it as typed).
export function normaliseNumber(input, raw) {
  let value = typeof raw === "number" ? raw : Number(String(raw).trim());
  if (!Number.isFinite(value)) return null;
  const { min, max, step, round } = input.options;
  if (input.widget === "INT") value = Math.round(value);
  if (typeof min === "number" && value < min) value = min;
  if (typeof max === "number" && value > max) value = max;
  if (input.widget === "FLOAT" && round !== false) {
    const unit = typeof round === "number" && round > 0 ? round : (typeof step === "number" && step > 0 ? step : 0);
    if (unit) value = Number((Math.round(value / unit) * unit).toFixed(decimals(unit)));
  }
  return value;
}

// Returns {element, setValue(value), setDisabled(flag), setChoices(list)}. `onChange(value)` gets the
// normalised value; `onUpload(file)` (image_upload combos) resolves to the stored file name.
export function createWidget(input, value, { onChange, onUpload } = {}) {
  switch (input.widget) {
    case "INT":
    case "FLOAT": return numberWidget(input, value, onChange);
    case "STRING": return stringWidget(input, value, onChange);
    case "BOOLEAN": return booleanWidget(input, value, onChange);
    case "COMBO": return comboWidget(input, value, onChange, onUpload);
    default: throw new Error(`input '${input.name}' has no widget`);
  }
}

function numberWidget(input, value, onChange) {
  const { min, max, step } = input.options;
  const field = el("input", {
    type: "number", className: "widget-input widget-number", name: input.name,
    min: typeof min === "number" ? min : undefined, max: typeof max === "number" ? max : undefined,
    step: typeof step === "number" ? step : (input.widget === "INT" ? 1 : "any"),
    title: input.tooltip || undefined,
  });
  field.value = String(value ?? "");
  field.addEventListener("change", () => {
    const normalised = normaliseNumber(input, field.value);
    if (normalised === null) { field.value = String(field.dataset.last ?? ""); return; }
    field.value = String(normalised);
    field.dataset.last = field.value;
    onChange && onChange(normalised);
  });
  field.dataset.last = field.value;
  const display = input.options.display;
  if (input.widget === "INT" && display === "color") return withColourPicker(field, onChange);
  if (display === "slider" && typeof min === "number" && typeof max === "number") return withSlider(input, field, onChange);
  return {
    element: field,
    setValue(v) { field.value = String(v ?? ""); field.dataset.last = field.value; },
    setDisabled(flag) { field.disabled = flag; },
  };
}

// `display: "color"`: an INT holding 0xRRGGBB, shown as a colour swatch next to the number.
function withColourPicker(field, onChange) {
  const swatch = el("input", { type: "color", className: "widget-colour", title: "pick a colour" });
  const show = () => { swatch.value = `#${(Number(field.value) >>> 0 & 0xffffff).toString(16).padStart(6, "0")}`; };
  show();
  field.addEventListener("change", show);
  swatch.addEventListener("input", () => {
    field.value = String(parseInt(swatch.value.slice(1), 16));
    field.dataset.last = field.value;
    onChange && onChange(Number(field.value));
  });
  return {
    element: el("div", { className: "widget-number-group" }, [swatch, field]),
    setValue(v) { field.value = String(v ?? ""); field.dataset.last = field.value; show(); },
    setDisabled(flag) { field.disabled = flag; swatch.disabled = flag; },
  };
}

// `display: "slider"`: a range slider kept in step with the number field.
function withSlider(input, field, onChange) {
  const { min, max, step } = input.options;
  const slider = el("input", { type: "range", className: "widget-slider", min, max, step: step ?? (input.widget === "INT" ? 1 : "any") });
  slider.value = field.value;
  field.addEventListener("change", () => { slider.value = field.value; });
  slider.addEventListener("input", () => {
    const value = normaliseNumber(input, slider.value);
    field.value = String(value);
    field.dataset.last = field.value;
    onChange && onChange(value);
  });
  return {
    element: el("div", { className: "widget-number-group" }, [slider, field]),
    setValue(v) { field.value = String(v ?? ""); field.dataset.last = field.value; slider.value = field.value; },
    setDisabled(flag) { field.disabled = flag; slider.disabled = flag; },
  };
}

function stringWidget(input, value, onChange) {
  const multiline = Boolean(input.options.multiline);
  const field = multiline
    ? el("textarea", { className: "widget-input widget-text", name: input.name, rows: 4, placeholder: input.options.placeholder || input.name, spellcheck: "false" })
    : el("input", { type: "text", className: "widget-input widget-text", name: input.name, placeholder: input.options.placeholder || undefined });
  field.value = value ?? "";
  if (input.tooltip) field.title = input.tooltip;
  field.addEventListener("input", () => onChange && onChange(field.value));
  // Keys typed into text must not reach the canvas shortcuts (Delete would remove the node); Ctrl+Enter
  // still queues.
  field.addEventListener("keydown", (event) => {
    if (!((event.ctrlKey || event.metaKey) && event.key === "Enter")) event.stopPropagation();
  });
  return {
    element: field,
    setValue(v) { field.value = v ?? ""; },
    setDisabled(flag) { field.disabled = flag; },
  };
}

function booleanWidget(input, value, onChange) {
  const box = el("input", { type: "checkbox", name: input.name, className: "widget-checkbox" });
  const text = el("span", { className: "widget-bool-text" });
  const label = el("label", { className: "widget-input widget-bool", title: input.tooltip || undefined }, [box, text]);
  const show = () => { text.textContent = box.checked ? (input.options.label_on || "true") : (input.options.label_off || "false"); };
  box.checked = Boolean(value);
  show();
  box.addEventListener("change", () => { show(); onChange && onChange(box.checked); });
  return {
    element: label,
    setValue(v) { box.checked = Boolean(v); show(); },
    setDisabled(flag) { box.disabled = flag; },
  };
}

function comboWidget(input, value, onChange, onUpload) {
  const select = el("select", { className: "widget-input widget-combo", name: input.name, title: input.tooltip || undefined });
  let choices = input.choices.slice();
  const fill = (current) => {
    select.replaceChildren();
    for (const choice of choices) select.append(el("option", { value: String(choice), text: String(choice) }));
    // A value the server does not offer (a model file that is not installed) stays visible, flagged.
    const known = choices.some((choice) => String(choice) === String(current));
    if (!known && current !== undefined && current !== null && current !== "") {
      select.append(el("option", { value: String(current), text: `${current} (missing)`, className: "missing-choice" }));
    }
    select.value = current === undefined || current === null ? "" : String(current);
    select.classList.toggle("widget-missing-value", !known && current !== "" && current != null);
  };
  const typed = (text) => choices.find((choice) => String(choice) === text) ?? text;
  fill(value);
  select.addEventListener("change", () => {
    select.classList.toggle("widget-missing-value", !choices.some((c) => String(c) === select.value));
    onChange && onChange(typed(select.value));
  });
  const widget = {
    element: select,
    setValue(v) { fill(v); },
    setDisabled(flag) { select.disabled = flag; if (widget.uploadButton) widget.uploadButton.disabled = flag; },
    setChoices(list, current) { choices = list.slice(); fill(current); },
  };
  if (input.upload && onUpload) {
    const picker = el("input", { type: "file", accept: "image/*", className: "upload-picker", name: `${input.name}-upload` });
    const button = el("button", { type: "button", className: "upload-button", text: "upload image…", title: "Upload an image to the input folder" });
    button.addEventListener("click", () => picker.click());
    picker.addEventListener("change", async () => {
      const file = picker.files && picker.files[0];
      if (!file) return;
      button.disabled = true;
      button.textContent = "uploading…";
      try {
        const name = await onUpload(file);
        if (!choices.includes(name)) choices.push(name);
        fill(name);
        onChange && onChange(name);
      } finally {
        button.disabled = false;
        button.textContent = "upload image…";
        picker.value = "";
      }
    });
    widget.uploadButton = button;
    widget.element = el("div", { className: "widget-upload" }, [select, button, picker]);
  }
  return widget;
}

export function createControlSelect(mode, onChange) {
  const select = el("select", { className: "widget-control", title: "control after generate" });
  for (const option of CONTROL_MODES) select.append(el("option", { value: option, text: option }));
  select.value = mode || "fixed";
  select.addEventListener("change", () => onChange && onChange(select.value));
  return select;
}
