// Monitoring: requests, latency and tokens per model over time, drift status, and the feedback queue
// (review a stored correction, accept or edit it, export the accepted ones as a training file).
import { get, post } from "../api.js";
import { lineChart } from "../charts.js";
import { clear, errorBox, field, fmtTime, h, table, toast } from "../dom.js";

export const title = "Monitoring";
const SIZE = { width: 420, height: 240 };

export async function render(main) {
  const totals = h("div", {});
  const charts = h("div", { class: "charts" });
  const drift = h("div", { class: "card" }, h("h2", {}, "Drift"), h("p", { class: "muted" }, "Loading…"));
  const queue = h("div", { class: "card" });
  const bucket = h("select", { name: "bucket" },
    [["60", "per minute, last hour"], ["3600", "per hour, last 2 days"], ["86400", "per day, last 30 days"]]
      .map(([v, l]) => h("option", { value: v }, l)));
  const last = { 60: 60, 3600: 48, 86400: 30 };
  main.append(h("h1", {}, "Monitoring"), totals, h("div", { class: "inline-field" }, field("Time range", bucket).box), charts, drift, queue);

  async function usage() {
    const u = await get("/v1/monitoring/usage");
    clear(totals).append(u.data.length
      ? table(["Model", "Requests", "Mean latency (ms)", "Max latency (ms)", "Prompt tokens", "Completion tokens"],
        u.data.map((r) => [r.model, r.requests, r.mean_latency_ms, r.max_latency_ms, r.prompt_tokens, r.completion_tokens]), "Totals")
      : h("p", { class: "muted" }, "No requests yet: chat with a model in the Playground."));
    const s = await get(`/v1/tuneforge/monitoring/series?bucket_s=${bucket.value}&last=${last[bucket.value]}`);
    const t0 = s.start, unit = Number(bucket.value) === 60 ? 60 : Number(bucket.value);
    const pts = (fn) => s.data.map((m) => ({ name: m.model, points: m.buckets.map((b) => [(b.start - t0) / unit, fn(b)]) }));
    const xLabel = { 60: "minutes ago → now", 3600: "hours ago → now", 86400: "days ago → now" }[bucket.value];
    clear(charts).append(
      h("div", { class: "card chart-box" }, lineChart(pts((b) => b.requests), { title: "Requests", xLabel, bars: true, ...SIZE })),
      h("div", { class: "card chart-box" }, lineChart(pts((b) => b.mean_latency_ms), { title: "Mean latency (ms)", xLabel, ...SIZE })),
      h("div", { class: "card chart-box" }, lineChart(pts((b) => b.prompt_tokens + b.completion_tokens), { title: "Tokens", xLabel, bars: true, ...SIZE })));
  }

  async function driftStatus() {
    try {
      const d = await get("/v1/monitoring/drift");
      clear(drift).append(h("h2", {}, "Drift"), d.data.length
        ? table(["Model", "Status", "Score / threshold", "Live / reference prompts", "Note"], d.data.map((r) => [r.model,
          r.drifted === null
            ? h("span", { class: "status queued" }, "not enough data")
            : h("span", { class: `status ${r.drifted ? "failed" : "succeeded"}` }, r.drifted ? "drifted" : "no drift"),
          r.score !== null ? `${Number(r.score).toFixed(3)} / ${r.threshold}` : "",
          `${r.live_prompts} / ${r.reference_prompts}`, r.note || ""]))
        : h("p", { class: "muted" }, "No fine-tuned model has served requests yet."));
    } catch (err) { clear(drift).append(h("h2", {}, "Drift"), errorBox(err)); }
  }

  // The review is stored: Accept / Reject / Save edit are POST /v1/feedback/{id}; the queue is the pending items;
  // Export writes the accepted ones (with their edits) as a training file.
  async function feedback() {
    const [pending, accepted] = await Promise.all([
      get("/v1/feedback?status=pending&limit=500"), get("/v1/feedback?status=accepted&limit=10000")]);
    let acceptedCount = accepted.data.length;
    const exportBtn = h("button", { type: "button" }, "Export accepted as a training file");
    const count = h("p", { class: "muted", "aria-live": "polite" });
    const name = h("input", { type: "text", name: "export_name", value: "feedback.jsonl" });
    const list = h("ol", { class: "feedback" });
    const empty = h("p", { class: "muted" });
    const sync = () => {
      const left = list.children.length;
      exportBtn.disabled = !acceptedCount;
      count.textContent = `${left} pending review · ${acceptedCount} accepted, ready to export`;
      empty.textContent = left ? "" : "No feedback is waiting for review (new corrections come from POST /v1/feedback).";
    };
    const review = async (item, body, li, errorSlot) => {
      errorSlot.textContent = "";
      try {
        const out = await post(`/v1/feedback/${encodeURIComponent(item.id)}`, body);
        if (out.status === "pending") { item.edited_correction = out.edited_correction; toast("Edit saved (the original correction is kept)"); return; }
        li.remove();
        if (out.status === "accepted") acceptedCount += 1;
        toast(out.status === "accepted" ? "Accepted: it goes into the next export" : "Rejected: it will not be exported");
        sync();
      } catch (err) {
        if (err.param === "correction") errorSlot.textContent = err.message; else toast(err.message, "error");
      }
    };
    for (const item of pending.data) {
      const edit = h("textarea", { rows: 3, name: `correction-${item.id}`, value: item.edited_correction ?? item.correction });
      const box = field("Correction", edit, item.edited_correction !== null ? `Edited; as sent: ${item.correction}` : null);
      const li = h("li", { class: "card" });
      const prompt = item.messages.filter((m) => m.role === "user").map((m) => m.content).join("\n");
      li.append(
        h("p", { class: "muted" }, `${item.model} · ${fmtTime(item.created_at)}${item.rating !== null ? ` · rating ${item.rating}` : ""}`),
        h("p", {}, h("strong", {}, "Prompt: "), prompt),
        h("p", {}, h("strong", {}, "Model answered: "), item.completion || "—"),
        box.box,
        h("div", { class: "actions" },
          h("button", { type: "button", onclick: () => review(item, { status: "accepted", correction: edit.value }, li, box.error) }, "Accept"),
          h("button", { type: "button", class: "danger", onclick: () => review(item, { status: "rejected" }, li, box.error) }, "Reject"),
          h("button", { type: "button", onclick: () => review(item, { correction: edit.value }, li, box.error) }, "Save edit")));
      list.append(li);
    }
    clear(queue).append(h("h2", {}, "Feedback queue"), count, list, empty,
      h("div", { class: "actions" }, field("File name", name).box, exportBtn));
    sync();
    exportBtn.addEventListener("click", async () => {
      try {
        const file = await post("/v1/feedback/export", { filename: name.value.trim() || "feedback.jsonl" });
        toast(`Exported ${file.exported} accepted corrections as ${file.filename} (${file.id}), skipped ${file.skipped} not accepted; find it on the Data page`);
      } catch (err) { toast(err.message, "error"); }
    });
  }

  bucket.addEventListener("change", () => usage().catch((err) => charts.append(errorBox(err))));
  await Promise.all([usage(), feedback()]);
  driftStatus();
}
