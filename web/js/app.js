// The editor: builds the pieces (server API, graph, canvas, search, run monitor, queue panel) and wires
// the toolbar, queueing and workflow loading together. Exposed as `window.fluxgraph` for debugging.

import { ApiError, EventSocket, ServerApi } from "./api.js";
import { applyControlsAfterQueue, graphToPrompt } from "./api_prompt.js";
import { CanvasView } from "./canvas_view.js";
import { ContextMenu } from "./context_menu.js";
import { downloadJson, jsonName, readWorkflowFile } from "./files.js";
import { Graph } from "./graph.js";
import { parseObjectInfo } from "./node_defs.js";
import { QueuePanel } from "./queue_panel.js";
import { UndoHistory } from "./history.js";
import { RunMonitor, showNodeErrors } from "./run_state.js";
import { SearchMenu } from "./search_menu.js";
import { attachShortcuts } from "./shortcuts.js";
import { SubgraphNavigator, usesSubgraphs } from "./subgraphs.js";
import { detectFormat, loadApiPrompt, loadUiWorkflow, serializeWorkflow } from "./ui_format.js";

const AUTOSAVE_KEY = "fluxgraph.workflow";

function clientIdentity() {
  let id = sessionStorage.getItem("fluxgraph.clientId");
  if (!id) {
    id = crypto.randomUUID().replaceAll("-", "");
    sessionStorage.setItem("fluxgraph.clientId", id);
  }
  return id;
}

function authToken() {
  const fromUrl = new URLSearchParams(window.location.search).get("token");
  if (fromUrl) sessionStorage.setItem("fluxgraph.token", fromUrl);
  return fromUrl || sessionStorage.getItem("fluxgraph.token");
}

export class Editor {
  constructor(defs, api) {
    this.api = api;
    this.defs = defs;
    this.clientId = clientIdentity();
    this.workflowName = "workflow";
    this.graph = new Graph(defs);
    this.$ = (id) => document.getElementById(id);
    const canvasRoot = this.$("canvas");
    this.canvas = new CanvasView(canvasRoot, this.graph, {
      onUpload: (file) => this.api.uploadImage(file).then((answer) => (answer.subfolder ? `${answer.subfolder}/${answer.name}` : answer.name)),
      imageUrl: (image, bust) => this.api.viewUrl(image, { bust: bust ? String(Date.now()) : "" }),
      openSearch: (options) => this.openSearch(options),
      notify: (text, kind) => this.notify(text, kind),
      openContextMenu: (options) => this.shortcuts.openContextMenu(options),
      openSubgraph: (nodeId) => this.subgraphs.open(nodeId),
    });
    this.history = new UndoHistory(this.graph, this.canvas);
    this.subgraphs = new SubgraphNavigator(this, this.$("subgraph-bar"));
    this.search = new SearchMenu(canvasRoot, defs);
    this.contextMenu = new ContextMenu(canvasRoot);
    this.monitor = new RunMonitor(this.canvas, api, {
      notify: (text, kind) => this.notify(text, kind),
      onQueueSize: (n) => { this.$("queue-size").textContent = String(n); this.panel.scheduleRefresh(); },
      onRunChange: (promptId) => { document.body.classList.toggle("running", Boolean(promptId)); },
      onFinished: () => this.panel.scheduleRefresh(),
      onProgress: (value, max) => this.showProgress(value, max),
    });
    this.panel = new QueuePanel(this.$("side-panel"), api, {
      notify: (text, kind) => this.notify(text, kind),
      loadFromHistory: (entry) => this.loadFromHistory(entry),
    });
    this.shortcuts = attachShortcuts(this);
    this.bindToolbar();
    this.bindDrop(canvasRoot);
    this.graph.onChange(() => this.scheduleAutosave());
  }

  // ------------------------------------------------------------ messages

  notify(text, kind = "info") {
    const status = this.$("status-text");
    status.textContent = text;
    status.className = `status-${kind}`;
    if (kind === "error" || kind === "warning") {
      const toast = document.createElement("div");
      toast.className = `toast toast-${kind}`;
      toast.textContent = text;
      this.$("toasts").append(toast);
      setTimeout(() => toast.remove(), 8000);
    }
  }

  // The step of the node running now, in the bar under the toolbar and in the tab's title ("[3/20] fluxgraph").
  showProgress(value, max) {
    const bar = this.$("global-progress");
    this.baseTitle = this.baseTitle || document.title;
    if (value === null || value === undefined) {
      bar.classList.remove("active");
      bar.firstElementChild.style.width = "0%";
      bar.removeAttribute("data-value");
      document.title = this.baseTitle;
      return;
    }
    bar.classList.add("active");
    bar.firstElementChild.style.width = `${(max > 0 ? Math.min(1, value / max) * 100 : 0).toFixed(1)}%`;
    bar.dataset.value = `${value}/${max}`;
    document.title = `[${value}/${max}] ${this.baseTitle}`;
  }

