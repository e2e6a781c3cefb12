// inferd console: three pages behind hash routes (#/playground, #/models,
// #/live), each built once and kept while hidden.

import "./style.css";
import { h } from "./dom";
import { createLive } from "./live";
import { createModels } from "./models";
import type { Page } from "./page";
import { createPlayground } from "./playground";

const pages: Record<string, Page> = {
  playground: createPlayground(),
  models: createModels(),
  live: createLive(),
};

const links = Object.entries(pages).map(([route, page]) => h("a", { href: `#/${route}`, "data-route": route }, page.title));
const main = h("main", { id: "main" }, ...Object.values(pages).map((p) => p.el));
const app = document.getElementById("app")!;
app.append(h("header", { class: "topbar" }, h("span", { class: "brand" }, "inferd"), h("nav", { "aria-label": "Console" }, ...links)), main);

let current: Page | null = null;

function route(): void {
  const name = location.hash.replace(/^#\/?/, "") || "playground";
  const page = pages[name] ?? pages.playground;
  if (page === current) return;
  current?.hide();
  for (const p of Object.values(pages)) p.el.hidden = p !== page;
  for (const a of links) {
    if (pages[a.dataset.route!] === page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.title = `${page.title} · inferd`;
  current = page;
  page.show();
}

window.addEventListener("hashchange", route);
route();
