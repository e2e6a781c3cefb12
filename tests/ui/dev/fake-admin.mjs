// Development only (not part of the test): a proxy in front of a real
// `inferd serve` that adds a fake admin API and a contract-shaped /stats,
// for working on the console before the server has them.
//   node tests/ui/dev/fake-admin.mjs <upstream-base-url> [port]
// Everything else (including the /v1/ws upgrade) goes to the upstream server.

import http from "node:http";
import net from "node:net";

const upstream = new URL(process.argv[2] ?? "http://127.0.0.1:8080");
const port = Number(process.argv[3] ?? 0);

const model = {
  model: "smollm2", ready: true, active: "v1", previous: null, canary: null,
  versions: [
    { version: "v1", state: "ready", error: null, source: "weights/smollm2.gguf", dtype: "bf16", devices: ["cpu"], memory_bytes: 180e6, replicas: [{ device: "cpu", weight_bytes: 170e6, kv_bytes: 10e6, running: 0, waiting: 0, ready: true }] },
  ],
};
function flags() {
  for (const v of model.versions) {
    v.is_active = v.version === model.active;
    v.is_previous = v.version === model.previous;
    v.canary_weight = model.canary?.version === v.version ? model.canary.weight : null;
  }
  return model;
}
const err = (res, status, message) => json(res, status, { error: { message, type: "invalid_request_error", param: null, code: null } });
function json(res, status, body, headers = {}) {
  res.writeHead(status, { "content-type": "application/json", ...headers });
  res.end(JSON.stringify(body));
}
const find = (v) => model.versions.find((x) => x.version === v);
let totals = { gen: 0, req: 0, pq: 0, ph: 0 };

async function admin(req, res, path, body) {
  const m = path.match(/^\/admin\/models(?:\/smollm2(\/.*)?)?$/);
  if (!m) return err(res, 404, "unknown model");
  const rest = m[1] ?? "";
  if (req.method === "GET") return json(res, 200, { models: [flags()] });
  if (req.method === "POST" && rest === "/versions") {
    if (find(body.version)) return err(res, 409, `version ${body.version} exists`);
    if (!body.source || body.source.includes("nonexistent")) return err(res, 500, `loading ${body.source} failed: no such file`);
    await new Promise((r) => setTimeout(r, 1500));
    model.versions.push({ version: body.version, state: "ready", error: null, source: body.source, dtype: body.dtype ?? "bf16", devices: ["cpu"], memory_bytes: 560e6, replicas: [{ device: "cpu", weight_bytes: 540e6, kv_bytes: 20e6, running: 0, waiting: 0, ready: true }] });
    return json(res, 200, flags());
  }
  if (req.method === "POST" && rest === "/activate") {
    if (!find(body.version)) return err(res, 404, `no version ${body.version}`);
    model.previous = model.active;
    model.active = body.version;
    return json(res, 200, flags());
  }
  if (req.method === "POST" && rest === "/rollback") {
    if (!model.previous) return err(res, 409, "no previous version");
    [model.active, model.previous] = [model.previous, model.active];
    return json(res, 200, flags());
  }
  if (req.method === "PUT" && rest === "/canary") { model.canary = { version: body.version, weight: body.weight }; return json(res, 200, flags()); }
  if (req.method === "DELETE" && rest === "/canary") { model.canary = null; return json(res, 200, flags()); }
  const del = rest.match(/^\/versions\/(.+)$/);
  if (req.method === "DELETE" && del) {
    if (del[1] === model.active || del[1] === model.canary?.version) return err(res, 409, `cannot unload ${del[1]}: it is active or canary`);
    model.versions = model.versions.filter((v) => v.version !== del[1]);
    return json(res, 200, flags());
  }
  return err(res, 404, "no such admin route");
}

function proxy(req, res, body) {
  const up = http.request({ host: upstream.hostname, port: upstream.port, path: req.url, method: req.method, headers: req.headers }, (r) => {
    res.writeHead(r.statusCode, r.headers);
    r.pipe(res);
  });
  up.on("error", (e) => err(res, 502, e.message));
  up.end(body);
}

const server = http.createServer(async (req, res) => {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const raw = Buffer.concat(chunks);
  const path = new URL(req.url, "http://x").pathname;
  if (path.startsWith("/admin")) return admin(req, res, path, raw.length ? JSON.parse(raw) : {});
  if (path === "/v1/models/smollm2") return json(res, 200, { id: "smollm2", object: "model", version: model.active, ready: true }, { "x-inferd-model-version": model.active });
  if (path === "/stats") {
    const real = await (await fetch(new URL("/stats", upstream))).json();
    const rows = (real.models ?? real.replicas ?? []).map((r) => {
      const busy = (r.running ?? 0) > 0;
      totals.gen += busy ? 20 + Math.round(Math.random() * 10) : 0;
      totals.req += busy ? 1 : 0;
      totals.pq += busy ? 50 : 0;
      totals.ph += busy ? 20 : 0;
      return { ...r, version: model.active, requests_total: totals.req, errors_total: 0, generation_tokens_total: totals.gen, prompt_tokens_total: totals.pq, prefix_query_tokens: totals.pq, prefix_hit_tokens: totals.ph,
        ttft_p50: 0.05 + Math.random() * 0.01, ttft_p99: 0.2 + Math.random() * 0.05, itl_p50: 0.02, itl_p99: 0.05 + Math.random() * 0.01, e2e_p50: 1, e2e_p99: 2 };
    });
    return json(res, 200, { time: Date.now() / 1000, uptime_secs: 1, models: rows });
  }
  proxy(req, res, raw);
});

// WebSocket upgrades: a raw TCP pipe to the upstream.
server.on("upgrade", (req, socket, head) => {
  const up = net.connect(Number(upstream.port), upstream.hostname, () => {
    up.write(`${req.method} ${req.url} HTTP/1.1\r\n${Object.entries(req.headers).map(([k, v]) => `${k}: ${v}`).join("\r\n")}\r\n\r\n`);
    up.write(head);
    socket.pipe(up).pipe(socket);
  });
  up.on("error", () => socket.destroy());
  socket.on("error", () => up.destroy());
});

server.listen(port, "127.0.0.1", () => console.log(`listening on http://127.0.0.1:${server.address().port}`));
