// Jobs: the list with status, and a job page with live loss curves, events, checkpoints and
// pause / resume / cancel. Updates by polling the API every 1.5 s while the page is open.
import { get, post } from "../api.js";
import { lineChart } from "../charts.js";
import { append, clear, errorBox, fmtTime, h, table, toast } from "../dom.js";

export const title = "Jobs";
const DONE = new Set(["succeeded", "failed", "cancelled"]);
// the SVG's own size follows its box, so its text stays ~11 px on a phone and on a wide screen
const chartSize = (box) => { const w = Math.max(340, Math.min(1240, (box.clientWidth || 900) - 34)); return { width: w, height: Math.round(Math.max(220, w / 3)) }; };
const status = (s) => h("span", { class: `status ${s}` }, s);

export function render(main, jobId) {
  return jobId ? renderJob(main, jobId) : renderList(main);
}

async function renderList(main) {
  const list = h("div", {});
  main.append(h("h1", {}, "Jobs"), h("p", {}, h("a", { href: "#/new" }, "Create a fine-tune")), list);
  let timer;
  async function refresh() {
    try {
      const page = await get("/v1/fine_tuning/jobs?limit=100");
      clear(list);
      if (!page.data.length) list.append(h("p", { class: "muted" }, "No jobs yet."));
      else list.append(table(["Job", "Status", "Base", "Fine-tuned model", "Created"], page.data.map((j) => [
        h("a", { href: `#/jobs/${encodeURIComponent(j.id)}` }, j.id), status(j.status), j.model,
        j.fine_tuned_model || "", fmtTime(j.created_at)])));
      if (page.data.some((j) => !DONE.has(j.status))) timer = setTimeout(refresh, 3000);
    } catch (err) { clear(list).append(errorBox(err)); }
  }
  await refresh();
  return () => clearTimeout(timer);
}

async function renderJob(main, jobId) {
  const path = `/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}`;
  const head = h("div", { class: "job-head" });
  const controls = h("div", { class: "actions", role: "group", "aria-label": "Job controls" });
  const chart = h("div", { class: "card chart-box", id: "loss-chart" });
  const events = h("div", { class: "card events" });
  const checkpoints = h("div", { class: "card" });
  main.append(h("p", {}, h("a", { href: "#/jobs" }, "← All jobs")), head, controls, chart,
    h("div", { class: "two-col" }, events, checkpoints));
  const act = (verb) => async () => {
    try { await post(`${path}/${verb}`, {}); toast(`${verb} requested`); await refresh(); }
    catch (err) { toast(err.message, "error"); }
  };
  const buttons = {
    pause: h("button", { type: "button", onclick: act("pause") }, "Pause"),
    resume: h("button", { type: "button", onclick: act("resume") }, "Resume"),
    cancel: h("button", { type: "button", class: "danger", onclick: act("cancel") }, "Cancel"),
  };
  controls.append(buttons.pause, buttons.resume, buttons.cancel);

  let timer, stopped = false, curves = [];
  const drawChart = () => clear(chart).append(lineChart(curves, { title: "Loss", xLabel: "step", ...chartSize(chart) }));
  window.addEventListener("resize", drawChart);
  async function refresh() {
    clearTimeout(timer);
    try {
      const [job, ev, ck] = await Promise.all([get(path), get(`${path}/events?limit=1000`), get(`${path}/checkpoints?limit=100`)]);
      if (stopped) return;
      append(clear(head), [
        h("h1", {}, "Job ", h("code", {}, job.id)),
        h("p", { id: "job-status" }, "Status: ", status(job.status), job.fine_tuned_model ? " → " : "",
          job.fine_tuned_model ? h("a", { href: "#/models" }, job.fine_tuned_model) : null),
        h("p", { class: "muted" }, `Base ${job.model} · ${job.method.type} · epochs ${job.hyperparameters.n_epochs}, batch ${job.hyperparameters.batch_size}, lr ${job.tuneforge.learning_rate}` +
          (job.trained_tokens ? ` · ${job.trained_tokens} trained tokens` : "")),
        job.error && job.error.message ? errorBox(job.error) : null]);
      buttons.pause.disabled = !["running", "queued", "validating_files"].includes(job.status);
      buttons.resume.disabled = job.status !== "paused";
      buttons.cancel.disabled = DONE.has(job.status);
      const rows = [...ev.data].reverse(); // oldest first
      const train = [], valid = [];
      for (const e of rows) {
        if (e.type !== "metrics" || !e.data) continue;
        if (e.data.train_loss !== undefined) train.push([e.data.step, e.data.train_loss]);
        if (e.data.valid_loss !== undefined) valid.push([e.data.step, e.data.valid_loss]);
      }
      curves = [{ name: "training loss", points: train }, { name: "validation loss", points: valid }];
      drawChart();
      clear(events).append(h("h2", {}, "Events"),
        h("ol", { class: "event-list", reversed: true }, ev.data.slice(0, 200).map((e) =>
          h("li", { class: e.level }, h("time", {}, fmtTime(e.created_at)), " ", e.message))));
      clear(checkpoints).append(h("h2", {}, "Checkpoints"), ck.data.length
        ? table(["Step", "Model checkpoint", "Metrics"], ck.data.map((c) => [c.step_number, c.fine_tuned_model_checkpoint,
          Object.entries(c.metrics || {}).filter(([k]) => k !== "step").map(([k, v]) => `${k}=${Number(v).toFixed(4)}`).join(" ")]))
        : h("p", { class: "muted" }, "None yet."));
      if (!DONE.has(job.status)) timer = setTimeout(refresh, 1500);
    } catch (err) {
      clear(head).append(errorBox(err));
    }
  }
  await refresh();
  return () => { stopped = true; clearTimeout(timer); window.removeEventListener("resize", drawChart); };
}
