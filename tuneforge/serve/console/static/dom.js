// DOM helpers: every piece of user content becomes a text node (textContent), never HTML.

/** h("div", {class: "x", onclick: fn}, "text", child) -> element. Strings are text, never parsed. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "value") el.value = value;
    else if (key === "checked") el.checked = Boolean(value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

let fieldSeq = 0;
/** A labelled form field: {label, input, help, error} where `error` is the slot for its API error. */
export function field(label, input, help) {
  const id = input.id || `f${++fieldSeq}`;
  input.id = id;
  const error = h("p", { class: "field-error", id: `${id}-error`, role: "alert" });
  const helpEl = help ? h("p", { class: "help", id: `${id}-help` }, help) : null;
  input.setAttribute("aria-describedby", [helpEl && helpEl.id, error.id].filter(Boolean).join(" "));
  const box = h("div", { class: "field" }, h("label", { for: id }, label), input, helpEl, error);
  return { box, input, error };
}

export function fmtTime(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "";
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

/** A table; on a phone each row becomes a card of label/value lines, except `keyValue` tables (already two columns). */
export function table(headers, rows, caption, { keyValue = false } = {}) {
  return h("div", { class: keyValue ? "table-wrap kv" : "table-wrap" },
    h("table", {},
      caption ? h("caption", {}, caption) : null,
      h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c, i) => h("td", { "data-label": headers[i] }, c)))))));
}

export function toast(message, kind = "info") {
  const el = document.getElementById("toast");
  el.className = kind;
  el.textContent = message;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.textContent = ""; el.className = ""; }, 6000);
}

export function errorBox(err) {
  return h("div", { class: "error-box", role: "alert" }, err.message || String(err));
}
