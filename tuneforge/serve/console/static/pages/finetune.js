// New fine-tune: base model, files, method with its own fields, hyperparameters, suffix; the API's own checks
// answer (errors shown next to their field) and `tuneforge estimate` figures are shown before submitting.
import { ApiError, get, post } from "../api.js";
import { append, clear, errorBox, field, fmtBytes, h } from "../dom.js";

export const title = "New fine-tune";
const GIB = 1024 ** 3;

function select(name, options, value) {
  return h("select", { name }, options.map(([v, label]) => h("option", { value: v, selected: v === value }, label)));
}

function numberInput(name, placeholder, step = "any") {
  return h("input", { type: "number", name, placeholder, step, min: 0, inputmode: "decimal" });
}

function methodInput(f) {
  const name = `m_${f.name}`;
  if (f.kind === "bool") return h("input", { type: "checkbox", name, checked: f.default === true });
  if (f.kind === "choice") return select(name, f.choices.map((c) => [String(c), String(c)]), String(f.default));
  const value = Array.isArray(f.default) ? f.default.join(",") : f.default ?? "";
  const type = f.kind === "int" || f.kind === "float" ? "number" : "text";
  return h("input", { type, name, value: String(value), step: f.kind === "int" ? 1 : "any",
    placeholder: f.kind === "list" ? "comma-separated" : "" });
}

function methodValue(f, input) {
  if (f.kind === "bool") return input.checked;
  const raw = input.value.trim();
  if (raw === "") return undefined;
  if (f.kind === "int" || f.kind === "float") return Number(raw);
  if (f.kind === "list") return (f.also || []).includes(raw) ? raw : raw.split(",").map((s) => s.trim()).filter(Boolean);
  if (f.kind === "choice") return raw;
  return raw;
}

