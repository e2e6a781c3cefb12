// Turns successive /stats answers into chart samples (pure; no DOM).
// Throughput comes from generation_tokens_total deltas, the prefix-hit rate
// from prefix token deltas over the last minute; percentiles are the worst
// (max) over all model replicas.

import type { Stats, StatsRow } from "./api";

export interface Sample {
  t: number; // unix seconds
  throughput: number | null; // generated tokens/s
  ttftP50: number | null; // ms
  ttftP99: number | null;
  itlP50: number | null;
  itlP99: number | null;
  running: number;
  waiting: number;
  kvUsage: number | null; // %
  prefixHit: number | null; // %, over the last PREFIX_WINDOW_S
  // raw totals, for deltas
  genTotals: Map<string, number>;
  prefixQuery: number;
  prefixHitTokens: number;
}

export const HISTORY_S = 300; // keep five minutes
export const PREFIX_WINDOW_S = 60;

const key = (r: StatsRow) => `${r.model}/${r.version ?? ""}/${r.device ?? ""}`;

function maxOf(rows: StatsRow[], pick: (r: StatsRow) => number | null | undefined, scale = 1): number | null {
  let best: number | null = null;
  for (const r of rows) {
    const v = pick(r);
    if (typeof v === "number" && Number.isFinite(v)) best = best === null ? v : Math.max(best, v);
  }
  return best === null ? null : best * scale;
}

const sum = (rows: StatsRow[], pick: (r: StatsRow) => number | undefined) => rows.reduce((a, r) => a + (pick(r) ?? 0), 0);

export function derive(history: Sample[], cur: Stats): Sample {
  const rows = cur.rows;
  const prev = history[history.length - 1];
  const genTotals = new Map<string, number>();
  for (const r of rows) if (typeof r.generation_tokens_total === "number") genTotals.set(key(r), r.generation_tokens_total);

  // Tokens generated since the previous sample, by replicas present in both
  // (a replica that appears or restarts contributes from its next sample on).
  let throughput: number | null = null;
  if (prev && genTotals.size && cur.time > prev.t) {
    let delta = 0;
    for (const [k, v] of genTotals) {
      const before = prev.genTotals.get(k);
      if (before !== undefined && v >= before) delta += v - before;
    }
    throughput = delta / (cur.time - prev.t);
  }

  const prefixQuery = sum(rows, (r) => r.prefix_query_tokens);
  const prefixHitTokens = sum(rows, (r) => r.prefix_hit_tokens);
  const base = history.find((s) => s.t >= cur.time - PREFIX_WINDOW_S) ?? prev;
  let prefixHit: number | null = null;
  if (base && prefixQuery > base.prefixQuery && prefixHitTokens >= base.prefixHitTokens) {
    prefixHit = (100 * (prefixHitTokens - base.prefixHitTokens)) / (prefixQuery - base.prefixQuery);
  } else if (!base && prefixQuery > 0) {
    prefixHit = (100 * prefixHitTokens) / prefixQuery;
  }

  return {
    t: cur.time,
    throughput,
    ttftP50: maxOf(rows, (r) => r.ttft_p50, 1000),
    ttftP99: maxOf(rows, (r) => r.ttft_p99, 1000),
    itlP50: maxOf(rows, (r) => r.itl_p50, 1000),
    itlP99: maxOf(rows, (r) => r.itl_p99, 1000),
    running: sum(rows, (r) => r.running),
    waiting: sum(rows, (r) => r.waiting),
    kvUsage: maxOf(rows, (r) => r.kv_usage, 100),
    prefixHit,
    genTotals,
    prefixQuery,
    prefixHitTokens,
  };
}

/** Append `s`, dropping samples older than HISTORY_S. */
export function push(history: Sample[], s: Sample): void {
  history.push(s);
  while (history.length && history[0].t < s.t - HISTORY_S) history.shift();
}
