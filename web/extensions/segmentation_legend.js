// fluxgraph's extension for the official ComfyUI frontend: shows the class legend a segmentation node sends
// in its "ui" output (`legend`: [{label, color}] or {label: color}) under the node, which the frontend itself
// would not display. Plain JavaScript, loaded through GET /extensions; uses only the documented extension API.
const { app } = window.comfyAPI.app;

function legendEntries(legend) {
  if (Array.isArray(legend)) return legend.filter((e) => e && typeof e.label === "string");
  if (legend && typeof legend === "object") return Object.entries(legend).map(([label, color]) => ({ label, color }));
  return [];
}

function colorText(color) {
  return Array.isArray(color) ? `rgb(${color.slice(0, 3).join(",")})` : String(color || "#888");
}

app.registerExtension({
  name: "fluxgraph.SegmentationLegend",
  async beforeRegisterNodeDef(nodeType) {
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      const entries = legendEntries(output?.legend);
      if (!entries.length) return;
      const box = document.createElement("div");
      box.style.cssText = "display:flex;flex-wrap:wrap;gap:4px;font:11px sans-serif;padding:2px";
      for (const { label, color } of entries) {
        const item = document.createElement("span");
        const swatch = document.createElement("span");
        swatch.style.cssText = `display:inline-block;width:10px;height:10px;margin-right:3px;background:${colorText(color)}`;
        item.append(swatch, document.createTextNode(label));
        box.append(item);
      }
      const existing = this.widgets?.find((w) => w.name === "fluxgraph_legend");
      if (existing) existing.element.replaceChildren(...box.childNodes);
      else this.addDOMWidget?.("fluxgraph_legend", "legend", box, { serialize: false });
    };
  },
});
