// Which output type may feed which input type: the same rule as engine/core/types.py (ComfyUI's rule).
// Equal types connect, "*" connects to anything, comma-separated unions connect when they overlap,
// and a combo output (a list of options) feeds only a combo input.

export const ANY = "*";
// ComfyUI V3 "match type" sockets (e.g. the Switch node) take any type; the node checks its sockets agree.
export const MATCH_TYPE = "COMFY_MATCHTYPE_V3";
export const COMBO = "COMBO";
export const PRIMITIVES = new Set(["INT", "FLOAT", "STRING", "BOOLEAN"]);

function typeSet(typeName) {
  return new Set(typeName.split(",").map((part) => part.trim()));
}

export function typesCompatible(outputType, inputType) {
  const outIsList = Array.isArray(outputType);
  const inIsList = Array.isArray(inputType);
  if (outIsList || inIsList) {
    const outIsCombo = outIsList || outputType === COMBO || outputType === ANY;
    const inIsCombo = inIsList || inputType === COMBO || inputType === ANY;
    return outIsCombo && inIsCombo;
  }
  if (outputType === ANY || inputType === ANY || outputType === MATCH_TYPE || inputType === MATCH_TYPE) return true;
  if (outputType === inputType) return true;
  if (typeof outputType !== "string" || typeof inputType !== "string") return false;
  const outs = typeSet(outputType);
  for (const part of typeSet(inputType)) if (outs.has(part)) return true;
  return false;
}

// A short printable name for a type (combo option lists print as COMBO).
export function typeLabel(type) {
  return Array.isArray(type) ? COMBO : String(type);
}

// A stable hue per type name, so sockets and links of one type share a colour.
const KNOWN_COLOURS = {
  MODEL: "#b39ddb", CLIP: "#ffd54f", VAE: "#ef8a8a", CONDITIONING: "#ffa931", LATENT: "#ff9cf9",
  IMAGE: "#64b5f6", MASK: "#81c784", INT: "#9ccc65", FLOAT: "#aed581", STRING: "#80cbc4",
  BOOLEAN: "#90a4ae", COMBO: "#b0bec5", NOISE: "#b0bec5", GUIDER: "#66ffcc", SAMPLER: "#ecb4b4",
  SIGMAS: "#cdffcd", CLIP_VISION: "#a8dadc", CLIP_VISION_OUTPUT: "#ad7452", STYLE_MODEL: "#c2ffae",
};

export function typeColour(type) {
  const name = typeLabel(type);
  if (KNOWN_COLOURS[name]) return KNOWN_COLOURS[name];
  if (name === ANY) return "#dddddd";
  let hash = 0;
  for (const ch of name) hash = (hash * 31 + ch.charCodeAt(0)) >>> 0;
  return `hsl(${hash % 360}, 55%, 65%)`;
}
