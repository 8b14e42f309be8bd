// The /v1 API with the project key from sessionStorage in an Authorization header (never a cookie or URL).
const KEY = "tuneforge.key";

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  set(key) { sessionStorage.setItem(KEY, key); },
  clear() { sessionStorage.removeItem(KEY); },
};

export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.param = e.param || null;
    this.code = e.code || null;
    this.details = e.details || null;
  }
}

function headers(extra = {}, key = session.key) {
  return { Authorization: `Bearer ${key || ""}`, ...extra };
}

export async function request(method, path, { json, form, key, raw } = {}) {
  const init = { method, headers: headers({}, key) };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (form) init.body = form;
  const res = await fetch(path, init);
  if (!res.ok) {
    let body = null;
    try { body = await res.json(); } catch { /* not JSON */ }
    if (res.status === 401 && !key) window.dispatchEvent(new CustomEvent("tuneforge:unauthorized", { detail: body }));
    throw new ApiError(res.status, body);
  }
  if (raw) return res;
  return res.headers.get("content-type")?.includes("json") ? res.json() : res.text();
}

export const get = (path, opts) => request("GET", path, opts);
export const post = (path, json, opts = {}) => request("POST", path, { ...opts, json });
export const del = (path) => request("DELETE", path);

/** POST a streamed chat completion; onDelta(text) per token piece; returns the whole text. */
export async function streamChat(body, onDelta, signal) {
  const res = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify({ ...body, stream: true }),
    signal,
  });
  if (!res.ok) {
    let err = null;
    try { err = await res.json(); } catch { /* not JSON */ }
    throw new ApiError(res.status, err);
  }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", text = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return text;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(500, chunk);
        const piece = chunk.choices?.[0]?.delta?.content || "";
        if (piece) { text += piece; onDelta(piece, text); }
      }
    }
  }
  return text;
}

/** Download an authenticated response as a file (the key cannot go in a link). */
export async function download(path, fallbackName) {
  const res = await request("GET", path, { raw: true });
  const disposition = res.headers.get("content-disposition") || "";
  const name = /filename="([^"]+)"/.exec(disposition)?.[1] || fallbackName;
  const url = URL.createObjectURL(await res.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