export async function render(main) {
  const [models, files, methods] = await Promise.all([
    get("/v1/models"), get("/v1/files?purpose=fine-tune"), get("/v1/tuneforge/methods")]);
  const bases = models.data.filter((m) => m.tuneforge?.kind === "base").map((m) => [m.id, m.id]);
  const fileOpts = files.data.map((f) => [f.id, `${f.filename} (${f.id}, ${fmtBytes(f.bytes)})`]);
  const fields = []; // {param, error, input} for placing the API's errors
  const add = (label, input, param, help) => {
    const f = field(label, input, help);
    fields.push({ param, error: f.error, input });
    return f.box;
  };
  const inputs = {
    model: select("model", bases, bases[0]?.[0]),
    training_file: select("training_file", fileOpts, fileOpts[0]?.[0]),
    validation_file: select("validation_file", [["", "(none)"], ...fileOpts], ""),
    type: select("type", [["supervised", "supervised (SFT)"], ["dpo", "dpo (preference pairs)"]], "supervised"),
    method: select("method", methods.data.map((m) => [m.name, m.name]), methods.data.find((m) => m.default)?.name),
    n_epochs: numberInput("n_epochs", "auto", 1),
    batch_size: numberInput("batch_size", "auto", 1),
    learning_rate_multiplier: numberInput("learning_rate_multiplier", "auto"),
    beta: numberInput("beta", "auto (0.1)"),
    max_steps: numberInput("max_steps", "all epochs", 1),
    max_length: numberInput("max_length", "model default", 1),
    log_every: numberInput("log_every", "default", 1),
    eval_every: numberInput("eval_every", "default", 1),
    suffix: h("input", { type: "text", name: "suffix", maxlength: 64, placeholder: "e.g. support-v1" }),
    seed: numberInput("seed", "42", 1),
  };
  const methodBox = h("fieldset", { class: "method-fields" });
  const betaBox = add("DPO beta", inputs.beta, "hyperparameters.beta", "Strength of the pull towards the reference model.");
  const estimateBox = h("section", { class: "card estimate", "aria-label": "Estimate", "aria-live": "polite" });
  const formError = h("div", { class: "form-error", role: "alert" });
  const noFiles = !fileOpts.length
    ? h("p", { class: "error-box" }, "Upload a training file on the Data page first.") : null;
  const form = h("form", { class: "card grid-form", novalidate: true },
    h("fieldset", {}, h("legend", {}, "Model and data"),
      add("Base model", inputs.model, "model"),
      add("Training file", inputs.training_file, "training_file"),
      add("Validation file", inputs.validation_file, "validation_file")),
    h("fieldset", {}, h("legend", {}, "Method"),
      add("Objective", inputs.type, "method.type"),
      add("Method", inputs.method, "tuneforge.method.name", "How weights are adapted (LoRA trains small low-rank matrices)."),
      methodBox, betaBox),
    h("fieldset", {}, h("legend", {}, "Hyperparameters"),
      add("Epochs", inputs.n_epochs, "hyperparameters.n_epochs", "Blank: auto, from the file size."),
      add("Batch size", inputs.batch_size, "hyperparameters.batch_size"),
      add("Learning rate multiplier", inputs.learning_rate_multiplier, "hyperparameters.learning_rate_multiplier"),
      add("Max steps", inputs.max_steps, "tuneforge.train.max_steps", "Stop after this many steps (optional)."),
      add("Max length (tokens)", inputs.max_length, "tuneforge.model.max_length"),
      add("Log loss every (steps)", inputs.log_every, "tuneforge.train.log_every", "Points on the training curve."),
      add("Validate every (steps)", inputs.eval_every, "tuneforge.train.eval_every", "Points on the validation curve."),
      add("Suffix", inputs.suffix, "suffix", "Part of the fine-tuned model's name: letters, digits, - _ ."),
      add("Seed", inputs.seed, "seed")),
    formError,
    h("button", { type: "submit", disabled: !fileOpts.length }, "Create fine-tune"));
  append(main, [h("h1", {}, "New fine-tune"), noFiles, h("div", { class: "two-col" }, form, estimateBox)]);

  let methodFields = [];
  function renderMethod() {
    const m = methods.data.find((x) => x.name === inputs.method.value);
    clear(methodBox).append(h("legend", {}, `${m.name} settings`));
    fields.splice(0, fields.length, ...fields.filter((f) => !f.param.startsWith("tuneforge.method.") || f.param === "tuneforge.method.name"));
    methodFields = m.fields.map((f) => ({ f, input: methodInput(f) }));
    if (!methodFields.length) methodBox.append(h("p", { class: "muted" }, "No settings: all weights are trained."));
    for (const { f, input } of methodFields) methodBox.append(add(f.name, input, `tuneforge.method.${f.name}`, f.help));
    betaBox.hidden = inputs.type.value !== "dpo";
  }

  function methodSection() {
    const out = { name: inputs.method.value };
    for (const { f, input } of methodFields) {
      const v = methodValue(f, input);
      if (v !== undefined && JSON.stringify(v) !== JSON.stringify(f.default)) out[f.name] = v;
    }
    return out;
  }
  const num = (input) => (input.value.trim() === "" ? undefined : Number(input.value));

  function body() {
    const hyper = {};
    for (const k of ["n_epochs", "batch_size", "learning_rate_multiplier"]) if (num(inputs[k]) !== undefined) hyper[k] = num(inputs[k]);
    if (inputs.type.value === "dpo" && num(inputs.beta) !== undefined) hyper.beta = num(inputs.beta);
    const tf = { method: methodSection() };
    const train = { max_steps: num(inputs.max_steps), log_every: num(inputs.log_every), eval_every: num(inputs.eval_every) };
    for (const k of Object.keys(train)) if (train[k] === undefined) delete train[k];
    if (Object.keys(train).length) tf.train = train;
    if (num(inputs.max_length) !== undefined) tf.model = { max_length: num(inputs.max_length) };
    return {
      model: inputs.model.value,
      training_file: inputs.training_file.value,
      validation_file: inputs.validation_file.value || undefined,
      suffix: inputs.suffix.value.trim() || undefined,
      seed: num(inputs.seed),
      method: { type: inputs.type.value, [inputs.type.value]: { hyperparameters: hyper } },
      tuneforge: tf,
    };
  }

  function showError(err) {
    for (const f of fields) f.error.textContent = "";
    formError.textContent = "";
    const place = (param, message) => {
      const f = param && fields.find((x) => param === x.param || param.endsWith(`.${x.param}`) || param.startsWith(`${x.param}.`));
      if (f) { f.error.textContent = message; return f; }
      return null;
    };
    let first = null;
    if (err instanceof ApiError && Array.isArray(err.details)) {
      for (const d of err.details) {
        const where = String(d.where || "").replace(/^tuneforge[.:]\s*/, ""); // "tuneforge: method.r" -> method.r
        const msg = `${d.message}${d.fix ? ` (fix: ${d.fix})` : ""}`;
        first = place(`tuneforge.${where}`, msg) || place(where, msg) || first;
      }
    }
    if (!first && err instanceof ApiError) first = place(err.param, err.message);
    if (first) first.input.focus();
    else formError.textContent = err.message;
  }

  let timer = null, seq = 0;
  function refreshEstimate() {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const mine = ++seq;
      clear(estimateBox).append(h("h2", {}, "Estimate"), h("p", { class: "muted" }, "Estimating…"));
      try {
        const e = await post("/v1/tuneforge/estimate", {
          model: inputs.model.value, method: methodSection(),
          batch_size: num(inputs.batch_size) || 1, seq_len: num(inputs.max_length) || 512,
        });
        if (mine !== seq) return;
        const mem = e.memory_bytes;
        clear(estimateBox).append(h("h2", {}, "Estimate"),
          h("dl", { class: "figures" },
            h("dt", {}, "Trainable parameters"),
            h("dd", { id: "est-trainable" }, `${e.trainable_params.toLocaleString()} of ${e.total_params.toLocaleString()} (${(100 * e.trainable_share).toFixed(3)}%)`),
            ...["weights", "gradients", "optimizer", "activations", "total"].flatMap((k) => [
              h("dt", {}, `Memory: ${k}`), h("dd", {}, `${(mem[k] / GIB).toFixed(3)} GiB`)])),
          h("p", { class: "muted" }, `Assumes ${e.assumptions.dtype}, batch ${e.assumptions.batch}, ${e.assumptions.seq_len} tokens, ${e.assumptions.optimizer}.`));
      } catch (err) {
        if (mine !== seq) return;
        clear(estimateBox).append(h("h2", {}, "Estimate"), errorBox(err));
      }
    }, 300);
  }

  inputs.method.addEventListener("change", () => { renderMethod(); refreshEstimate(); });
  inputs.type.addEventListener("change", () => { betaBox.hidden = inputs.type.value !== "dpo"; });
  form.addEventListener("input", refreshEstimate);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    showError({ message: "" });
    try {
      const job = await post("/v1/fine_tuning/jobs", body());
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (err) {
      showError(err);
    }
  });
  renderMethod();
  refreshEstimate();
}
