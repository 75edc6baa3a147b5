// The node search: a floating box with a text field and the node catalogue grouped by category.
// Typing filters (every word must match the name, display name or category); arrows and Enter pick.

import { groupByCategory } from "./node_defs.js";
import { typesCompatible } from "./types.js";
import { el } from "./widgets.js";

export class SearchMenu {
  constructor(host, defs) {
    this.host = host;
    this.defs = defs;
    this.element = el("div", { className: "search-menu", hidden: true });
    this.field = el("input", { type: "search", className: "search-input", placeholder: "Search nodes…", autocomplete: "off", spellcheck: "false" });
    this.results = el("div", { className: "search-results" });
    this.element.append(this.field, this.results);
    host.append(this.element);
    this.items = [];
    this.active = 0;
    this.field.addEventListener("input", () => this.refresh());
    this.field.addEventListener("keydown", (event) => this.onKey(event));
    this.element.addEventListener("pointerdown", (event) => event.stopPropagation());
    this.element.addEventListener("dblclick", (event) => event.stopPropagation());
    document.addEventListener("pointerdown", (event) => {
      if (!this.element.hidden && !this.element.contains(event.target)) this.close();
    }, true);
  }

  get isOpen() {
    return !this.element.hidden;
  }

  setDefs(defs) {
    this.defs = defs;
  }

  // filter: {kind: "input"|"output", type} keeps nodes with a matching socket. onPick(def) is called
  // with the chosen definition.
  open({ clientX, clientY, filter = null, onPick }) {
    this.filter = filter;
    this.onPick = onPick;
    const hostRect = this.host.getBoundingClientRect();
    const left = Math.min(clientX - hostRect.left, hostRect.width - 340);
    const top = Math.min(clientY - hostRect.top, hostRect.height - 420);
    this.element.style.left = `${Math.max(4, left)}px`;
    this.element.style.top = `${Math.max(4, top)}px`;
    this.element.hidden = false;
    this.field.value = "";
    this.refresh();
    this.field.focus();
  }

  close() {
    this.element.hidden = true;
    this.onPick = null;
  }

  candidates() {
    const all = [...this.defs.values()].filter((def) => !def.deprecated);
    if (!this.filter) return all;
    const { kind, type } = this.filter;
    return all.filter((def) => (kind === "input"
      ? def.inputs.some((input) => typesCompatible(type, input.linkType))
      : def.outputs.some((output) => typesCompatible(output.type, type))) && def.name !== "PrimitiveNode");
  }

  refresh() {
    const words = this.field.value.toLowerCase().split(/\s+/).filter(Boolean);
    const query = words.join(" ");
    const matches = this.candidates().filter((def) => {
      const haystack = `${def.displayName} ${def.name} ${def.category}`.toLowerCase();
      return words.every((word) => haystack.includes(word));
    });
    const rank = (def) => {
      const name = def.displayName.toLowerCase();
      if (!query) return 0;
      if (name === query || def.name.toLowerCase() === query) return 0;
      if (name.startsWith(query) || def.name.toLowerCase().startsWith(query)) return 1;
      return 2;
    };
    this.results.replaceChildren();
    this.items = [];
    let groups = groupByCategory(matches);
    if (query) {
      // Best matches first: order the categories by their best item.
      groups = groups.map(([category, list]) => [category, list.sort((a, b) => rank(a) - rank(b))])
        .sort((a, b) => rank(a[1][0]) - rank(b[1][0]));
    }
    for (const [category, list] of groups) {
      const group = el("div", { className: "search-category", "data-category": category }, [
        el("div", { className: "search-category-title", text: category })]);
      for (const def of list) {
        const item = el("div", { className: "search-item", "data-type": def.name, title: def.description || def.name }, [
          el("span", { className: "search-item-name", text: def.displayName }),
          el("span", { className: "search-item-type", text: def.name !== def.displayName ? def.name : "" }),
        ]);
        item.addEventListener("click", () => this.pick(def));
        item.addEventListener("pointermove", () => this.highlight(this.items.indexOf(item)));
        this.items.push(item);
        group.append(item);
      }
      this.results.append(group);
    }
    if (!this.items.length) this.results.append(el("div", { className: "search-empty", text: "No node matches." }));
    this.highlight(0);
  }

  highlight(index) {
    if (!this.items.length) return;
    this.active = Math.max(0, Math.min(index, this.items.length - 1));
    this.items.forEach((item, i) => item.classList.toggle("active", i === this.active));
    this.items[this.active].scrollIntoView({ block: "nearest" });
  }

  onKey(event) {
    event.stopPropagation();
    if (event.key === "ArrowDown") { this.highlight(this.active + 1); event.preventDefault(); }
    else if (event.key === "ArrowUp") { this.highlight(this.active - 1); event.preventDefault(); }
    else if (event.key === "Enter") {
      const item = this.items[this.active];
      if (item) this.pick(this.defs.get(item.dataset.type));
    } else if (event.key === "Escape") this.close();
  }

  pick(def) {
    const onPick = this.onPick;
    this.close();
    if (onPick && def) onPick(def);
  }
}
