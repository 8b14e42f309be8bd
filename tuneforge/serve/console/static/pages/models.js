// Models: base and fine-tuned models; delete a fine-tune, open its eval report, download adapter or merged model.
import { del, download, get } from "../api.js";
import { clear, errorBox, fmtTime, h, table, toast } from "../dom.js";

export const title = "Models";

export async function render(main) {
  const list = h("div", {});
  const report = h("div", { id: "eval-report" });
  main.append(h("h1", {}, "Models"), list, report);

  async function openReport(id) {
    clear(report).append(h("p", { class: "muted" }, "Loading the eval report…"));
    try {
      const html = await get(`/v1/tuneforge/models/${encodeURIComponent(id)}/eval_report`);
      // sandbox="" : the report's HTML runs no script and gets no access to this page or its key
      const frame = h("iframe", { sandbox: "", title: `Eval report of ${id}`, class: "report-frame" });
      frame.srcdoc = html;
      clear(report).append(h("h2", {}, `Eval report: ${id}`), frame);
    } catch (err) { clear(report).append(errorBox(err)); }
  }

  async function refresh() {
    const models = await get("/v1/models");
    const rows = models.data.map((m) => {
      const kind = m.tuneforge?.kind || "";
      const tuned = kind !== "base" && kind !== "embedding";
      const id = encodeURIComponent(m.id);
      return [m.id, tuned ? "fine-tuned" : kind, m.tuneforge?.base_model || "", tuned ? fmtTime(m.created) : "",
        tuned ? h("span", { class: "actions" },
          h("button", { type: "button", onclick: () => openReport(m.id), "aria-label": `Eval report of ${m.id}` }, "Eval report"),
          h("button", { type: "button", "aria-label": `Download adapter of ${m.id}`, onclick: () =>
            download(`/v1/tuneforge/models/${id}/download?form=adapter`, "adapter.zip").catch((e) => toast(e.message, "error")) }, "Adapter .zip"),
          h("button", { type: "button", "aria-label": `Download merged model of ${m.id}`, onclick: () => {
            toast("Merging the model, this can take a while…");
            download(`/v1/tuneforge/models/${id}/download?form=merged`, "merged.zip").catch((e) => toast(e.message, "error"));
          } }, "Merged .zip"),
          h("a", { class: "button", href: `#/playground/${id}` }, "Chat"),
          h("button", { type: "button", class: "danger", "aria-label": `Delete ${m.id}`, onclick: async () => {
            if (!confirm(`Delete ${m.id}? Its jobs stay; the model cannot be used any more.`)) return;
            try { await del(`/v1/models/${id}`); toast(`Deleted ${m.id}`); await refresh(); }
            catch (e) { toast(e.message, "error"); }
          } }, "Delete"))
        : kind === "embedding" ? h("span", { class: "muted" }, "for /v1/embeddings")
          : h("a", { class: "button", href: `#/playground/${id}` }, "Chat")];
    });
    clear(list).append(table(["Model", "Kind", "Base", "Created", ""], rows));
  }
  await refresh();
}
