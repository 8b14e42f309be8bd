import { ApiError, get, session } from "../api.js";
import { field, h } from "../dom.js";

export const title = "Sign in";

export function render(main) {
  const key = field("Project API key", h("input", { type: "password", name: "key", autocomplete: "off", required: true }),
    "Create one on the server with: tuneforge keys create --project NAME");
  const message = h("p", { class: "form-error", role: "alert", id: "signin-error" });
  const notice = sessionStorage.getItem("tuneforge.notice");
  sessionStorage.removeItem("tuneforge.notice");
  if (notice) message.textContent = notice;
  const form = h("form", { class: "card narrow", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Sign in to tuneforge"),
    h("p", {}, "The key stays in this browser tab only (session storage) and is sent as an Authorization header."),
    key.box, message, h("button", { type: "submit" }, "Sign in"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const value = key.input.value.trim();
    message.textContent = "";
    if (!value) { message.textContent = "Enter a project key."; return; }
    try {
      await get("/v1/models", { key: value });
      session.set(value);
      location.hash = "#/data";
    } catch (err) {
      message.textContent = err instanceof ApiError && err.status === 401
        ? `This key was not accepted: ${err.message}`
        : `Could not reach the server: ${err.message}`;
      key.input.focus();
    }
  });
  main.append(form);
  key.input.focus();
}
