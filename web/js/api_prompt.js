// The graph as an API-format prompt (what POST /prompt takes), the way ComfyUI's editor builds it:
// editor-only nodes vanish (Reroutes followed, Primitives folded into the inputs they drive), muted nodes
// are dropped and bypassed nodes pass their matching input through. Also the seed controls applied
// after queueing.

import { typesCompatible } from "./types.js";

const RANDOM_SEED_LIMIT = 2 ** 50; // stays an exact integer in JSON and in JavaScript

// What feeds a link once editor-only and bypassed nodes are looked through:
// {link: [id, slot]}, {value: literal}, or null when nothing does.
export function resolveSource(graph, link, seen = new Set()) {
  if (!link || seen.has(link.id)) return null;
  seen.add(link.id);
  const origin = graph.nodes.get(link.originId);
  if (!origin || origin.mode === 2) return null;
  if (origin.type === "Reroute") return resolveSource(graph, graph.inputLink(origin.id, ""), seen);
  if (origin.type === "PrimitiveNode") return { value: origin.values.get("value") };
  if (origin.isUiOnly) return null;
  if (origin.mode === 4) {
    // Bypassed: the first linked input whose type fits this output stands in for it.
    const outputType = graph.outputType(origin.id, link.originSlot);
    for (const input of origin.slotInputs) {
      const upstream = graph.inputLink(origin.id, input.name);
      if (upstream && typesCompatible(graph.outputType(upstream.originId, upstream.originSlot), outputType)
          && typesCompatible(input.type, outputType)) {
        return resolveSource(graph, upstream, seen);
      }
    }
    return null;
  }
  return { link: [String(origin.id), link.originSlot] };
}

export function graphToPrompt(graph, { random = Math.random, now = new Date() } = {}) {
  const prompt = {};
  for (const node of graph.nodes.values()) {
    if (node.isUiOnly || node.mode === 2 || node.mode === 4) continue;
    const inputs = node.isMissing ? { ...node.missingLiterals } : {};
    const inputNames = node.def ? node.def.inputs.map((input) => input.name) : node.missingInputs.map((i) => i.name);
    for (const name of inputNames) {
      const link = graph.inputLink(node.id, name);
      const def = node.inputDef(name);
      if (link) {
        const source = resolveSource(graph, link);
        if (source && source.link) inputs[name] = source.link;
        else if (source) inputs[name] = literal(def, source.value, random);
      } else if (def && def.widget !== null && node.values.has(name)) {
        let value = literal(def, node.values.get(name), random);
        if (typeof value === "string" && value.includes("%")) value = substituteTokens(graph, value, now);
        inputs[name] = value;
      }
    }
    prompt[String(node.id)] = { inputs, class_type: node.type, _meta: { title: node.title } };
  }
  return prompt;
}

function literal(def, value, random) {
  if (Array.isArray(value)) return { __value__: value };
  if (def && def.options.dynamicPrompts && typeof value === "string") return expandDynamicPrompt(value, random);
  return value;
}

// `{a|b|c}` picks one option at random, innermost braces first, as ComfyUI's editor does at queue time;
// `/* ... */` and `// ...` comments are removed first.
export function expandDynamicPrompt(text, random = Math.random) {
  let result = text.replace(/\/\*[\s\S]*?\*\/|\/\/[^\n]*/g, "");
  const innermost = /\{([^{}]*)\}/;
  for (let guard = 0; guard < 1000 && innermost.test(result); guard++) {
    result = result.replace(innermost, (_, body) => {
      const options = body.split("|");
      return options[Math.floor(random() * options.length)];
    });
  }
  return result;
}

// `%date:yyyy-MM-dd%` and `%Node title.widget%` in text widgets (e.g. SaveImage's filename_prefix);
// other tokens (%width%, %batch_num%, ...) are left for the server.
export function substituteTokens(graph, text, now = new Date()) {
  return text.replace(/%([^%\s][^%]*)%/g, (whole, token) => {
    if (token.startsWith("date:")) return formatDate(token.slice(5), now);
    const dot = token.lastIndexOf(".");
    if (dot <= 0) return whole;
    const title = token.slice(0, dot);
    const widget = token.slice(dot + 1);
    for (const node of graph.nodes.values()) {
      if ((node.title === title || node.properties["Node name for S&R"] === title) && node.values.has(widget)) {
        return String(node.values.get(widget));
      }
    }
    return whole;
  });
}

function formatDate(format, date) {
  const pad = (n, width = 2) => String(n).padStart(width, "0");
  const parts = { yyyy: date.getFullYear(), yy: pad(date.getFullYear() % 100), MM: pad(date.getMonth() + 1),
    dd: pad(date.getDate()), hh: pad(date.getHours()), mm: pad(date.getMinutes()), ss: pad(date.getSeconds()) };
  return format.replace(/yyyy|yy|MM|dd|hh|mm|ss/g, (key) => String(parts[key]));
}

// After a prompt is queued, seed widgets move on according to their control mode.
export function applyControlsAfterQueue(graph, random = Math.random) {
  for (const node of graph.nodes.values()) {
    if (node.mode === 2 || node.mode === 4) continue;
    for (const [name, mode] of node.controls) {
      if (mode === "fixed" || graph.inputLink(node.id, name)) continue;
      const def = node.type === "PrimitiveNode" ? primitiveTargetDef(graph, node) : node.inputDef(name);
      const value = Number(node.values.get(name));
      const next = nextControlValue(def, Number.isFinite(value) ? value : 0, mode, random);
      if (next !== null) graph.setValue(node.id, name, next);
    }
  }
}

export function primitiveTargetDef(graph, primitive) {
  for (const linkId of primitive.outputLinks[0] || []) {
    const link = graph.links.get(linkId);
    const target = link && graph.nodes.get(link.targetId);
    const def = target && target.inputDef(link.targetInput);
    if (def) return def;
  }
  return null;
}

export function nextControlValue(def, value, mode, random = Math.random) {
  if (!def || (def.widget !== "INT" && def.widget !== "FLOAT")) return null;
  const min = Number(def.options.min ?? 0);
  const max = Number(def.options.max ?? RANDOM_SEED_LIMIT);
  const step = def.widget === "INT" ? 1 : Number(def.options.step ?? 0.01);
  if (mode === "increment") return Math.min(max, value + step);
  if (mode === "increment-wrap") return value + step > max ? min : value + step;
  if (mode === "decrement") return Math.max(min, value - step);
  if (mode === "randomize") {
    const high = Math.min(max, min + RANDOM_SEED_LIMIT);
    const span = high - min;
    const drawn = min + random() * span;
    return def.widget === "INT" ? Math.floor(drawn) : drawn;
  }
  return null;
}
