// HTTP side of the server: /v1/models, the admin API (docs/admin-api.md) and /stats.

const KEY_STORAGE = "inferd.adminKey";

/** The operator's API key (entered on the models page) lives in session
 * storage only (gone when the tab closes). It is sent with every request,
 * and on the WebSocket as the `bearer.<key>` subprotocol (browsers cannot
 * set headers there). */
export const adminKey = {
  get(): string {
    return sessionStorage.getItem(KEY_STORAGE) ?? "";
  },
  set(key: string): void {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  },
};

export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly code?: string,
  ) {
    super(message);
  }
}

/** The server's error body is {"error": {"message", "type", "code"}}; fall back to the status text. */
async function errorOf(res: Response): Promise<ApiError> {
  let message = `${res.status} ${res.statusText}`;
  let code: string | undefined;
  try {
    const body = await res.json();
    const e = body?.error;
    if (typeof e === "string") message = e;
    else if (e?.message) message = e.message;
    code = e?.code ?? e?.type;
  } catch {
    /* not JSON */
  }
  if (res.status === 401) message = `API key required (enter it on the Models page): ${message}`;
  if (res.status === 403) message = `This key lacks the admin scope: ${message}`;
  return new ApiError(message, res.status, code ?? undefined);
}

export async function request<T>(method: string, path: string, body?: unknown, _admin = false): Promise<{ data: T; headers: Headers }> {
  const headers: Record<string, string> = { accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  const key = adminKey.get();
  // `_admin` marks admin-API calls; the key goes with every call when set,
  // since inference routes need one too once keys are configured.
  if (key) headers.authorization = `Bearer ${key}`;
  let res: Response;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(`Cannot reach the server: ${(e as Error).message}`, 0);
  }
  if (!res.ok) throw await errorOf(res);
  const text = await res.text();
  return { data: (text ? JSON.parse(text) : null) as T, headers: res.headers };
}

// ---- /v1/models --------------------------------------------------------------

export interface ModelObject {
  id: string;
  version?: string;
  ready?: boolean;
}

export async function listModels(): Promise<ModelObject[]> {
  const { data } = await request<{ data: ModelObject[] }>("GET", "/v1/models");
  return data?.data ?? [];
}

/** The active version, from the x-inferd-model-version header (or the body). */
export async function activeVersion(model: string): Promise<string | undefined> {
  const { data, headers } = await request<ModelObject>("GET", `/v1/models/${encodeURIComponent(model)}`);
  return headers.get("x-inferd-model-version") ?? data?.version;
}

// ---- admin -------------------------------------------------------------------

export interface Replica {
  device: string;
  weight_bytes?: number;
  kv_bytes?: number;
  running?: number;
  waiting?: number;
  ready?: boolean;
}

export interface VersionEntry {
  version: string;
  state: string;
  error?: string | null;
  source?: string;
  dtype?: string;
  devices?: string[];
  is_active?: boolean;
  is_previous?: boolean;
  canary_weight?: number | null;
  memory_bytes?: number | null;
  replicas?: Replica[];
}

export interface ModelEntry {
  model: string;
  ready?: boolean;
  active?: string | null;
  previous?: string | null;
  canary?: { version: string; weight: number } | null;
  versions: VersionEntry[];
}

const m = (model: string) => `/admin/models/${encodeURIComponent(model)}`;

export const admin = {
  async list(): Promise<ModelEntry[]> {
    const { data } = await request<{ models: ModelEntry[] }>("GET", "/admin/models", undefined, true);
    return data?.models ?? [];
  },
  load: (model: string, body: { version: string; source: string; dtype?: string }) => request<ModelEntry>("POST", `${m(model)}/versions`, body, true),
  activate: (model: string, version: string) => request<ModelEntry>("POST", `${m(model)}/activate`, { version }, true),
  rollback: (model: string) => request<ModelEntry>("POST", `${m(model)}/rollback`, {}, true),
  setCanary: (model: string, version: string, weight: number) => request<ModelEntry>("PUT", `${m(model)}/canary`, { version, weight }, true),
  clearCanary: (model: string) => request<ModelEntry>("DELETE", `${m(model)}/canary`, undefined, true),
  unload: (model: string, version: string) => request<ModelEntry>("DELETE", `${m(model)}/versions/${encodeURIComponent(version)}`, undefined, true),
};

// ---- /stats ------------------------------------------------------------------

/** One row of /stats: per model version and device (docs/admin-api.md). */
export interface StatsRow {
  model: string;
  version?: string;
  device?: string;
  running?: number;
  waiting?: number;
  kv_usage?: number;
  requests_total?: number;
  errors_total?: number;
  prompt_tokens_total?: number;
  generation_tokens_total?: number;
  prefix_query_tokens?: number;
  prefix_hit_tokens?: number;
  ttft_p50?: number | null;
  ttft_p99?: number | null;
  itl_p50?: number | null;
  itl_p99?: number | null;
  e2e_p50?: number | null;
  e2e_p99?: number | null;
}

export interface Stats {
  time: number;
  rows: StatsRow[];
}

export async function fetchStats(): Promise<Stats> {
  const { data } = await request<{ time?: number; models?: StatsRow[]; replicas?: StatsRow[] }>("GET", "/stats");
  // The contract says `models`; early servers answered `replicas`.
  return { time: data?.time ?? Date.now() / 1000, rows: data?.models ?? data?.replicas ?? [] };
}
