// Talking to the server: the ComfyUI HTTP routes (under /api) and the /ws event socket, which
// reconnects by itself when the server goes away and comes back.

export class ApiError extends Error {
  constructor(message, status, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

export class ServerApi {
  constructor({ base = "", token = null } = {}) {
    this.base = base.replace(/\/$/, "");
    this.token = token;
  }

  url(path) {
    return `${this.base}/api${path}`;
  }

  headers(extra = {}) {
    return this.token ? { ...extra, Authorization: `Bearer ${this.token}` } : extra;
  }

  async request(method, path, body) {
    const init = { method, headers: this.headers() };
    if (body instanceof FormData) init.body = body;
    else if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    const response = await fetch(this.url(path), init);
    const text = await response.text();
    let parsed = null;
    try { parsed = text ? JSON.parse(text) : null; } catch { parsed = text; }
    return { status: response.status, ok: response.ok, body: parsed };
  }

  async json(method, path, body) {
    const answer = await this.request(method, path, body);
    if (!answer.ok) {
      const detail = answer.body && answer.body.error ? answer.body.error.message || answer.body.error : answer.body;
      throw new ApiError(`${method} ${path} failed (${answer.status}): ${typeof detail === "string" ? detail : JSON.stringify(detail)}`, answer.status, answer.body);
    }
    return answer.body;
  }

  objectInfo() { return this.json("GET", "/object_info"); }
  // Answers {status, ok, body}: a 400 carries node_errors the editor shows on the nodes.
  queuePrompt(body) { return this.request("POST", "/prompt", body); }
  interrupt(promptId) { return this.request("POST", "/interrupt", promptId ? { prompt_id: promptId } : undefined); }
  getQueue() { return this.json("GET", "/queue"); }
  deleteQueued(promptIds) { return this.request("POST", "/queue", { delete: promptIds }); }
  clearQueue() { return this.request("POST", "/queue", { clear: true }); }
  getHistory(maxItems = 50) { return this.json("GET", `/history?max_items=${maxItems}`); }
  getHistoryEntry(promptId) { return this.json("GET", `/history/${encodeURIComponent(promptId)}`); }
  deleteHistory(promptIds) { return this.request("POST", "/history", { delete: promptIds }); }
  clearHistory() { return this.request("POST", "/history", { clear: true }); }
  listWorkflows() { return this.json("GET", "/workflows"); }
  getWorkflow(name) { return this.json("GET", `/workflows/${encodeURIComponent(name)}`); }
  // UI workflow -> {status, ok, body: {prompt, ...}} or a 400 with node_errors.
  convertWorkflow(workflow) { return this.request("POST", "/workflow/convert", { workflow }); }

  async uploadImage(file, { type = "input", subfolder = "", overwrite = false } = {}) {
    const form = new FormData();
    form.append("image", file, file.name);
    form.append("type", type);
    if (subfolder) form.append("subfolder", subfolder);
    if (overwrite) form.append("overwrite", "true");
    return this.json("POST", "/upload/image", form);
  }

  // An <img> cannot send headers, so a token travels in the query.
  viewUrl({ filename, subfolder = "", type = "output" }, { bust = "" } = {}) {
    const query = new URLSearchParams({ filename, subfolder, type });
    if (bust) query.set("rand", bust);
    if (this.token) query.set("token", this.token);
    return `${this.url("/view")}?${query}`;
  }

  socketUrl(clientId) {
    const origin = this.base || window.location.origin;
    const query = new URLSearchParams({ clientId });
    if (this.token) query.set("token", this.token);
    return `${origin.replace(/^http/, "ws")}/ws?${query}`;
  }
}

// The websocket, reconnecting with a growing delay (0.25 s up to 2 s) while the server is away.
export class EventSocket {
  constructor(api, clientId, { onMessage, onBinary, onConnection } = {}) {
    this.api = api;
    this.clientId = clientId;
    this.onMessage = onMessage || (() => {});
    this.onBinary = onBinary || (() => {});
    this.onConnection = onConnection || (() => {});
    this.delay = 250;
    this.closed = false;
    this.socket = null;
    this.everConnected = false;
  }

  connect() {
    if (this.closed) return;
    const socket = new WebSocket(this.api.socketUrl(this.clientId));
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    socket.addEventListener("open", () => {
      this.delay = 250;
      socket.send(JSON.stringify({ type: "feature_flags", data: { supports_preview_metadata: true } }));
      this.onConnection({ connected: true, reconnected: this.everConnected });
      this.everConnected = true;
    });
    socket.addEventListener("message", (event) => {
      if (typeof event.data === "string") {
        let message;
        try { message = JSON.parse(event.data); } catch { return; }
        if (message && typeof message.type === "string") this.onMessage(message);
      } else {
        this.onBinary(decodeBinaryEvent(event.data));
      }
    });
    socket.addEventListener("close", () => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.onConnection({ connected: false });
      if (!this.closed) {
        setTimeout(() => this.connect(), this.delay);
        this.delay = Math.min(this.delay * 2, 2000);
      }
    });
  }

  close() {
    this.closed = true;
    if (this.socket) this.socket.close();
  }
}

// Binary frames (§4.3): previews (1, 4) and progress text (3).
export function decodeBinaryEvent(buffer) {
  const view = new DataView(buffer);
  const event = view.getUint32(0);
  if (event === 1) {
    const format = view.getUint32(4);
    return { event: "preview", mime: format === 2 ? "image/png" : "image/jpeg", bytes: buffer.slice(8), meta: null };
  }
  if (event === 4) {
    const length = view.getUint32(4);
    let meta = null;
    try { meta = JSON.parse(new TextDecoder().decode(buffer.slice(8, 8 + length))); } catch { meta = null; }
    return { event: "preview", mime: (meta && meta.image_type) || "image/jpeg", bytes: buffer.slice(8 + length), meta };
  }
  if (event === 3) {
    const length = view.getUint32(4);
    const nodeId = new TextDecoder().decode(buffer.slice(8, 8 + length));
    return { event: "text", nodeId, text: new TextDecoder().decode(buffer.slice(8 + length)) };
  }
  return { event: "unknown", type: event };
}
