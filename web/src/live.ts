// Live page: throughput, TTFT/ITL percentiles, running/waiting requests, KV
// usage and prefix-hit rate over the last minutes, from GET /stats once a second.
// The poller starts with the app, so the history is there when the page opens.

import { fetchStats } from "./api";
import { TimeChart } from "./charts";
import { h, replace } from "./dom";
import type { Page } from "./page";
import { derive, push, type Sample } from "./stats-history";

const POLL_MS = 1000;
const C = { blue: "#2563eb", red: "#dc2626", green: "#16a34a", amber: "#d97706", violet: "#7c3aed" };

export function createLive(): Page {
  const history: Sample[] = [];
  const charts = {
    throughput: new TimeChart("Throughput", "tokens/s", [{ label: "generated", color: C.blue }]),
    ttft: new TimeChart("Time to first token", "ms", [{ label: "p50", color: C.green }, { label: "p99", color: C.red }]),
    itl: new TimeChart("Inter-token latency", "ms", [{ label: "p50", color: C.green }, { label: "p99", color: C.red }]),
    requests: new TimeChart("Requests", "count", [{ label: "running", color: C.blue }, { label: "waiting", color: C.amber }]),
    kv: new TimeChart("KV cache usage", "%", [{ label: "KV used", color: C.violet }], [0, 100]),
    prefix: new TimeChart("Prefix-hit rate", "%", [{ label: "last 60 s", color: C.green }], [0, 100]),
  };
  const cards = h("dl", { class: "now", "aria-label": "Current values" });
  const alert = h("p", { class: "error", role: "alert", hidden: true });
  const updated = h("p", { class: "muted", role: "status", "aria-label": "Last update" }, "Waiting for the first sample…");
  let visible = false;

  const fmt = (v: number | null, digits = 1, unit = "") => (v === null ? "–" : `${v.toFixed(digits)}${unit}`);

  function renderCards(s: Sample): void {
    const item = (label: string, value: string) => [h("div", {}, h("dt", {}, label), h("dd", { "aria-label": label }, value))];
    replace(
      cards,
      ...item("Throughput", fmt(s.throughput, 1, " tok/s")),
      ...item("Running", String(s.running)),
      ...item("Waiting", String(s.waiting)),
      ...item("TTFT p99", fmt(s.ttftP99, 0, " ms")),
      ...item("ITL p99", fmt(s.itlP99, 0, " ms")),
      ...item("KV usage", fmt(s.kvUsage, 1, "%")),
      ...item("Prefix hits", fmt(s.prefixHit, 1, "%")),
    );
  }

  function draw(): void {
    const t = history.map((s) => s.t);
    const col = (f: (s: Sample) => number | null) => history.map(f);
    charts.throughput.set(t, [col((s) => s.throughput)]);
    charts.ttft.set(t, [col((s) => s.ttftP50), col((s) => s.ttftP99)]);
    charts.itl.set(t, [col((s) => s.itlP50), col((s) => s.itlP99)]);
    charts.requests.set(t, [col((s) => s.running), col((s) => s.waiting)]);
    charts.kv.set(t, [col((s) => s.kvUsage)]);
    charts.prefix.set(t, [col((s) => s.prefixHit)]);
  }

  function render(): void {
    const last = history[history.length - 1];
    if (!last) return;
    renderCards(last);
    draw();
    updated.textContent = `Updated ${new Date(last.t * 1000).toLocaleTimeString()} · ${history.length} samples over the last ${Math.round(last.t - history[0].t)} s`;
  }

  async function poll(): Promise<void> {
    try {
      const stats = await fetchStats();
      const s = derive(history, stats);
      push(history, s);
      alert.hidden = true;
      if (visible) render();
    } catch (e) {
      alert.textContent = `Stats unavailable: ${(e as Error).message}`;
      alert.hidden = false;
    } finally {
      window.setTimeout(() => void poll(), POLL_MS);
    }
  }
  void poll();

  const grid = h("div", { class: "charts" }, ...Object.values(charts).map((c) => c.el));
  const el = h("section", { class: "page live-page", "aria-labelledby": "live-title" }, h("h1", { id: "live-title" }, "Live"), updated, alert, cards, grid);
  const onResize = () => Object.values(charts).forEach((c) => c.resize());

  return {
    title: "Live",
    el,
    show() {
      visible = true;
      window.addEventListener("resize", onResize);
      requestAnimationFrame(() => {
        onResize();
        render();
      });
    },
    hide() {
      visible = false;
      window.removeEventListener("resize", onResize);
    },
  };
}