  // ------------------------------------------------------------ undo, definitions

  undo() {
    if (!this.history.undo()) { this.notify("Nothing to undo", "info"); return false; }
    this.notify("Undone", "info");
    return true;
  }

  redo() {
    if (!this.history.redo()) { this.notify("Nothing to redo", "info"); return false; }
    this.notify("Redone", "info");
    return true;
  }

  // R: node definitions (and so the model and file lists of every combo) read again from /object_info.
  async refreshDefinitions() {
    let fresh;
    try {
      fresh = parseObjectInfo(await this.api.objectInfo());
    } catch (error) {
      this.notify(`Could not refresh the node definitions: ${error.message}`, "error");
      return false;
    }
    this.defs.clear();
    for (const [name, def] of fresh) this.defs.set(name, def);
    for (const node of this.graph.nodes.values()) if (node.def && this.defs.has(node.type)) node.def = this.defs.get(node.type);
    this.graph.emit("refresh", { nodeIds: [...this.graph.nodes.keys()] });
    this.notify(`Refreshed the node definitions and model lists (${this.defs.size} node types)`, "info");
    return true;
  }

  // ------------------------------------------------------------ nodes

  openSearch({ clientX, clientY, worldPos, filter = null, onPick }) {
    this.search.open({
      clientX, clientY, filter,
      onPick: (def) => {
        const node = this.graph.addNode(def.name, { pos: worldPos.map(Math.round) });
        this.canvas.select([node.id]);
        if (onPick) onPick(node);
      },
    });
  }

  // ------------------------------------------------------------ queueing

  clearErrors() {
    for (const view of this.canvas.views.values()) view.clearErrors();
  }

  // The API prompt to queue: made here, or by the server when the workflow holds subgraphs.
  async promptFor(workflow) {
    if (!usesSubgraphs(this.graph)) return { prompt: graphToPrompt(this.graph) };
    const answer = await this.api.convertWorkflow(workflow);
    if (answer.ok) return { prompt: answer.body.prompt };
    return { refused: answer };
  }

  async queue(count = 1) {
    if (this.subgraphs.inside) this.subgraphs.back({ all: true }); // the whole workflow runs
    this.clearErrors();
    for (let run = 0; run < count; run++) {
      const workflow = serializeWorkflow(this.graph, { viewport: this.canvas.viewport });
      let answer;
      try {
        const { prompt, refused } = await this.promptFor(workflow);
        answer = refused || await this.api.queuePrompt({ client_id: this.clientId, prompt, extra_data: { extra_pnginfo: { workflow } } });
      } catch (error) {
        this.notify(`Could not reach the server: ${error.message}`, "error");
        return false;
      }
      const body = answer.body || {};
      const unplaced = showNodeErrors(this.canvas, body.node_errors);
      if (!answer.ok) {
        const error = body.error || {};
        const problems = this.describeNodeErrors(body.node_errors).concat(unplaced);
        const detail = problems.length ? `: ${problems.join("; ")}` : error.details ? ` (${error.details})` : "";
        this.notify(`Prompt refused: ${error.message || `HTTP ${answer.status}`}${detail}`, "error");
        return false;
      }
      this.lastPromptId = body.prompt_id;
      if (!this.monitor.started.has(body.prompt_id)) {
        this.notify(`Queued prompt #${body.number} (${String(body.prompt_id).slice(0, 8)})`, "info");
      }
      applyControlsAfterQueue(this.graph);
    }
    this.panel.scheduleRefresh();
    return true;
  }

  // "Save Image: Required input is missing (images)", for the first few node errors.
  describeNodeErrors(nodeErrors, limit = 3) {
    const lines = [];
    for (const [nodeId, entry] of Object.entries(nodeErrors || {})) {
      const view = this.canvas.viewFor(nodeId);
      for (const error of entry.errors || []) {
        lines.push(`${view ? view.node.title : `node ${nodeId}`}: ${error.message}${error.details ? ` (${error.details})` : ""}`);
      }
    }
    return lines.length > limit ? lines.slice(0, limit).concat(`${lines.length - limit} more`) : lines;
  }

  async interrupt() {
    await this.api.interrupt(this.monitor.promptId || undefined);
    this.notify("Interrupt requested", "warning");
  }

  // ------------------------------------------------------------ workflows

