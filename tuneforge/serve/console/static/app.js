// The console's router: #/page[/id] -> a page module's render(main, arg). Signed out: the sign-in page.
import { session } from "./api.js";
import { clear, errorBox, h } from "./dom.js";
import * as data from "./pages/data.js";
import * as finetune from "./pages/finetune.js";
import * as jobs from "./pages/jobs.js";
import * as models from "./pages/models.js";
import * as monitoring from "./pages/monitoring.js";
import * as playground from "./pages/playground.js";
import * as signin from "./pages/signin.js";

const PAGES = { data, new: finetune, jobs, models, playground, monitoring, signin };
let stopCurrent = null; // a page's cleanup (polling timers, open streams)

function route() {
  const [, name = "", arg] = (location.hash || "#/").split("/");
  const signedIn = Boolean(session.key);
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("signout").hidden = !signedIn;
  document.getElementById("who").textContent = signedIn ? `key ${session.key.slice(0, 6)}…` : "";
  const page = !signedIn ? signin : PAGES[name] || (name ? null : data);
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.getAttribute("href") === `#/${name}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (stopCurrent) stopCurrent();
  stopCurrent = null;
  const main = clear(document.getElementById("main"));
  if (!page) {
    main.append(h("h1", {}, "Not found"), h("p", {}, "No such page. Use the menu above."));
    return;
  }
  document.title = `${page.title} - tuneforge`;
  Promise.resolve(page.render(main, arg ? decodeURIComponent(arg) : undefined))
    .then((stop) => { stopCurrent = typeof stop === "function" ? stop : null; })
    .catch((err) => main.append(errorBox(err)));
}

window.addEventListener("hashchange", route);
window.addEventListener("tuneforge:unauthorized", () => {
  session.clear();
  sessionStorage.setItem("tuneforge.notice", "Your key is no longer accepted (revoked?). Sign in again.");
  location.hash = "#/signin";
  route();
});
document.getElementById("signout").addEventListener("click", () => {
  session.clear();
  location.hash = "#/signin";
  route();
});
route();
