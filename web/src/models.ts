// Models page: every model with its versions, states, memory and replicas;
// load, activate, rollback, canary weight and unload through /admin.

import { adminKey, admin, ApiError, type ModelEntry, type VersionEntry } from "./api";
import { confirmAction } from "./confirm";
import { field, fmtBytes, h, replace } from "./dom";
import type { Page } from "./page";

const REFRESH_MS = 2000;

export function createModels(): Page {
  const alert = h("div", { class: "alert error", role: "alert", hidden: true });
  const notice = h("p", { class: "notice", role: "status", "aria-label": "Last action" });
  const list = h("div", { class: "models", "aria-label": "Models" });
  let timer: number | undefined;
  let lastJson = "";
  let busy = false;

  // ---- admin key (session storage only) ------------------------------------------
  const keyInput = h("input", { type: "password", autocomplete: "off", value: adminKey.get(), placeholder: "needed when API keys are configured" });
  const keyForm = h(
    "form",
    { class: "admin-key", "aria-label": "Admin key", onsubmit: (e: Event) => { e.preventDefault(); adminKey.set(keyInput.value.trim()); say("Admin key saved for this browser session."); void refresh(true); } },
    field("Admin key", keyInput, "Kept in this tab's session storage only."),
    h("button", { type: "submit" }, "Use key"),
    h("button", { type: "button", class: "quiet", onclick: () => { adminKey.set(""); keyInput.value = ""; say("Admin key forgotten."); void refresh(true); } }, "Forget key"),
  );

  function say(text: string): void {
    alert.hidden = true;
    notice.textContent = text;
  }
  function fail(what: string, e: unknown): void {
    const err = e as ApiError;
    alert.textContent = `${what} failed: ${err.message}${err.status ? ` (HTTP ${err.status})` : ""}`;
    alert.hidden = false;
    notice.textContent = "";
  }

  /** Run an admin action after confirmation, then refresh. */
  async function act(title: string, detail: string, run: () => Promise<unknown>, done: string): Promise<void> {
    if (busy || !(await confirmAction(title, detail))) return;
    busy = true;
    list.setAttribute("aria-busy", "true");
    notice.textContent = `${title}…`;
    try {
      await run();
      say(done);
    } catch (e) {
      fail(title, e);
    } finally {
      busy = false;
      list.setAttribute("aria-busy", "false");
      await refresh(true);
    }
  }

  // ---- rendering ---------------------------------------------------------------------
  function replicasCell(v: VersionEntry): HTMLElement {
    const reps = v.replicas ?? [];
    if (!reps.length) return h("td", {}, "–");
    return h(
      "td",
      {},
      h("ul", { class: "replicas" }, ...reps.map((r) => h("li", {}, `${r.device}: ${r.ready ? "ready" : "not ready"}, ${r.running ?? 0} running, ${r.waiting ?? 0} waiting, weights ${fmtBytes(r.weight_bytes)}, KV ${fmtBytes(r.kv_bytes)}`))),
    );
  }

  function actionsCell(m: ModelEntry, v: VersionEntry): HTMLElement {
    const ver = v.version;
    const ready = v.state === "ready";
    const isCanary = m.canary?.version === ver;
    const weight = h("input", { type: "number", min: 0, max: 100, step: 1, value: String(v.canary_weight ?? m.canary?.weight ?? 10), "aria-label": `Canary weight for ${ver}`, class: "weight" });
    return h(
      "td",
      { class: "actions" },
      h("button", { type: "button", disabled: v.is_active || !ready, "aria-label": `Activate ${ver}`, onclick: () => act(`Activate ${m.model} ${ver}`, `New requests for ${m.model} go to ${ver}; ${m.active ?? "the current version"} drains.`, () => admin.activate(m.model, ver), `${m.model} ${ver} is now active.`) }, "Activate"),
      h(
        "span",
        { class: "canary-set" },
        weight,
        h("button", {
          type: "button",
          disabled: v.is_active || !ready,
          "aria-label": `Set canary for ${ver}`,
          onclick: () => {
            const w = Math.round(Number(weight.value));
            if (!Number.isFinite(w) || w < 0 || w > 100) return fail("Set canary", new ApiError("weight must be 0-100", 0));
            return act(`Send ${w}% of ${m.model} to ${ver}`, `A canary split: ${w}% of new requests go to ${ver}, sticky per session.`, () => admin.setCanary(m.model, ver, w), `Canary ${ver} at ${w}%.`);
          },
        }, "Set canary"),
      ),
      h("button", { type: "button", class: "danger", disabled: v.is_active || isCanary || v.state === "unloaded", "aria-label": `Unload ${ver}`, onclick: () => act(`Unload ${m.model} ${ver}`, `Frees ${fmtBytes(v.memory_bytes)}; the version must be loaded again to use it.`, () => admin.unload(m.model, ver), `${m.model} ${ver} unloaded.`) }, "Unload"),
    );
  }

  function versionRow(m: ModelEntry, v: VersionEntry): HTMLElement {
    const flags = [v.is_active ? "active" : "", v.is_previous ? "previous" : "", v.canary_weight != null ? `canary ${v.canary_weight}%` : ""].filter(Boolean);
    return h(
      "tr",
      { "data-version": v.version, "data-state": v.state, "data-active": v.is_active ? "true" : "false" },
      h("th", { scope: "row" }, v.version, ...flags.map((f) => h("span", { class: `badge badge-${f.split(" ")[0]}` }, f))),
      h("td", {}, h("span", { class: `state state-${v.state}` }, v.state), v.error ? h("p", { class: "error" }, v.error) : null),
      h("td", {}, v.dtype ?? "–"),
      h("td", {}, (v.devices ?? []).join(", ") || "–"),
      h("td", {}, fmtBytes(v.memory_bytes)),
      replicasCell(v),
      actionsCell(m, v),
    );
  }

  function loadForm(m: ModelEntry): HTMLElement {
    const version = h("input", { required: true, placeholder: "v2" });
    const source = h("input", { required: true, placeholder: "path/to/model.gguf or HF folder", class: "wide" });
    const dtype = h("select", {}, ...["bf16", "f16", "f32"].map((d) => h("option", { value: d }, d)));
    return h(
      "form",
      {
        class: "load-form",
        "aria-label": `Load a version of ${m.model}`,
        onsubmit: (e: Event) => {
          e.preventDefault();
          const body = { version: version.value.trim(), source: source.value.trim(), dtype: dtype.value };
          if (!body.version || !body.source) return;
          void act(`Load ${m.model} ${body.version}`, `Loads ${body.source} (${body.dtype}) beside the active version and warms it.`, () => admin.load(m.model, body), `${m.model} ${body.version} loaded.`);
        },
      },
      field("New version", version),
      field("Source", source),
      field("Dtype", dtype),
      h("button", { type: "submit" }, "Load version"),
    );
  }

  function modelSection(m: ModelEntry): HTMLElement {
    return h(
      "section",
      { class: "model card", "aria-label": `Model ${m.model}`, "data-model": m.model },
      h("h2", {}, m.model, " ", h("span", { class: `state ${m.ready ? "state-ready" : "state-loading"}` }, m.ready ? "ready" : "not ready")),
      h(
        "p",
        { class: "summary" },
        `active: ${m.active ?? "–"} · previous: ${m.previous ?? "–"} · canary: ${m.canary ? `${m.canary.version} at ${m.canary.weight}%` : "none"}`,
      ),
      h(
        "div",
        { class: "buttons" },
        h("button", { type: "button", disabled: !m.previous, onclick: () => act(`Roll back ${m.model}`, `Activate the previous version (${m.previous}) again.`, () => admin.rollback(m.model), `${m.model} rolled back.`) }, "Roll back"),
        h("button", { type: "button", disabled: !m.canary, onclick: () => act(`Remove the canary of ${m.model}`, "All new requests go to the active version.", () => admin.clearCanary(m.model), "Canary removed.") }, "Remove canary"),
      ),
      h(
        "table",
        { class: "versions", "aria-label": `Versions of ${m.model}` },
        h("thead", {}, h("tr", {}, ...["Version", "State", "Dtype", "Devices", "Memory", "Replicas", "Actions"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, ...m.versions.map((v) => versionRow(m, v))),
      ),
      loadForm(m),
    );
  }

  async function refresh(force = false): Promise<void> {
    if (busy && !force) return;
    try {
      const models = await admin.list();
      const json = JSON.stringify(models);
      // Keep what the user is typing: no timed redraw while an input in the list has focus.
      const typing = list.contains(document.activeElement) && document.activeElement?.tagName !== "BUTTON";
      if (force || (json !== lastJson && !typing)) {
        lastJson = json;
        replace(list, ...(models.length ? models.map(modelSection) : [h("p", {}, "No models.")]));
      }
      if (!alert.textContent?.includes("failed:")) alert.hidden = true;
    } catch (e) {
      lastJson = "";
      replace(list);
      alert.textContent = e instanceof ApiError && e.status === 404 ? "This server has no admin API." : `Listing models failed: ${(e as Error).message}`;
      alert.hidden = false;
    }
  }

  const el = h("section", { class: "page models-page", "aria-labelledby": "models-title" }, h("h1", { id: "models-title" }, "Models"), keyForm, alert, notice, list);

  return {
    title: "Models",
    el,
    show() {
      void refresh(true);
      timer = window.setInterval(() => void refresh(), REFRESH_MS);
    },
    hide() {
      window.clearInterval(timer);
    },
  };
}