  // Loads a UI- or API-format workflow (or a {prompt: ...} body); returns false if it is neither.
  load(json, name = "workflow") {
    const format = detectFormat(json);
    if (format && this.subgraphs.inside) { this.subgraphs.stack = []; this.subgraphs.render(); }
    let warnings;
    if (format === "ui") warnings = loadUiWorkflow(this.graph, json);
    else if (format === "api") warnings = loadApiPrompt(this.graph, json);
    else if (format === "api-wrapped") warnings = loadApiPrompt(this.graph, json.prompt);
    else {
      this.notify(`${name} is not a workflow (neither UI format with 'nodes' nor API format with 'class_type')`, "error");
      return false;
    }
    this.workflowName = name.replace(/\.(json|png)$/i, "");
    this.$("workflow-name").value = this.workflowName;
    this.monitor.clearMarks();
    if (warnings.length) this.notify(`Loaded ${name} with warnings: ${warnings.join("; ")}`, "warning");
    else this.notify(`Loaded ${name} (${format === "ui" ? "UI" : "API"} format, ${this.graph.nodes.size} nodes)`, "info");
    return true;
  }

  async loadFile(file) {
    try {
      this.load(await readWorkflowFile(file), file.name);
    } catch (error) {
      this.notify(`Could not open ${file.name}: ${error.message}`, "error");
    }
  }

  loadFromHistory(entry) {
    const [, promptId, prompt, extraData] = entry.prompt || [];
    const workflow = extraData && extraData.extra_pnginfo && extraData.extra_pnginfo.workflow;
    if (this.load(workflow || prompt, `history ${String(promptId).slice(0, 8)}`)) this.monitor.showOutputs(entry.outputs);
  }

  async openShippedWorkflow(name) {
    try {
      this.load(await this.api.getWorkflow(name), name);
    } catch (error) {
      this.notify(`Could not load ${name}: ${error.message}`, "error");
    }
  }

  async openDefaultWorkflow() {
    let names = [];
    try { names = await this.api.listWorkflows(); } catch { return; }
    const preferred = ["flux_schnell_txt2img.json", "flux_dev_txt2img.json"];
    const name = preferred.find((candidate) => names.includes(candidate));
    if (name) await this.openShippedWorkflow(name);
  }

  async showWorkflowMenu(anchor) {
    let names;
    try {
      names = await this.api.listWorkflows();
    } catch (error) {
      this.notify(error instanceof ApiError && error.status === 404 ? "This server ships no workflows" : `Could not list workflows: ${error.message}`, "error");
      return;
    }
    const rect = anchor.getBoundingClientRect();
    const items = (Array.isArray(names) ? names : []).map((name) => ({ label: name, id: `workflow:${name}`, action: () => this.openShippedWorkflow(name) }));
    this.contextMenu.open(rect.left, rect.bottom + 2, items.length ? items : [{ label: "no shipped workflows", disabled: true }]);
  }

  saveWorkflow() {
    this.workflowName = this.$("workflow-name").value || this.workflowName;
    downloadJson(jsonName(this.workflowName, "workflow"), serializeWorkflow(this.graph, { viewport: this.canvas.viewport }));
  }

  exportApi() {
    this.workflowName = this.$("workflow-name").value || this.workflowName;
    downloadJson(jsonName(`${this.workflowName}_api`, "workflow_api"), graphToPrompt(this.graph));
  }

  scheduleAutosave() {
    clearTimeout(this.autosaveTimer);
    this.autosaveTimer = setTimeout(() => {
      try {
        localStorage.setItem(AUTOSAVE_KEY, JSON.stringify({ name: this.workflowName, workflow: serializeWorkflow(this.graph, { viewport: this.canvas.viewport }) }));
      } catch { /* storage full or disabled: autosave is a convenience */ }
    }, 400);
  }

  restoreAutosave() {
    try {
      const saved = JSON.parse(localStorage.getItem(AUTOSAVE_KEY) || "null");
      if (saved && saved.workflow && saved.workflow.nodes.length) {
        loadUiWorkflow(this.graph, saved.workflow);
        this.workflowName = saved.name || "workflow";
        this.$("workflow-name").value = this.workflowName;
      }
    } catch { localStorage.removeItem(AUTOSAVE_KEY); }
  }

  // ------------------------------------------------------------ wiring

