// Playground: one prompt to two models side by side (e.g. the base and its fine-tune), streamed, with sampling settings.
import { get, streamChat } from "../api.js";
import { clear, field, h } from "../dom.js";

export const title = "Playground";

export async function render(main, preselect) {
  const models = (await get("/v1/models")).data.filter((m) => m.tuneforge?.kind !== "embedding").map((m) => m.id);
  const tuned = models.filter((m) => m.startsWith("ft:"));
  const right = preselect && models.includes(preselect) ? preselect : tuned[tuned.length - 1] || models[0];
  const picks = [0, 1].map((i) => h("select", { name: `model${i}` },
    models.map((m) => h("option", { value: m, selected: m === (i ? right : models[0]) }, m))));
  const settings = {
    temperature: h("input", { type: "number", name: "temperature", value: "0.7", step: "0.1", min: 0, max: 2 }),
    top_p: h("input", { type: "number", name: "top_p", value: "1", step: "0.05", min: 0, max: 1 }),
    max_tokens: h("input", { type: "number", name: "max_tokens", value: "64", step: 1, min: 1 }),
    seed: h("input", { type: "number", name: "seed", value: "0", step: 1, min: 0 }),
  };
  const system = h("textarea", { name: "system", rows: 2, placeholder: "optional system message" });
  const prompt = h("textarea", { name: "prompt", rows: 3, required: true, placeholder: "Ask something" });
  const titles = [0, 1].map((i) => h("h2", { class: "pane-title" }, picks[i].value));
  const panes = [0, 1].map((i) => h("section", { class: "card pane", "aria-label": `Model ${i + 1} conversation` },
    titles[i], h("div", { class: "conversation", "aria-live": "polite", id: `conv${i}` })));
  picks.forEach((p, i) => p.addEventListener("change", () => { titles[i].textContent = p.value; }));
  const send = h("button", { type: "submit" }, "Send to both");
  const stop = h("button", { type: "button", disabled: true }, "Stop");
  const clearBtn = h("button", { type: "button" }, "Clear conversation");
  const histories = [[], []];
  const form = h("form", { class: "card" },
    h("div", { class: "row" }, field("Left model", picks[0]).box, field("Right model", picks[1]).box),
    h("div", { class: "row settings" }, Object.entries(settings).map(([k, input]) => field(k.replace("_", " "), input).box)),
    field("System message", system).box, field("Message", prompt, "Enter sends; Shift+Enter for a new line.").box,
    h("div", { class: "actions" }, send, stop, clearBtn));
  main.append(h("h1", {}, "Playground"), form, h("div", { class: "two-col" }, panes));

  let controller = null;
  const bubble = (role, text) => h("div", { class: `msg ${role}` }, h("span", { class: "role" }, role), h("p", {}, text));
  clearBtn.addEventListener("click", () => {
    histories[0] = []; histories[1] = [];
    for (const p of panes) clear(p.querySelector('.conversation'));
  });
  stop.addEventListener("click", () => controller?.abort());
  prompt.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); form.requestSubmit(); }
  });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const text = prompt.value.trim();
    if (!text) return;
    prompt.value = "";
    controller = new AbortController();
    send.disabled = true; stop.disabled = false;
    const sampling = {
      temperature: Number(settings.temperature.value), top_p: Number(settings.top_p.value),
      max_tokens: Number(settings.max_tokens.value), seed: Number(settings.seed.value),
    };
    await Promise.all([0, 1].map(async (i) => {
      const conv = panes[i].querySelector('.conversation');
      histories[i].push({ role: "user", content: text });
      conv.append(bubble("user", text));
      const answer = bubble("assistant", "");
      answer.classList.add("streaming");
      conv.append(answer);
      const body = answer.querySelector("p");
      const messages = [...(system.value.trim() ? [{ role: "system", content: system.value.trim() }] : []), ...histories[i]];
      try {
        const full = await streamChat({ model: picks[i].value, messages, ...sampling },
          (_piece, all) => { body.textContent = all; }, controller.signal);
        histories[i].push({ role: "assistant", content: full });
      } catch (err) {
        body.textContent = err.name === "AbortError" ? `${body.textContent} [stopped]` : `Error: ${err.message}`;
        answer.classList.add("failed");
      }
      answer.classList.remove("streaming");
      answer.classList.add("done");
    }));
    send.disabled = false; stop.disabled = true;
    prompt.focus();
  });
}
