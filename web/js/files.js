// Workflow files in and out: open .json (UI or API format) and .png (metadata written by SaveImage),
// save the UI format or the API format as a download.

import { workflowFromPng } from "./png_meta.js";

export async function readWorkflowFile(file) {
  const isPng = file.type === "image/png" || /\.png$/i.test(file.name);
  if (isPng) {
    const { workflow, prompt } = await workflowFromPng(await file.arrayBuffer());
    return workflow || prompt;
  }
  const text = await file.text();
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new Error(`${file.name} is not valid JSON: ${error.message}`);
  }
}

export function downloadJson(name, data) {
  const blob = new Blob([JSON.stringify(data, null, 2)], { type: "application/json" });
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// A file name for saving: what the user named it, ending in .json.
export function jsonName(name, fallback) {
  const base = (name || fallback).trim().replace(/[\\/:*?"<>|]+/g, "_") || fallback;
  return /\.json$/i.test(base) ? base : `${base}.json`;
}
