// Undo and redo: snapshots of the serialized graph (UI format, without the viewport). Every change of the
// graph schedules a snapshot; changes that come in a burst (a drag, typing) become one step. Undo and
// redo take any pending snapshot first, then load the previous or next one in place.

import { loadUiWorkflow, serializeWorkflow } from "./ui_format.js";

export class UndoHistory {
  constructor(graph, canvas, { limit = 100, settleMs = 300 } = {}) {
    this.graph = graph;
    this.canvas = canvas;
    this.limit = limit;
    this.settleMs = settleMs;
    this.past = []; // snapshots before the current one
    this.future = [];
    this.current = null;
    this.restoring = false;
    this.timer = null;
    graph.onChange(() => { if (!this.restoring) this.schedule(); });
  }

  snapshot() {
    const workflow = serializeWorkflow(this.graph);
    delete workflow.extra.ds;
    return JSON.stringify(workflow);
  }

  // Forget everything: the graph as it is now is the first step (after loading a workflow at start).
  reset() {
    clearTimeout(this.timer);
    this.timer = null;
    this.past = [];
    this.future = [];
    this.current = this.snapshot();
  }

  // The whole state, to put aside while a subgraph is open and take back after.
  save() {
    if (this.timer) this.commit();
    return { past: [...this.past], future: [...this.future], current: this.current };
  }

  load(state) {
    clearTimeout(this.timer);
    this.timer = null;
    ({ past: this.past, future: this.future, current: this.current } = { past: [...state.past], future: [...state.future], current: state.current });
  }

  schedule() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.commit(), this.settleMs);
  }

  commit() {
    clearTimeout(this.timer);
    this.timer = null;
    const next = this.snapshot();
    if (next === this.current) return;
    if (this.current !== null) this.past.push(this.current);
    if (this.past.length > this.limit) this.past.shift();
    this.future = [];
    this.current = next;
  }

  get canUndo() { if (this.timer) this.commit(); return this.past.length > 0; }
  get canRedo() { if (this.timer) this.commit(); return this.future.length > 0; }

  undo() {
    if (!this.canUndo) return false;
    this.future.push(this.current);
    this.restore(this.past.pop());
    return true;
  }

  redo() {
    if (!this.canRedo) return false;
    this.past.push(this.current);
    this.restore(this.future.pop());
    return true;
  }

  restore(text) {
    const workflow = JSON.parse(text);
    workflow.extra = { ...workflow.extra, ds: this.canvas.viewport }; // the view stays where it is
    this.restoring = true;
    try {
      loadUiWorkflow(this.graph, workflow);
    } finally {
      this.restoring = false;
    }
    this.current = text;
  }
}
