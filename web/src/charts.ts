// A thin wrapper over uPlot: one time-series chart with a title and a few
// series, sized to its container; exposes how many points it draws
// (data-points) so tests and people can tell an empty chart from a flat one.

import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { h } from "./dom";

export interface SeriesSpec {
  label: string;
  color: string;
}

export class TimeChart {
  readonly el: HTMLElement;
  private plot: uPlot | null = null;
  private readonly box: HTMLElement;
  private data: uPlot.AlignedData;

  constructor(
    readonly title: string,
    private readonly unit: string,
    private readonly series: SeriesSpec[],
    private readonly yRange?: [number, number],
  ) {
    this.box = h("div", { class: "chart-box" });
    this.el = h("figure", { class: "chart card", role: "figure", "aria-label": `${title} chart`, "data-points": "0" }, h("figcaption", {}, `${title} (${unit})`), this.box);
    this.data = [[], ...series.map(() => [])] as unknown as uPlot.AlignedData;
  }

  private build(): void {
    const width = Math.max(this.box.clientWidth, 240);
    const opts: uPlot.Options = {
      width,
      height: 180,
      series: [{}, ...this.series.map((s) => ({ label: s.label, stroke: s.color, width: 2, spanGaps: false, points: { show: false } }))],
      axes: [{}, { label: this.unit, size: 56 }],
      scales: { x: { time: true }, y: this.yRange ? { range: this.yRange } : { range: (_u, min, max) => [Math.min(0, min ?? 0), Math.max(1, (max ?? 1) * 1.1)] } },
      legend: { live: false },
      cursor: { show: true },
    };
    this.plot = new uPlot(opts, this.data, this.box);
  }

  /** Redraw with columns: times, then one array per series. */
  set(times: number[], columns: (number | null)[][]): void {
    this.data = [times, ...columns] as unknown as uPlot.AlignedData;
    const values = columns.flat().filter((v): v is number => v !== null && Number.isFinite(v));
    this.el.dataset.points = String(values.length);
    this.el.dataset.max = values.length ? String(Math.max(...values)) : "";
    if (!this.box.isConnected || this.box.clientWidth === 0) return; // hidden: draw on show
    if (!this.plot) this.build();
    else this.plot.setData(this.data);
  }

  resize(): void {
    if (!this.box.clientWidth) return;
    if (!this.plot) this.build();
    else this.plot.setSize({ width: this.box.clientWidth, height: 180 });
  }
}
