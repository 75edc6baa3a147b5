// Keyboard shortcuts, copy and paste, and the right-click menus of nodes and the canvas.
//   Delete/Backspace remove · Ctrl+C/Ctrl+V copy/paste (Ctrl+Shift+V keeps incoming links) · Ctrl+A all
//   Ctrl+B bypass · Ctrl+M mute · Ctrl+Enter queue · Ctrl+S save · Ctrl+O open · Escape close menus
//   Ctrl+Z undo · Ctrl+Y / Ctrl+Shift+Z redo · Ctrl+G group the selection · F2 rename · R refresh the model lists

import { renameInPlace } from "./canvas_pointer.js";
import { pasteFragment, serializeWorkflow } from "./ui_format.js";

const CLIPBOARD_KEY = "fluxgraph.clipboard";

function typingInto(target) {
  return target instanceof HTMLElement && (target.isContentEditable || target.closest("input, textarea, select"));
}

export function attachShortcuts(editor) {
  const { graph, canvas } = editor;
  let pointer = [0, 0];
  canvas.root.addEventListener("pointermove", (event) => { pointer = [event.clientX, event.clientY]; });

  const removeSelected = () => {
    for (const id of [...canvas.selection]) graph.removeNode(id);
  };

  const toggleMode = (mode) => {
    for (const id of canvas.selection) {
      const node = graph.nodes.get(id);
      graph.setMode(id, node.mode === mode ? 0 : mode);
    }
  };

  const groupSelected = () => {
    if (!canvas.selection.size) return;
    canvas.groupNodes([...canvas.selection]);
    editor.notify(`Grouped ${canvas.selection.size} node${canvas.selection.size === 1 ? "" : "s"}`, "info");
  };

  const copy = () => {
    if (!canvas.selection.size) return;
    const ids = [...canvas.selection];
    const fragment = serializeWorkflow(graph, { nodeIds: ids });
    // Links coming into the copied nodes, for Ctrl+Shift+V.
    fragment.incoming = [...graph.links.values()]
      .filter((link) => canvas.selection.has(link.targetId) && !canvas.selection.has(link.originId))
      .map((link) => ({ originId: link.originId, originSlot: link.originSlot, targetId: link.targetId, targetInput: link.targetInput }));
    localStorage.setItem(CLIPBOARD_KEY, JSON.stringify(fragment));
    editor.notify(`Copied ${ids.length} node${ids.length === 1 ? "" : "s"}`, "info");
  };

  const paste = (keepIncoming) => {
    let fragment;
    try { fragment = JSON.parse(localStorage.getItem(CLIPBOARD_KEY) || "null"); } catch { fragment = null; }
    if (!fragment || !fragment.nodes || !fragment.nodes.length) return;
    const [wx, wy] = canvas.toWorld(pointer[0], pointer[1]);
    const left = Math.min(...fragment.nodes.map((node) => node.pos[0]));
    const top = Math.min(...fragment.nodes.map((node) => node.pos[1]));
    const inView = canvas.root.getBoundingClientRect();
    const pointerInside = pointer[0] >= inView.left && pointer[0] <= inView.right && pointer[1] >= inView.top && pointer[1] <= inView.bottom;
    const offset = pointerInside ? [Math.round(wx - left), Math.round(wy - top)] : [30, 30];
    const created = pasteFragment(graph, fragment, offset);
    if (keepIncoming) {
      const byOldId = new Map(fragment.nodes.map((node, index) => [node.id, created[index]]));
      for (const link of fragment.incoming || []) {
        const target = byOldId.get(link.targetId);
        if (graph.nodes.has(link.originId) && target !== undefined && graph.canConnect(link.originId, link.originSlot, target, link.targetInput).ok) {
          graph.connect(link.originId, link.originSlot, target, link.targetInput);
        }
      }
    }
    canvas.select(created);
  };

  document.addEventListener("keydown", (event) => {
    const ctrl = event.ctrlKey || event.metaKey;
    if (ctrl && event.key === "Enter") { event.preventDefault(); editor.queue(); return; }
    if (ctrl && event.key.toLowerCase() === "s") { event.preventDefault(); editor.saveWorkflow(); return; }
    if (ctrl && event.key.toLowerCase() === "o") { event.preventDefault(); editor.$("open-file").click(); return; }
    if (typingInto(event.target)) return;
    if (event.key === "Escape") { editor.search.close(); editor.contextMenu.close(); return; }
    if (event.key === "Delete" || event.key === "Backspace") { event.preventDefault(); removeSelected(); return; }
    if (event.key === "F2" && canvas.selection.size === 1) { event.preventDefault(); renameInPlace(canvas, [...canvas.selection][0]); return; }
    if (!ctrl && !event.altKey && event.key.toLowerCase() === "r") { event.preventDefault(); editor.refreshDefinitions(); return; }
    if (!ctrl) return;
    switch (event.key.toLowerCase()) {
      case "z": if (event.shiftKey) editor.redo(); else editor.undo(); break;
      case "y": editor.redo(); break;
      case "g": groupSelected(); break;
      case "c": copy(); break;
      case "v": paste(event.shiftKey); break;
      case "a": canvas.select([...graph.nodes.keys()]); break;
      case "b": toggleMode(4); break;
      case "m": toggleMode(2); break;
      default: return;
    }
    event.preventDefault();
  });

  const openContextMenu = ({ clientX, clientY, nodeId, worldPos }) => {
    if (nodeId === null) {
      editor.contextMenu.open(clientX, clientY, [
        { label: "Add node…", id: "add-node", action: () => editor.openSearch({ clientX, clientY, worldPos }) },
        { label: "Paste", id: "paste", action: () => paste(false) },
        { label: "Fit view", id: "fit", action: () => canvas.fitView() },
      ]);
      return;
    }
    const node = graph.nodes.get(nodeId);
    editor.contextMenu.open(clientX, clientY, [
      { label: node.mode === 4 ? "Stop bypassing" : "Bypass", id: "bypass", action: () => toggleMode(4) },
      { label: node.mode === 2 ? "Unmute" : "Mute", id: "mute", action: () => toggleMode(2) },
      { label: node.flags.collapsed ? "Expand" : "Collapse", id: "collapse", action: () => { node.flags.collapsed = !node.flags.collapsed; graph.emit("mode", { node }); } },
      { label: "Rename (F2)", id: "rename", action: () => renameInPlace(canvas, nodeId) },
      ...(node.subgraph ? [{ label: "Open subgraph", id: "open-subgraph", action: () => editor.subgraphs.open(nodeId) }] : []),
      { label: "Group (Ctrl+G)", id: "group", action: groupSelected },
      null,
      { label: "Copy", id: "copy", action: copy },
      { label: "Clone", id: "clone", action: () => { copy(); pointer = [clientX + 30, clientY + 30]; paste(false); } },
      { label: "Remove", id: "remove", action: removeSelected },
    ]);
  };

  return { copy, paste, removeSelected, openContextMenu, groupSelected };
}
