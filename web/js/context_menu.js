// A small right-click menu: a list of {label, action, disabled?} (null draws a separator).

import { el } from "./widgets.js";

export class ContextMenu {
  constructor(host) {
    this.host = host;
    this.element = el("div", { className: "context-menu", hidden: true });
    host.append(this.element);
    // The menu lives on the canvas: its clicks must not start a canvas gesture (which captures the pointer).
    this.element.addEventListener("pointerdown", (event) => event.stopPropagation());
    document.addEventListener("pointerdown", (event) => {
      if (!this.element.hidden && !this.element.contains(event.target)) this.close();
    }, true);
    document.addEventListener("keydown", (event) => { if (event.key === "Escape") this.close(); });
  }

  open(clientX, clientY, items) {
    this.element.replaceChildren();
    for (const item of items) {
      if (item === null) { this.element.append(el("div", { className: "context-separator" })); continue; }
      const entry = el("div", { className: "context-item", text: item.label, "data-action": item.id || item.label });
      if (item.disabled) entry.classList.add("disabled");
      else entry.addEventListener("click", () => { this.close(); item.action(); });
      this.element.append(entry);
    }
    const rect = this.host.getBoundingClientRect();
    this.element.hidden = false;
    this.element.style.left = `${Math.min(clientX - rect.left, rect.width - this.element.offsetWidth - 4)}px`;
    this.element.style.top = `${Math.min(clientY - rect.top, rect.height - this.element.offsetHeight - 4)}px`;
  }

  close() {
    this.element.hidden = true;
  }
}
