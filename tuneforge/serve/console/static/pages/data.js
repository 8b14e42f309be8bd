// Data: upload a file, its validation report inline (counts per kind, each problem with line, field and fix),
// token statistics and cost; list and delete files.
import { ApiError, del, get, request } from "../api.js";
import { clear, errorBox, field, fmtBytes, fmtTime, h, table, toast } from "../dom.js";

export const title = "Data";

function issueList(issues, label) {
  if (!issues.length) return null;
  return h("div", {},
    h("h3", {}, label),
    h("ul", { class: "issues" }, issues.map((i) => h("li", { class: `issue ${i.severity || "error"}` },
      h("strong", {}, i.line !== null && i.line !== undefined ? `Line ${i.line}` : "File"),
      i.field ? h("code", {}, i.field) : null,
      h("span", {}, ` ${i.message}`),
      i.fix ? h("span", { class: "fix" }, `Fix: ${i.fix}`) : null))));
}

function counts(obj, label) {
  const entries = Object.entries(obj || {});
  if (!entries.length) return null;
  return h("p", {}, h("strong", {}, `${label}: `), entries.map(([k, v]) => `${k} × ${v}`).join(", "));
}

function validationView(v, ok) {
  return h("section", { class: `report ${ok ? "ok" : "bad"}`, "aria-label": "Validation report" },
    h("h2", {}, ok ? `${v.file || "File"}: valid` : `${v.file || "File"}: refused`),
    h("p", {}, `Format ${v.format || "unknown"} · ${v.records ?? 0} records · ${v.valid ?? 0} valid · ${v.invalid ?? 0} invalid`),
    counts(v.error_counts, "Errors by kind"),
    counts(v.warning_counts, "Warnings by kind"),
    counts(v.label_counts, "Labels"),
    issueList(v.errors || [], "Errors"),
    issueList(v.warnings || [], "Warnings"),
    v.truncated ? h("p", {}, "The list is truncated; fix these and upload again to see more.") : null);
}

function tokenView(r) {
  const t = r.tokens || {}, c = r.cost || {};
  const mean = (v) => (v === undefined || v === null ? "" : Number(v).toFixed(1));
  const rows = [
    ["Examples", r.examples ?? ""],
    ["Total tokens", t.total_tokens ?? ""],
    ["Tokens per example (mean / max)", t.per_example ? `${mean(t.per_example.mean)} / ${t.per_example.max ?? ""}` : ""],
    ["Prompt / completion tokens (mean)", `${mean(t.prompt_tokens_mean)} / ${mean(t.completion_tokens_mean)}`],
    ["Tokens the loss is on", t.loss_tokens ?? ""],
    ["Over the context limit", t.over_context !== undefined ? `${t.over_context} (limit ${t.context_limit})` : ""],
    ["Training tokens (× epochs)", c.training_tokens !== undefined ? `${c.training_tokens} (${c.epochs} epochs)` : ""],
    ["Training cost", c.training_cost !== undefined ? `${c.training_cost} ${c.currency}` : ""],
    ["Serving cost per 1K requests", c.serving_cost_per_1k_requests !== undefined ? `${c.serving_cost_per_1k_requests} ${c.currency}` : ""],
    ["Training compute", c.flops ? `${Number(c.flops).toExponential(2)} FLOPs (${Number(c.params).toLocaleString()} parameters)` : "—"],
  ];
  return h("section", { class: "report", "aria-label": "Token statistics and cost" },
    h("h2", {}, `Tokens and cost (${r.model} tokenizer)`), table(["", "value"], rows, null, { keyValue: true }), t.estimated ? h("p", { class: "muted" }, `Estimated from ${t.sampled} sampled examples.`) : null);
}

async function showDetails(box, file) {
  clear(box).append(h("p", { class: "muted" }, `Loading the report of ${file.filename}…`));
  try {
    const v = await get(`/v1/tuneforge/files/${encodeURIComponent(file.id)}/validation`);
    clear(box).append(validationView(v, true));
    const tokens = h("div", {}, h("p", { class: "muted" }, "Counting tokens…"));
    box.append(tokens);
    const r = await get(`/v1/tuneforge/files/${encodeURIComponent(file.id)}/report`);
    clear(tokens).append(tokenView(r));
  } catch (err) {
    box.append(errorBox(err));
  }
}

export async function render(main) {
  const input = field("Training or validation file (JSONL, JSON, CSV, Parquet)",
    h("input", { type: "file", name: "file", required: true }));
  const result = h("div", { id: "upload-result", "aria-live": "polite" });
  const form = h("form", { class: "card", "aria-labelledby": "upload-title" },
    h("h2", { id: "upload-title" }, "Upload a file"), input.box, h("button", { type: "submit" }, "Upload"));
  const list = h("div", { id: "file-list" });
  main.append(h("h1", {}, "Data"), form, result, h("h2", {}, "Files"), list);

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const file = input.input.files[0];
    input.error.textContent = "";
    if (!file) { input.error.textContent = "Choose a file first."; return; }
    const body = new FormData();
    body.append("purpose", "fine-tune");
    body.append("file", file);
    clear(result).append(h("p", { class: "muted" }, `Uploading ${file.name}…`));
    try {
      const row = await request("POST", "/v1/files", { form: body });
      toast(`Uploaded ${row.filename}`);
      form.reset();
      await refresh();
      await showDetails(result, row);
    } catch (err) {
      clear(result);
      if (err instanceof ApiError && err.details && err.details.errors) {
        result.append(validationView(err.details, false));
      } else {
        input.error.textContent = err.message;
      }
    }
  });

  async function refresh() {
    const page = await get("/v1/files");
    clear(list);
    if (!page.data.length) { list.append(h("p", { class: "muted" }, "No files yet.")); return; }
    list.append(table(["Name", "ID", "Purpose", "Size", "Uploaded", ""], page.data.map((f) => [
      f.filename, h("code", {}, f.id), f.purpose, fmtBytes(f.bytes), fmtTime(f.created_at),
      h("span", { class: "actions" },
        f.purpose === "fine-tune"
          ? h("button", { type: "button", onclick: () => showDetails(result, f), "aria-label": `Report of ${f.filename}` }, "Report")
          : null,
        h("button", { type: "button", class: "danger", "aria-label": `Delete ${f.filename}`, onclick: async () => {
          if (!confirm(`Delete ${f.filename}?`)) return;
          try { await del(`/v1/files/${encodeURIComponent(f.id)}`); toast(`Deleted ${f.filename}`); await refresh(); }
          catch (err) { toast(err.message, "error"); }
        } }, "Delete")),
    ])));
  }
  await refresh();
}
