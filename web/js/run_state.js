// Live state of a run, from the websocket: the executing node highlighted with a progress bar, cached
// nodes marked, images shown where `executed` says, errors on the failing node.

export class RunMonitor {
  // hooks: {notify(text, kind), onQueueSize(n), onRunChange(promptId | null), onFinished(promptId, outcome),
  //         onProgress(value, max) (null when no node reports steps)}
  constructor(canvas, api, hooks) {
    this.canvas = canvas;
    this.api = api;
    this.hooks = hooks;
    this.promptId = null; // the prompt now running, if we know of one
    this.executing = null; // the NodeView highlighted
    this.startedAt = 0;
    this.previewUrl = null;
    this.started = new Set(); // prompt ids whose execution_start has arrived (it can beat POST's answer)
  }

  clearMarks() {
    for (const view of this.canvas.views.values()) view.clearRunState();
  }

  // Images of a finished prompt's outputs, e.g. from /history after a reconnect.
  showOutputs(outputs) {
    for (const [nodeId, output] of Object.entries(outputs || {})) this.showOutput(nodeId, output);
  }

  showOutput(nodeId, output) {
    const view = this.canvas.viewFor(nodeId);
    if (!view || !output) return;
    if (Array.isArray(output.images)) view.setImages(output.images);
    if (Array.isArray(output.text)) view.setText(output.text.join("\n"));
  }

  setExecuting(nodeId) {
    if (this.hooks.onProgress) this.hooks.onProgress(null);
    if (this.executing) {
      this.executing.setExecuting(false);
      this.executing.setProgress(null);
    }
    this.executing = this.canvas.viewFor(nodeId);
    if (this.executing) this.executing.setExecuting(true);
  }

  handle(message) {
    const { type, data = {} } = message;
    switch (type) {
      case "status": {
        const info = data.status && data.status.exec_info;
        if (info && typeof info.queue_remaining === "number") this.hooks.onQueueSize(info.queue_remaining);
        break;
      }
      case "execution_start":
        this.promptId = data.prompt_id;
        this.started.add(data.prompt_id);
        this.startedAt = data.timestamp || Date.now();
        this.clearMarks();
        this.hooks.onRunChange(this.promptId);
        this.hooks.notify("Running…", "info");
        break;
      case "execution_cached":
        for (const nodeId of data.nodes || []) this.canvas.viewFor(nodeId)?.setCached(true);
        break;
      case "executing":
        this.setExecuting(data.node === null || data.node === undefined ? null : data.display_node ?? data.node);
        if (data.node === null || data.node === undefined) {
          this.hooks.onRunChange(null);
          this.promptId = null;
        } else if (this.executing) {
          this.hooks.notify(`Running ${this.executing.node.title}…`, "info");
        }
        break;
      case "progress": {
        const view = this.canvas.viewFor(data.node) || this.executing;
        if (view) view.setProgress(Number(data.value), Number(data.max));
        if (this.hooks.onProgress) this.hooks.onProgress(Number(data.value), Number(data.max));
        break;
      }
      case "executed":
        this.showOutput(data.display_node ?? data.node, data.output);
        break;
      case "execution_success": {
        const seconds = ((data.timestamp || Date.now()) - this.startedAt) / 1000;
        this.hooks.notify(`Finished in ${seconds.toFixed(2)} s`, "success");
        this.hooks.onFinished(data.prompt_id, "success");
        break;
      }
      case "execution_error": {
        const view = this.canvas.viewFor(data.node_id);
        const text = `${data.exception_type || "Error"}: ${data.exception_message || ""}`.trim();
        if (view) view.setErrors([{ message: text }]);
        this.setExecuting(null);
        this.hooks.notify(`Error in ${view ? view.node.title : `node ${data.node_id}`}: ${text}`, "error");
        this.hooks.onFinished(data.prompt_id, "error");
        break;
      }
      case "execution_interrupted":
        this.setExecuting(null);
        this.hooks.notify("Interrupted", "warning");
        this.hooks.onFinished(data.prompt_id, "interrupted");
        break;
      default:
        break;
    }
  }

  // Binary frames: a latent preview for the node running now, or progress text for a node.
  handleBinary(frame) {
    if (frame.event === "preview") {
      const view = (frame.meta && this.canvas.viewFor(frame.meta.display_node_id || frame.meta.node_id)) || this.executing;
      if (!view) return;
      if (this.previewUrl) URL.revokeObjectURL(this.previewUrl);
      this.previewUrl = URL.createObjectURL(new Blob([frame.bytes], { type: frame.mime }));
      view.setPreviewBlob(this.previewUrl);
    } else if (frame.event === "text") {
      this.canvas.viewFor(frame.nodeId)?.setText(frame.text);
    }
  }
}

// node_errors of a 400 (or 200) answer from POST /prompt, shown on the nodes and inputs they name.
// Returns the errors that belong to no node on the canvas.
export function showNodeErrors(canvas, nodeErrors) {
  const unplaced = [];
  for (const [nodeId, entry] of Object.entries(nodeErrors || {})) {
    const errors = (entry.errors || []).map((error) => ({
      message: error.message,
      details: error.details,
      inputName: error.extra_info ? error.extra_info.input_name : undefined,
    }));
    const view = canvas.viewFor(nodeId);
    if (view) view.setErrors(errors);
    else unplaced.push(...errors.map((error) => `node ${nodeId}: ${error.message}`));
  }
  return unplaced;
}
