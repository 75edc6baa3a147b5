// Reads the text chunks of a PNG (tEXt, iTXt, zTXt): SaveImage stores `prompt` (API format) and
// `workflow` (UI format) there (§7.3 of docs/protocol.md).

const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

export async function readPngText(buffer) {
  const bytes = new Uint8Array(buffer);
  if (bytes.length < 8 || SIGNATURE.some((value, i) => bytes[i] !== value)) throw new Error("not a PNG file");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const latin1 = new TextDecoder("latin1");
  const utf8 = new TextDecoder("utf-8");
  const chunks = {};
  let offset = 8;
  while (offset + 8 <= bytes.length) {
    const length = view.getUint32(offset);
    const type = latin1.decode(bytes.subarray(offset + 4, offset + 8));
    const data = bytes.subarray(offset + 8, offset + 8 + length);
    offset += 12 + length;
    if (type === "IEND") break;
    if (type !== "tEXt" && type !== "iTXt" && type !== "zTXt") continue;
    const nul = data.indexOf(0);
    if (nul < 0) continue;
    const key = latin1.decode(data.subarray(0, nul));
    if (type === "tEXt") {
      // ComfyUI writes UTF-8 into tEXt despite the spec's Latin-1; UTF-8 decodes plain ASCII the same.
      chunks[key] = utf8.decode(data.subarray(nul + 1));
    } else if (type === "zTXt") {
      chunks[key] = utf8.decode(await inflate(data.subarray(nul + 2)));
    } else {
      const compressed = data[nul + 1] === 1;
      let rest = data.subarray(nul + 3);
      for (let skip = 0; skip < 2; skip++) rest = rest.subarray(rest.indexOf(0) + 1); // language, translated key
      chunks[key] = utf8.decode(compressed ? await inflate(rest) : rest);
    }
  }
  return chunks;
}

// The workflow stored in a PNG: {workflow} (UI format) when present, else {prompt} (API format).
export async function workflowFromPng(buffer) {
  const text = await readPngText(buffer);
  const parse = (key) => {
    if (!(key in text)) return null;
    try { return JSON.parse(text[key]); } catch { throw new Error(`the PNG's '${key}' chunk is not valid JSON`); }
  };
  const workflow = parse("workflow");
  if (workflow) return { workflow };
  const prompt = parse("prompt");
  if (prompt) return { prompt };
  throw new Error("this PNG holds no workflow (no 'workflow' or 'prompt' text chunk)");
}