  bindToolbar() {
    const on = (id, action) => this.$(id).addEventListener("click", action);
    on("queue-button", () => this.queue(Math.max(1, Math.min(100, Number(this.$("batch-count").value) || 1))));
    on("interrupt-button", () => this.interrupt());
    on("save-button", () => this.saveWorkflow());
    on("export-api-button", () => this.exportApi());
    on("open-button", () => this.$("open-file").click());
    on("workflows-button", (event) => this.showWorkflowMenu(event.currentTarget));
    on("fit-button", () => this.canvas.fitView());
    on("clear-button", () => { this.graph.clear(); this.notify("Cleared the canvas", "info"); });
    on("panel-button", () => {
      const panel = this.$("side-panel");
      panel.hidden = !panel.hidden;
      if (!panel.hidden) this.panel.refresh();
    });
    this.$("open-file").addEventListener("change", (event) => {
      const file = event.target.files && event.target.files[0];
      if (file) this.loadFile(file);
      event.target.value = "";
    });
  }

  bindDrop(root) {
    root.addEventListener("dragover", (event) => { event.preventDefault(); root.classList.add("drop-target"); });
    root.addEventListener("dragleave", () => root.classList.remove("drop-target"));
    root.addEventListener("drop", async (event) => {
      event.preventDefault();
      root.classList.remove("drop-target");
      const file = event.dataTransfer && event.dataTransfer.files[0];
      if (!file) return;
      const nodeEl = event.target instanceof Element ? event.target.closest(".node") : null;
      const node = nodeEl && this.graph.nodes.get(Number(nodeEl.dataset.nodeId));
      if (node && node.def && file.type.startsWith("image/") && node.def.inputs.some((input) => input.upload)) {
        await this.uploadInto(node, file);
      } else {
        await this.loadFile(file);
      }
    });
  }

  // An image dropped on a load-image node goes to the input folder and becomes that node's choice.
  async uploadInto(node, file) {
    const input = node.def.inputs.find((candidate) => candidate.upload);
    try {
      const answer = await this.api.uploadImage(file);
      const name = answer.subfolder ? `${answer.subfolder}/${answer.name}` : answer.name;
      this.canvas.views.get(node.id).rememberUpload(name);
      this.graph.setValue(node.id, input.name, name);
      this.notify(`Uploaded ${name}`, "info");
    } catch (error) {
      this.notify(`Could not upload ${file.name}: ${error.message}`, "error");
    }
  }

  connect() {
    this.socket = new EventSocket(this.api, this.clientId, {
      onMessage: (message) => this.monitor.handle(message),
      onBinary: (frame) => this.monitor.handleBinary(frame),
      onConnection: ({ connected, reconnected }) => {
        document.body.classList.toggle("disconnected", !connected);
        this.$("connection").textContent = connected ? "connected" : "reconnecting…";
        if (connected) this.resume({ reconnected });
      },
    });
    this.socket.connect();
  }

  // On (re)connecting: pick up a prompt still running (after a page reload or a server restart), or show
  // the outputs of ours that finished while we were away.
  async resume({ reconnected = true } = {}) {
    if (reconnected) this.notify("Reconnected to the server", "info");
    try {
      const queue = await this.api.getQueue();
      const running = (queue.queue_running || [])[0];
      if (running) {
        this.monitor.promptId = running[1];
        document.body.classList.add("running");
        this.notify(`Running prompt ${String(running[1]).slice(0, 8)}${reconnected ? " (resumed)" : ""}`, "info");
      } else if (this.lastPromptId) {
        const history = await this.api.getHistoryEntry(this.lastPromptId);
        if (history[this.lastPromptId]) this.monitor.showOutputs(history[this.lastPromptId].outputs);
        document.body.classList.remove("running");
      }
    } catch (error) {
      this.notify(`Reconnected, but could not read the queue: ${error.message}`, "warning");
    }
    this.panel.scheduleRefresh();
  }
}

async function fetchDefinitions(api) {
  for (let attempt = 0; ; attempt++) {
    try {
      return parseObjectInfo(await api.objectInfo());
    } catch (error) {
      document.getElementById("status-text").textContent = `Waiting for the server (${error.message})…`;
      await new Promise((resolve) => setTimeout(resolve, Math.min(4000, 250 * 2 ** attempt)));
    }
  }
}

export async function start() {
  const api = new ServerApi({ token: authToken() });
  const defs = await fetchDefinitions(api);
  const editor = new Editor(defs, api);
  window.fluxgraph = editor;
  editor.restoreAutosave();
  // A first visit opens a ready-to-run graph, as ComfyUI does; `?blank` starts from an empty canvas.
  if (!editor.graph.nodes.size && !new URLSearchParams(location.search).has("blank")) {
    await editor.openDefaultWorkflow();
  }
  editor.history.reset();
  editor.connect();
  editor.notify(`${defs.size} node types available`, "info");
  document.body.dataset.ready = "true";
  return editor;
}
