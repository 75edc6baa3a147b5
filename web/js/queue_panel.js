// The queue and history panel: what is running and waiting (cancel each, or clear), and the recent
// history with status and thumbnails (load a past workflow back, or delete the entry).

import { el } from "./widgets.js";

export class QueuePanel {
  // hooks: {loadFromHistory(entry), notify(text, kind)}
  constructor(element, api, hooks) {
    this.element = element;
    this.api = api;
    this.hooks = hooks;
    this.running = el("div", { className: "queue-list", id: "queue-running" });
    this.pending = el("div", { className: "queue-list", id: "queue-pending" });
    this.history = el("div", { className: "queue-list", id: "history-list" });
    const button = (text, id, action) => {
      const b = el("button", { type: "button", id, text });
      b.addEventListener("click", action);
      return b;
    };
    element.append(
      el("div", { className: "panel-header" }, [el("h2", { text: "Queue" }),
        button("Clear queue", "clear-queue-button", () => this.act(this.api.clearQueue()))]),
      el("h3", { text: "Running" }), this.running,
      el("h3", { text: "Pending" }), this.pending,
      el("div", { className: "panel-header" }, [el("h2", { text: "History" }),
        button("Refresh", "refresh-panel-button", () => this.refresh()),
        button("Clear history", "clear-history-button", () => this.act(this.api.clearHistory()))]),
      this.history,
    );
    this.refreshTimer = null;
  }

  get visible() {
    return !this.element.hidden;
  }

  async act(promise) {
    try { await promise; } catch (error) { this.hooks.notify(String(error.message || error), "error"); }
    await this.refresh();
  }

  // Several websocket status messages in a burst cause one refresh.
  scheduleRefresh() {
    if (!this.visible || this.refreshTimer) return;
    this.refreshTimer = setTimeout(() => { this.refreshTimer = null; this.refresh(); }, 150);
  }

  async refresh() {
    let queue;
    let history;
    try {
      [queue, history] = await Promise.all([this.api.getQueue(), this.api.getHistory(30)]);
    } catch (error) {
      this.hooks.notify(`Could not read the queue: ${error.message}`, "error");
      return;
    }
    this.renderQueue(this.running, queue.queue_running || [], true);
    const pending = (queue.queue_pending || []).slice().sort((a, b) => a[0] - b[0]);
    this.renderQueue(this.pending, pending, false);
    this.renderHistory(history || {});
  }

  renderQueue(container, items, running) {
    container.replaceChildren();
    if (!items.length) container.append(el("div", { className: "queue-empty", text: running ? "nothing running" : "nothing waiting" }));
    for (const item of items) {
      const [number, promptId, prompt] = item;
      const cancel = el("button", { type: "button", className: "queue-cancel", text: running ? "interrupt" : "cancel" });
      cancel.addEventListener("click", () => this.act(running ? this.api.interrupt(promptId) : this.api.deleteQueued([promptId])));
      container.append(el("div", { className: "queue-item", "data-prompt-id": promptId }, [
        el("span", { className: "queue-number", text: `#${number}` }),
        el("span", { className: "queue-id", text: promptId.slice(0, 8), title: promptId }),
        el("span", { className: "queue-size", text: `${Object.keys(prompt || {}).length} nodes` }),
        cancel,
      ]));
    }
  }

  renderHistory(history) {
    this.history.replaceChildren();
    const entries = Object.entries(history).reverse();
    if (!entries.length) this.history.append(el("div", { className: "queue-empty", text: "no history yet" }));
    for (const [promptId, entry] of entries) {
      const status = (entry.status && entry.status.status_str) || "unknown";
      const interrupted = entry.status && (entry.status.messages || []).some(([type]) => type === "execution_interrupted");
      const thumbs = el("div", { className: "history-thumbs" });
      for (const output of Object.values(entry.outputs || {})) {
        for (const image of (output.images || []).slice(0, 4)) {
          const url = this.api.viewUrl(image);
          thumbs.append(el("a", { href: url, target: "_blank", rel: "noopener" }, [el("img", { src: url, alt: image.filename, className: "history-thumb" })]));
        }
      }
      const load = el("button", { type: "button", className: "history-load", text: "load" });
      load.addEventListener("click", () => this.hooks.loadFromHistory(entry));
      const remove = el("button", { type: "button", className: "history-delete", text: "delete" });
      remove.addEventListener("click", () => this.act(this.api.deleteHistory([promptId])));
      const label = interrupted ? "interrupted" : status;
      this.history.append(el("div", { className: `history-item history-${label}`, "data-prompt-id": promptId }, [
        el("div", { className: "history-line" }, [
          el("span", { className: "history-status", text: label }),
          el("span", { className: "queue-id", text: promptId.slice(0, 8), title: promptId }),
          load, remove]),
        thumbs,
      ]));
    }
  }
}
