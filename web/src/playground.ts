// Playground: pick a model and version, chat or raw completion, sampling
// controls, streamed tokens over /v1/ws, stop button, per-message stats.

import { activeVersion, admin, listModels } from "./api";
import { chatMessages, store, samplingFields, type Message, type Settings } from "./conversation";
import { field, h, replace } from "./dom";
import type { Page } from "./page";
import { socket } from "./ws";

export function createPlayground(): Page {
  const s = store.settings;
  let running: { id: string | null; msg: Message } | null = null;

  // ---- settings form -------------------------------------------------------
  const modelSel = h("select", { id: "pg-model", onchange: () => { s.model = modelSel.value; s.version = ""; store.save(); refreshVersions(); } });
  const versionSel = h("select", { id: "pg-version", onchange: () => { s.version = versionSel.value; store.save(); } });
  const modeChat = h("input", { type: "radio", name: "pg-mode", value: "chat", checked: s.mode === "chat" });
  const modeRaw = h("input", { type: "radio", name: "pg-mode", value: "completion", checked: s.mode === "completion" });
  const system = h("textarea", { rows: 2, placeholder: "optional", value: s.system });

  const num = (key: keyof Settings, attrs: Record<string, unknown>) => {
    const el = h("input", { type: "number", value: String(s[key]), ...attrs });
    el.addEventListener("input", () => {
      const v = Number(el.value);
      if (Number.isFinite(v)) (s as unknown as Record<string, unknown>)[key] = v;
      store.save();
    });
    return el;
  };
  const seed = h("input", { type: "number", placeholder: "random", value: s.seed, oninput: () => { s.seed = seed.value; store.save(); } });
  const stop = h("textarea", { rows: 2, placeholder: "one per line", value: s.stop, oninput: () => { s.stop = stop.value; store.save(); } });
  system.addEventListener("input", () => { s.system = system.value; store.save(); });

  const systemField = field("System prompt", system);
  const onMode = () => {
    s.mode = modeRaw.checked ? "completion" : "chat";
    systemField.hidden = s.mode !== "chat";
    input.placeholder = s.mode === "chat" ? "Say something…" : "Text to continue…";
    store.save();
  };
  modeChat.addEventListener("change", onMode);
  modeRaw.addEventListener("change", onMode);

  const settings = h(
    "form",
    { class: "settings", "aria-label": "Generation settings", onsubmit: (e: Event) => e.preventDefault() },
    field("Model", modelSel),
    field("Version", versionSel),
    h("fieldset", { class: "mode" }, h("legend", {}, "Mode"), h("label", {}, modeChat, " Chat"), h("label", {}, modeRaw, " Completion")),
    systemField,
    field("Temperature", num("temperature", { min: 0, max: 2, step: 0.05 })),
    field("Top-p", num("top_p", { min: 0, max: 1, step: 0.01 })),
    field("Top-k", num("top_k", { min: 0, step: 1 }), "0 = off"),
    field("Max tokens", num("max_tokens", { min: 1, step: 1 })),
    field("Seed", seed),
    field("Stop sequences", stop),
  );

  // ---- conversation ----------------------------------------------------------
  const log = h("div", { class: "log", role: "log", "aria-label": "Conversation", "aria-live": "polite" });
  const views = new Map<Message, HTMLElement>();

  function statsView(m: Message): HTMLElement | null {
    const st = m.stats;
    if (!st) return null;
    const item = (label: string, value: string, testid: string) => h("span", { class: "stat", "data-testid": testid }, h("b", {}, label), " ", value);
    return h(
      "div",
      { class: "stats", "aria-label": "Message stats" },
      item("TTFT", st.ttft !== undefined ? `${(st.ttft * 1000).toFixed(0)} ms` : "–", "stat-ttft"),
      item("speed", st.tokensPerSec !== undefined ? `${st.tokensPerSec.toFixed(1)} tok/s` : "–", "stat-speed"),
      item("tokens", st.tokens !== undefined ? String(st.tokens) : "–", "stat-tokens"),
      st.finish ? h("span", { class: `stat finish finish-${st.finish}`, "data-testid": "finish" }, h("b", {}, "finish"), " ", st.finish) : null,
      st.version
        ? h("span", { class: "stat", "data-testid": "served-version", "data-version": st.version, title: st.versionSource === "server" ? "reported by the server" : "the active version when the reply finished" }, h("b", {}, "version"), " ", st.version)
        : null,
    );
  }

  function renderMessage(m: Message): HTMLElement {
    const streaming = running?.msg === m;
    const el = h(
      "article",
      { class: `msg msg-${m.role}${m.error ? " msg-error" : ""}`, "aria-label": `${m.role} message`, "aria-busy": streaming ? "true" : "false", "data-state": streaming ? "streaming" : m.error ? "error" : "done" },
      h("header", {}, m.role),
      h("div", { class: "content", "data-testid": "content" }, m.content || (streaming ? "…" : "")),
      m.error ? h("p", { class: "error", role: "alert" }, m.error) : null,
      statsView(m),
    );
    return el;
  }

  function update(m: Message): void {
    const old = views.get(m);
    const el = renderMessage(m);
    views.set(m, el);
    if (old) old.replaceWith(el);
    else log.append(el);
    log.scrollTop = log.scrollHeight;
  }

  function renderAll(): void {
    views.clear();
    replace(log);
    for (const m of store.messages) update(m);
    if (!store.messages.length) log.append(h("p", { class: "empty" }, "No messages yet."));
  }

  // ---- input -----------------------------------------------------------------
  const input = h("textarea", { id: "pg-input", rows: 3, "aria-label": "Message", placeholder: "Say something…" });
  const send = h("button", { type: "submit", class: "primary" }, "Send");
  const stopBtn = h("button", { type: "button", disabled: true, onclick: () => stopGeneration() }, "Stop");
  const clear = h("button", { type: "button", class: "quiet", onclick: () => { if (!running) { store.clear(); renderAll(); } } }, "Clear conversation");
  const status = h("p", { class: "status", role: "status", "aria-label": "Generation status" }, "Idle");
  const composer = h("form", { class: "composer", "aria-label": "Composer", onsubmit: (e: Event) => { e.preventDefault(); void start(); } }, input, h("div", { class: "buttons" }, send, stopBtn, clear), status);
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      void start();
    }
  });

  function setRunning(on: boolean): void {
    send.disabled = on;
    stopBtn.disabled = !on;
    clear.disabled = on;
    status.textContent = on ? "Generating…" : "Idle";
  }

  async function start(): Promise<void> {
    const text = input.value;
    if (running || !text.trim() || !s.model) return;
    const history = store.messages.slice();
    const req: Record<string, unknown> & { model: string } = { model: s.model, ...samplingFields(s) };
    if (s.version) req.version = s.version;
    if (s.mode === "chat") req.messages = chatMessages(s, history, text);
    else req.prompt = text;
    if (!store.messages.length) replace(log);

    const asked: Message = { role: s.mode === "chat" ? "user" : "prompt", content: text };
    const reply: Message = { role: s.mode === "chat" ? "assistant" : "completion", content: "", stats: {} };
    store.messages.push(asked, reply);
    input.value = "";
    running = { id: null, msg: reply };
    update(asked);
    update(reply);
    setRunning(true);

    const t0 = performance.now();
    let tFirst = 0;
    let tLast = 0;
    let count = 0;
    const finish = (fin: string, error?: string) => {
      running = null;
      reply.stats = { ...reply.stats, finish: fin };
      if (error) reply.error = error;
      store.save();
      update(reply);
      setRunning(false);
    };
    try {
      running.id = await socket.generate(req, {
        onToken(piece) {
          const now = performance.now();
          if (!count) tFirst = now;
          tLast = now;
          count++;
          reply.content += piece;
          reply.stats = { ...reply.stats, ttft: (tFirst - t0) / 1000, tokens: count };
          update(reply);
        },
        onDone(fin, usage, version) {
          const tokens = usage?.completion_tokens ?? count;
          const decode = (tLast - tFirst) / 1000;
          reply.stats = {
            ...reply.stats,
            tokens,
            promptTokens: usage?.prompt_tokens,
            tokensPerSec: count > 1 && decode > 0 ? (count - 1) / decode : undefined,
            version,
            versionSource: version ? "server" : undefined,
          };
          finish(fin);
          if (!version) void fillActiveVersion(reply, req.model);
        },
        onError(message) {
          finish("error", message);
        },
      });
    } catch (e) {
      finish("error", (e as Error).message);
    }
  }

  /** The server did not say which version served the reply: show the active one. */
  async function fillActiveVersion(m: Message, model: string): Promise<void> {
    try {
      const v = s.version || (await activeVersion(model));
      if (!v) return;
      m.stats = { ...m.stats, version: v, versionSource: "active" };
      store.save();
      update(m);
    } catch {
      /* leave it blank */
    }
  }

  function stopGeneration(): void {
    if (running?.id) {
      status.textContent = "Stopping…";
      socket.cancel(running.id);
    }
  }

  // ---- model and version lists --------------------------------------------------
  const listError = h("p", { class: "error", role: "alert", hidden: true });

  async function refreshModels(): Promise<void> {
    try {
      const models = await listModels();
      listError.hidden = true;
      replace(modelSel, ...models.map((m) => h("option", { value: m.id, selected: m.id === s.model }, m.id)));
      if (!models.some((m) => m.id === s.model)) s.model = models[0]?.id ?? "";
      modelSel.value = s.model;
      store.save();
      await refreshVersions();
    } catch (e) {
      listError.textContent = `Could not list models: ${(e as Error).message}`;
      listError.hidden = false;
    }
  }

  async function refreshVersions(): Promise<void> {
    const opts: HTMLOptionElement[] = [];
    let active: string | undefined;
    let versions: string[] = [];
    try {
      const entry = (await admin.list()).find((m) => m.model === s.model);
      active = entry?.active ?? undefined;
      versions = entry?.versions.filter((v) => v.state === "ready").map((v) => v.version) ?? [];
    } catch {
      // No admin access (or no admin API): only the active version is known.
      active = await activeVersion(s.model).catch(() => undefined);
    }
    opts.push(h("option", { value: "" }, active ? `active (${active})` : "active"));
    for (const v of versions) opts.push(h("option", { value: v, selected: v === s.version }, v));
    replace(versionSel, ...opts);
    if (!versions.includes(s.version)) s.version = "";
    versionSel.value = s.version;
  }

  const el = h(
    "section",
    { class: "page playground", "aria-labelledby": "pg-title" },
    h("h1", { id: "pg-title" }, "Playground"),
    listError,
    h("div", { class: "pg-grid" }, settings, h("div", { class: "chat" }, log, composer)),
  );
  // A reply whose stream was cut by a page reload never finished.
  for (const m of store.messages) if (m.stats && !m.stats.finish) m.stats.finish = "interrupted";
  renderAll();
  onMode();

  return {
    title: "Playground",
    el,
    show: () => void refreshModels(),
    hide: () => {},
  };
}
