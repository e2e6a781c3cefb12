//! Static checks of the deployment files (no container engine needed): the
//! Dockerfile, docker-compose.yml (+ docker-compose.cpu.yml), deploy/nginx,
//! deploy/prometheus, deploy/grafana and deploy/kubernetes are parsed and
//! cross-checked against each other and against the project:
//! - every metric they name is in deploy/metrics.txt (histograms only as
//!   `_bucket`/`_sum`/`_count`), and every metric of deploy/metrics.txt
//!   appears in the Rust sources under src/;
//! - every HTTP path they probe or scrape is a route string in src/, and
//!   every admin path of deploy/README.md is in docs/admin-api.md;
//! - every port agrees (replica port, nginx, Prometheus, Grafana, probes);
//! - every file they mount, copy or list exists (and is not .dockerignored);
//! - every inferd config they point at parses with `inferd::config::Config`
//!   and reads its weights from the mounted weights volume.
//!
//! A renamed metric, endpoint, port or file breaks one of these tests, which
//! name what is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use inferd::config::Config;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let p = root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

fn exists(rel: &str) -> bool {
    root().join(rel).exists()
}

/// One YAML document, with `<<` merge keys applied.
fn yaml(rel: &str) -> Yaml {
    let mut v: Yaml = serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    v.apply_merge().unwrap_or_else(|e| panic!("{rel}: merge keys: {e}"));
    v
}

/// Every document of a multi-document YAML file.
fn yaml_docs(rel: &str) -> Vec<Yaml> {
    let text = read(rel);
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .filter(|v: &Yaml| !v.is_null())
        .collect()
}

fn s(v: &Yaml) -> &str {
    v.as_str().unwrap_or_else(|| panic!("expected a string, got {v:?}"))
}

fn strs(v: &Yaml) -> Vec<String> {
    v.as_sequence().unwrap_or_else(|| panic!("expected a list, got {v:?}")).iter().map(|x| s(x).to_string()).collect()
}

/// `path` with `.` and `..` resolved lexically.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

// ---- the project's side: sources, routes, metrics -------------------------

/// Every .rs file under `dir` (relative to the root), with its text.
fn rust_files(dir: &str) -> Vec<(PathBuf, String)> {
    fn walk(p: &Path, out: &mut Vec<(PathBuf, String)>) {
        let Ok(rd) = std::fs::read_dir(p) else { return };
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|x| x == "rs") {
                out.push((path.clone(), std::fs::read_to_string(&path).unwrap_or_default()));
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join(dir), &mut out);
    assert!(!out.is_empty(), "no Rust sources under {dir}");
    out
}

fn src_contains(needle: &str) -> bool {
    rust_files("src").iter().any(|(_, t)| t.contains(needle))
}

/// `path` must be registered as a route: the string literal "path" in src/.
fn assert_routes(paths: &BTreeSet<String>, used_by: &str) {
    let missing: Vec<_> = paths.iter().filter(|p| !src_contains(&format!("\"{p}\""))).collect();
    assert!(missing.is_empty(), "{used_by} uses HTTP paths that no route string in src/ names: {missing:?}");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// deploy/metrics.txt: name -> type.
fn metrics() -> BTreeMap<String, Kind> {
    let mut out = BTreeMap::new();
    for (i, line) in read("deploy/metrics.txt").lines().enumerate() {
        let line = line.split('#').next().unwrap().trim();
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 2, "deploy/metrics.txt line {}: want `name type`, got {line:?}", i + 1);
        let kind = match f[1] {
            "counter" => Kind::Counter,
            "gauge" => Kind::Gauge,
            "histogram" => Kind::Histogram,
            t => panic!("deploy/metrics.txt line {}: unknown type {t:?}", i + 1),
        };
        let name = f[0];
        assert!(name.starts_with("inferd_") && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "bad metric name {name:?}");
        assert_eq!(kind == Kind::Counter, name.ends_with("_total"), "{name}: counters and only counters end in _total");
        assert!(out.insert(name.to_string(), kind).is_none(), "{name} listed twice");
    }
    assert!(out.len() >= 10, "deploy/metrics.txt lists only {} metrics", out.len());
    out
}

/// Every `inferd_xxx` token in `text` (a metric reference).
fn metric_tokens(text: &str) -> BTreeSet<String> {
    let b = text.as_bytes();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while let Some(off) = text[i..].find("inferd_") {
        let start = i + off;
        let mut end = start + "inferd_".len();
        while end < b.len() && (b[end].is_ascii_lowercase() || b[end].is_ascii_digit() || b[end] == b'_') {
            end += 1;
        }
        let boundary = start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        if boundary {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

/// Checks that every metric token of `text` is a listed metric, used the
/// way its type allows; returns the base names used.
fn check_metric_refs(text: &str, what: &str) -> BTreeSet<String> {
    let m = metrics();
    let mut used = BTreeSet::new();
    let mut bad = Vec::new();
    for t in metric_tokens(text) {
        match m.get(&t) {
            Some(Kind::Histogram) => bad.push(format!("{t} (a histogram: use {t}_bucket/_sum/_count)")),
            Some(_) => {
                used.insert(t);
            }
            None => {
                let base = ["_bucket", "_sum", "_count"].iter().find_map(|suf| t.strip_suffix(suf)).filter(|b| m.get(*b) == Some(&Kind::Histogram));
                match base {
                    Some(b) => {
                        used.insert(b.to_string());
                    }
                    None => bad.push(format!("{t} (not in deploy/metrics.txt)")),
                }
            }
        }
    }
    assert!(bad.is_empty(), "{what} names unknown or misused metrics: {bad:?}");
    used
}

#[test]
fn every_listed_metric_is_in_the_sources() {
    // The engine records them (actors/src/metrics.rs); src/api/metrics.rs serves them.
    let mut files = rust_files("src");
    files.extend(rust_files("actors/src"));
    let missing: Vec<String> = metrics().keys().filter(|n| !files.iter().any(|(_, t)| t.contains(n.as_str()))).cloned().collect();
    assert!(
        missing.is_empty(),
        "{} of deploy/metrics.txt's metrics appear nowhere in src/ or actors/src/ (the /metrics endpoint must export them under these names): {missing:?}",
        missing.len()
    );
    // And the other way: a metric literal in a metrics module must be listed.
    let m = metrics();
    for (path, text) in files.iter().filter(|(p, _)| p.file_name().is_some_and(|f| f == "metrics.rs")) {
        for t in metric_tokens(text) {
            let listed = m.contains_key(&t) || ["_bucket", "_sum", "_count"].iter().any(|s| t.strip_suffix(s).is_some_and(|b| m.contains_key(b)));
            // `inferd_actors` is the engine crate's name, not a metric.
            assert!(listed || t.ends_with('_') || t == "inferd_actors", "{} exports {t}, which deploy/metrics.txt does not list", path.display());
        }
    }
}

// ---- Dockerfile --------------------------------------------------------------

struct Dockerfile {
    /// Logical lines (continuations joined).
    lines: Vec<String>,
}

impl Dockerfile {
    fn load() -> Dockerfile {
        let mut lines = Vec::new();
        let mut cur = String::new();
        for l in read("Dockerfile").lines() {
            let t = l.trim();
            if cur.is_empty() && (t.starts_with('#') || t.is_empty()) {
                continue;
            }
            if let Some(x) = t.strip_suffix('\\') {
                cur.push_str(x);
                cur.push(' ');
            } else {
                cur.push_str(t);
                lines.push(std::mem::take(&mut cur));
            }
        }
        Dockerfile { lines }
    }

    fn instr(&self, name: &str) -> Vec<&str> {
        self.lines.iter().filter_map(|l| l.strip_prefix(name).filter(|r| r.starts_with(' ')).map(str::trim)).collect()
    }

    fn port(&self) -> u16 {
        let e = self.instr("EXPOSE");
        assert_eq!(e.len(), 1, "Dockerfile: want one EXPOSE, got {e:?}");
        e[0].parse().unwrap_or_else(|_| panic!("Dockerfile: EXPOSE {:?}", e[0]))
    }

    /// Path and port the HEALTHCHECK probes.
    fn healthcheck(&self) -> (String, u16) {
        let h = self.instr("HEALTHCHECK");
        assert_eq!(h.len(), 1, "Dockerfile: want one HEALTHCHECK");
        probe_of(h[0]).unwrap_or_else(|| panic!("Dockerfile HEALTHCHECK: cannot find its port and path in {:?}", h[0]))
    }

    fn uid(&self) -> i64 {
        let run = self.lines.iter().find(|l| l.contains("useradd")).expect("Dockerfile: no useradd (non-root user)");
        let after = run.split("--uid").nth(1).expect("useradd without --uid");
        after.split_whitespace().next().unwrap().parse().unwrap()
    }
}

/// (path, port) of a bash /dev/tcp probe: `/dev/tcp/HOST/PORT` + `GET PATH`.
fn probe_of(cmd: &str) -> Option<(String, u16)> {
    let port = cmd.split("/dev/tcp/").nth(1)?.split('/').nth(1)?;
    let port: u16 = port.chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse().ok()?;
    let path = cmd.split("GET ").nth(1)?.split_whitespace().next()?;
    Some((path.to_string(), port))
}

/// .dockerignore patterns.
fn dockerignore() -> Vec<String> {
    read(".dockerignore").lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect()
}

fn ignored(path: &str, patterns: &[String]) -> bool {
    patterns.iter().any(|p| {
        let p = p.trim_end_matches('/');
        if let Some(rest) = p.strip_prefix("**/") {
            return path.split('/').any(|c| c == rest);
        }
        path == p || path.starts_with(&format!("{p}/"))
    })
}

#[test]
fn dockerfile() {
    let d = Dockerfile::load();
    let ign = dockerignore();
    // Stages: a builder and a runtime, the latter on a CUDA base.
    let from = d.instr("FROM");
    assert!(from.len() >= 2, "Dockerfile is not multi-stage: {from:?}");
    assert!(d.lines.iter().any(|l| l.starts_with("ARG RUNTIME_IMAGE=nvidia/cuda:")), "runtime stage is not a CUDA image");
    // libtorch: the torch pin of scripts/requirements.txt.
    assert!(read("scripts/requirements.txt").lines().any(|l| l.starts_with("torch==")), "scripts/requirements.txt has no torch pin");
    assert!(d.lines.iter().any(|l| l.contains("grep -E '^torch==' /tmp/requirements.txt")), "the Dockerfile must install the torch pin of scripts/requirements.txt");
    // Copied sources exist and are in the build context.
    for c in d.instr("COPY").into_iter().filter(|c| !c.starts_with("--from")) {
        let parts: Vec<&str> = c.split_whitespace().filter(|p| !p.starts_with("--")).collect();
        for src in &parts[..parts.len() - 1] {
            let src = src.trim_end_matches('/');
            if src == "." {
                continue;
            }
            assert!(exists(src), "Dockerfile copies {src}, which does not exist");
            assert!(!ignored(src, &ign), "Dockerfile copies {src}, which .dockerignore excludes");
        }
    }
    // What `cargo build` reads must be in the context.
    for input in ["Cargo.toml", "Cargo.lock", "build.rs", "src", "actors", "benches", "web/dist", "config", "deploy/config"] {
        assert!(exists(input), "{input} missing");
        assert!(!ignored(input, &ign), ".dockerignore excludes {input}, which the build needs");
    }
    for gone in ["target", "weights", ".git", ".cargo"] {
        assert!(ignored(gone, &ign), ".dockerignore should exclude {gone}");
    }
    // Non-root user; healthcheck on the liveness route and the served port.
    assert!(d.instr("USER").iter().any(|u| !u.starts_with("root") && !u.starts_with('0')), "the runtime runs as root");
    let (path, port) = d.healthcheck();
    assert_eq!(path, "/health/live");
    assert_eq!(port, d.port(), "HEALTHCHECK port vs EXPOSE");
    // The default command serves config/default.toml on the exposed port.
    let cmd: Vec<String> = serde_json::from_str(d.instr("CMD").last().expect("no CMD")).expect("CMD must be JSON");
    let args = ServeArgs::parse(&cmd);
    assert_eq!(args.port, d.port(), "CMD --port vs EXPOSE");
    assert_eq!(args.config, "/app/config/default.toml");
    assert!(d.instr("COPY").contains(&"config/ /app/config/"), "the image must carry config/ at /app/config");
    assert!(d.instr("ENTRYPOINT").iter().any(|e| e.contains("inferd")), "ENTRYPOINT is not inferd");
    assert_routes(&BTreeSet::from([path]), "Dockerfile HEALTHCHECK");
}

// ---- inferd command lines and configs ----------------------------------------

/// `serve --config C --host H --port P`.
#[derive(Debug)]
struct ServeArgs {
    config: String,
    host: String,
    port: u16,
}

impl ServeArgs {
    fn parse(args: &[String]) -> ServeArgs {
        let i = args.iter().position(|a| a == "serve").unwrap_or_else(|| panic!("not an `inferd serve` command: {args:?}"));
        let get = |flag: &str| -> String {
            let at = args[i..].iter().position(|a| a == flag).unwrap_or_else(|| panic!("{args:?} lacks {flag}"));
            args[i + at + 1].clone()
        };
        ServeArgs { config: get("--config"), host: get("--host"), port: get("--port").parse().expect("--port") }
    }
}

/// Parses an inferd config with the server's own code, as the container
/// sees it at `container_path`; checks every model reads from `weights`.
fn check_config(text: &str, container_path: &str, weights: &str, what: &str) -> Config {
    let base = Path::new(container_path).parent().unwrap();
    let cfg = Config::parse(text, base).unwrap_or_else(|e| panic!("{what}: {e}"));
    for (name, version, v) in cfg.active() {
        let src = normalize(&v.source);
        assert!(src.starts_with(weights), "{what}: model {name} {version} reads {}, outside the weights volume at {weights}", src.display());
    }
    cfg
}

/// The named volume that holds the config's `[server] data_dir` (writable,
/// the replica's own).
fn data_volume(cfg: &Config, ms: &[Mount], what: &str) -> String {
    let dir = normalize(&cfg.server.data_dir);
    let m = ms.iter().find(|m| Path::new(&m.target) == dir).unwrap_or_else(|| panic!("{what}: data_dir {} is not a mounted volume", dir.display()));
    assert!(!is_bind(m) && !m.read_only, "{what}: data_dir {} must be a writable named volume", dir.display());
    m.host.clone()
}

fn devices(cfg: &Config) -> BTreeSet<String> {
    cfg.active().flat_map(|(_, _, v)| v.devices.clone()).collect()
}

// ---- docker-compose ------------------------------------------------------------

/// A bind mount `host:container[:mode]` of a compose service.
struct Mount {
    host: String,
    target: String,
    read_only: bool,
}

fn resolve_env_default(s: &str) -> String {
    // ${VAR:-default} -> default (the tests see no environment of compose).
    match s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
        Some(inner) => inner.split_once(":-").map(|(_, d)| d.to_string()).unwrap_or_default(),
        None => s.to_string(),
    }
}

fn mounts(svc: &Yaml) -> Vec<Mount> {
    let Some(vols) = svc["volumes"].as_sequence() else { return Vec::new() };
    vols.iter()
        .map(|v| {
            let v = s(v);
            let (host, rest) = match v.find("}:") {
                Some(i) if v.starts_with("${") => (&v[..=i], &v[i + 2..]),
                _ => v.split_once(':').unwrap_or_else(|| panic!("bad volume {v}")),
            };
            let mut f = rest.split(':');
            let target = f.next().unwrap();
            let read_only = f.next().is_some_and(|m| m.split(',').any(|o| o == "ro"));
            Mount { host: resolve_env_default(host), target: target.to_string(), read_only }
        })
        .collect()
}

fn is_bind(m: &Mount) -> bool {
    m.host.starts_with("./") || m.host.starts_with('/')
}

/// The host path (relative to the root) behind `container_path`.
fn host_path(ms: &[Mount], container_path: &str) -> Option<String> {
    ms.iter()
        .filter(|m| is_bind(m) && (container_path == m.target || container_path.starts_with(&format!("{}/", m.target))))
        .max_by_key(|m| m.target.len())
        .map(|m| format!("{}{}", m.host.trim_start_matches("./"), &container_path[m.target.len()..]))
}

fn compose() -> Yaml {
    yaml("docker-compose.yml")
}

/// The inferd replica services (those built from this repository).
fn replicas(c: &Yaml) -> Vec<String> {
    let services = c["services"].as_mapping().expect("compose: no services");
    services.iter().filter(|(_, v)| v["image"].as_str().is_some_and(|i| i.starts_with("inferd:"))).map(|(k, _)| s(k).to_string()).collect()
}

fn command(svc: &Yaml) -> Vec<String> {
    strs(&svc["command"])
}

fn container_ports(svc: &Yaml) -> Vec<(Option<u16>, u16)> {
    svc["ports"]
        .as_sequence()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let f: Vec<&str> = s(p).rsplitn(3, ':').collect();
                    (f.get(1).map(|h| h.parse().unwrap()), f[0].parse().unwrap())
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn compose_replicas() {
    let c = compose();
    let d = Dockerfile::load();
    let port = d.port();
    let reps = replicas(&c);
    assert!(reps.len() >= 2, "compose: want two or more inferd replicas, got {reps:?}");
    let build = &c["services"][reps[0].as_str()]["build"];
    assert!(exists(s(&build["dockerfile"])), "compose builds from a missing Dockerfile");
    assert_eq!(s(&build["context"]), ".");
    let mut gpus = BTreeSet::new();
    let mut probes = BTreeSet::new();
    let mut data_vols = BTreeSet::new();
    for r in &reps {
        let svc = &c["services"][r.as_str()];
        // One GPU each, none shared.
        let devs = svc["deploy"]["resources"]["reservations"]["devices"].as_sequence().unwrap_or_else(|| panic!("{r}: no GPU reservation"));
        assert_eq!(devs.len(), 1, "{r}: want one device reservation");
        assert_eq!(s(&devs[0]["driver"]), "nvidia", "{r}");
        assert!(strs(&devs[0]["capabilities"]).contains(&"gpu".to_string()), "{r}: no gpu capability");
        let ids = strs(&devs[0]["device_ids"]);
        assert_eq!(ids.len(), 1, "{r}: want exactly one GPU, got {ids:?}");
        assert!(gpus.insert(ids[0].clone()), "{r}: GPU {} is already reserved by another replica", ids[0]);
        // serve on the image's port, on every interface, with a mounted config.
        let args = ServeArgs::parse(&command(svc));
        assert_eq!(args.port, port, "{r}: --port vs the Dockerfile's EXPOSE");
        assert_eq!(args.host, "0.0.0.0", "{r}: must listen on all interfaces in its container");
        let ms = mounts(svc);
        for m in ms.iter().filter(|m| is_bind(m)) {
            assert!(exists(m.host.trim_start_matches("./")), "{r}: mounts {}, which does not exist", m.host);
        }
        let weights = ms.iter().find(|m| m.target == "/app/weights").unwrap_or_else(|| panic!("{r}: no weights volume at /app/weights"));
        assert!(svc["volumes"].as_sequence().unwrap().iter().any(|v| s(v).starts_with(&format!("{}:", "${INFERD_WEIGHTS_DIR:-./weights}")) && s(v).ends_with(":ro")), "{r}: weights must be mounted read-only");
        let cfg_host = host_path(&ms, &args.config).unwrap_or_else(|| panic!("{r}: --config {} is not on a mounted folder", args.config));
        assert!(ms.iter().any(|m| m.host == "./config"), "{r}: config/ is not mounted");
        let cfg = check_config(&read(&cfg_host), &args.config, &weights.target, &format!("{r}: {cfg_host}"));
        let devs = devices(&cfg);
        assert_eq!(devs, BTreeSet::from(["cuda:0".to_string()]), "{r}: each replica sees one GPU, so its config must use cuda:0 only");
        let vol = data_volume(&cfg, &ms, r);
        assert!(data_vols.insert(vol.clone()), "{r}: data volume {vol} is shared with another replica");
        assert!(c["volumes"].as_mapping().is_some_and(|v| v.contains_key(vol.as_str())), "{r}: volume {vol} is not declared");
        // Readiness healthcheck on the served port.
        let test = strs(&svc["healthcheck"]["test"]).join(" ");
        let (path, hport) = probe_of(&test).unwrap_or_else(|| panic!("{r}: cannot read the healthcheck {test}"));
        assert_eq!(hport, port, "{r}: healthcheck port");
        assert_eq!(path, "/health/ready", "{r}: the compose healthcheck gates nginx on readiness");
        probes.insert(path);
        // Admin port per replica, on the host's loopback only.
        for (host, cport) in container_ports(svc) {
            assert_eq!(cport, port, "{r}: publishes container port {cport}, not the served {port}");
            assert!(host.is_some(), "{r}: publish with an explicit host port");
        }
        assert!(svc["ports"].as_sequence().map_or(true, |ps| ps.iter().all(|p| s(p).starts_with("127.0.0.1:"))), "{r}: replicas publish on 127.0.0.1 only");
    }
    assert_routes(&probes, "docker-compose.yml healthchecks");
}

/// `server HOST:PORT` lines of each nginx upstream; the listen port.
struct Nginx {
    upstreams: BTreeMap<String, Vec<String>>,
    listen: u16,
    /// Paths of `location = PATH` blocks that proxy to the replicas.
    proxied_exact: BTreeSet<String>,
    text: String,
}

impl Nginx {
    fn load() -> Nginx {
        let text = read("deploy/nginx/nginx.conf");
        let mut upstreams: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut cur: Option<String> = None;
        let mut listen = None;
        let mut proxied_exact = BTreeSet::new();
        let mut location: Option<String> = None;
        for line in text.lines() {
            let t = line.split('#').next().unwrap().trim();
            if let Some(name) = t.strip_prefix("upstream ").and_then(|r| r.strip_suffix('{')) {
                cur = Some(name.trim().to_string());
                upstreams.entry(name.trim().to_string()).or_default();
            } else if let (Some(u), Some(srv)) = (&cur, t.strip_prefix("server ")) {
                upstreams.get_mut(u).unwrap().push(srv.split_whitespace().next().unwrap().trim_end_matches(';').to_string());
            } else if t == "}" {
                cur = None;
                location = None;
            } else if let Some(l) = t.strip_prefix("listen ") {
                assert!(listen.is_none(), "nginx.conf: one listen expected");
                listen = Some(l.trim_end_matches(';').trim().parse().expect("listen PORT;"));
            } else if let Some(loc) = t.strip_prefix("location = ").and_then(|r| r.strip_suffix('{')) {
                location = Some(loc.trim().to_string());
            } else if t.starts_with("proxy_pass ") {
                if let Some(l) = &location {
                    proxied_exact.insert(l.clone());
                }
            }
        }
        Nginx { upstreams, listen: listen.expect("nginx.conf: no listen"), proxied_exact, text }
    }
}

#[test]
fn compose_nginx() {
    let c = compose();
    let port = Dockerfile::load().port();
    let want: BTreeSet<String> = replicas(&c).iter().map(|r| format!("{r}:{port}")).collect();
    let n = Nginx::load();
    assert_eq!(n.upstreams.len(), 2, "nginx.conf: want the least-connections and the session-hash upstreams: {:?}", n.upstreams.keys());
    for (name, servers) in &n.upstreams {
        let got: BTreeSet<String> = servers.iter().cloned().collect();
        assert_eq!(got, want, "nginx upstream {name} must list exactly the compose replicas");
    }
    // Balancing, affinity, passive health, streaming.
    for needle in [
        "least_conn;",
        "hash $http_x_session_id consistent;",
        "max_fails=",
        "fail_timeout=",
        "zone inferd_least_conn ",
        "zone inferd_by_session ",
        "proxy_next_upstream error",
        "proxy_buffering off;",
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "access_log /dev/stdout",
    ] {
        assert!(n.text.contains(needle), "nginx.conf lacks `{needle}`");
    }
    for u in n.upstreams.keys() {
        assert!(n.text.contains(&format!("{u};")), "nginx upstream {u} is never chosen");
    }
    let routes: BTreeSet<String> = n.proxied_exact.iter().cloned().collect();
    assert!(routes.contains("/v1/ws"), "nginx.conf: no WebSocket location");
    assert_routes(&routes, "nginx.conf");
    // The compose service mounts this file and publishes its listen port.
    let svc = &c["services"]["nginx"];
    let ms = mounts(svc);
    assert_eq!(host_path(&ms, "/etc/nginx/nginx.conf").as_deref(), Some("deploy/nginx/nginx.conf"), "compose nginx must mount deploy/nginx/nginx.conf");
    assert!(container_ports(svc).iter().any(|(_, p)| *p == n.listen), "compose nginx does not publish the listen port {}", n.listen);
    let deps: BTreeSet<String> = svc["depends_on"].as_mapping().expect("nginx depends_on").keys().map(|k| s(k).to_string()).collect();
    assert_eq!(deps, replicas(&c).into_iter().collect(), "nginx must wait for every replica");
    let test = strs(&svc["healthcheck"]["test"]).join(" ");
    assert!(test.contains(&format!("127.0.0.1:{}/nginx-health", n.listen)) && n.text.contains("location = /nginx-health"), "nginx healthcheck: {test}");
}

#[test]
fn compose_prometheus_and_grafana() {
    let c = compose();
    let port = Dockerfile::load().port();
    let reps = replicas(&c);
    // Prometheus: the mounted config scrapes every replica on /metrics.
    let svc = &c["services"]["prometheus"];
    let ms = mounts(svc);
    let args = strs(&svc["command"]);
    let flag = |name: &str| args.iter().find_map(|a| a.strip_prefix(&format!("{name}="))).unwrap_or_else(|| panic!("prometheus lacks {name}")).to_string();
    let cfg_host = host_path(&ms, &flag("--config.file")).expect("prometheus --config.file is not mounted");
    assert_eq!(cfg_host, "deploy/prometheus/prometheus.yml");
    let prom_port: u16 = flag("--web.listen-address").rsplit(':').next().unwrap().parse().unwrap();
    assert!(container_ports(svc).iter().any(|(_, p)| *p == prom_port), "prometheus port {prom_port} is not published");
    let p = yaml(&cfg_host);
    for rf in strs(&p["rule_files"]) {
        let rel = format!("deploy/prometheus/{rf}");
        assert!(exists(&rel), "prometheus.yml loads {rel}, which does not exist");
        check_metric_refs(&read(&rel), &rel);
    }
    let job = p["scrape_configs"].as_sequence().unwrap().iter().find(|j| j["job_name"] == "inferd").expect("prometheus.yml: no inferd job");
    let metrics_path = s(&job["metrics_path"]).to_string();
    let targets: BTreeSet<String> = job["static_configs"].as_sequence().unwrap().iter().flat_map(|sc| strs(&sc["targets"])).collect();
    let want: BTreeSet<String> = reps.iter().map(|r| format!("{r}:{port}")).collect();
    assert_eq!(targets, want, "prometheus must scrape every replica directly");

    // Grafana: provisioning and dashboards mounted where its provider looks.
    let g = &c["services"]["grafana"];
    let gm = mounts(g);
    assert_eq!(host_path(&gm, "/etc/grafana/provisioning").as_deref(), Some("deploy/grafana/provisioning"));
    let ds = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let ds0 = &ds["datasources"][0];
    assert_eq!(s(&ds0["type"]), "prometheus");
    assert_eq!(s(&ds0["url"]), format!("http://prometheus:{prom_port}"), "grafana datasource must point at the prometheus service");
    let uid = s(&ds0["uid"]).to_string();
    let prov = yaml("deploy/grafana/provisioning/dashboards/inferd.yml");
    let dash_dir = s(&prov["providers"][0]["options"]["path"]).to_string();
    let host_dir = host_path(&gm, &dash_dir).unwrap_or_else(|| panic!("grafana dashboards path {dash_dir} is not mounted"));
    assert_eq!(host_dir, "deploy/grafana/dashboards");
    let home = s(&g["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]);
    assert!(exists(&host_path(&gm, home).expect("home dashboard not mounted")), "home dashboard {home} missing");
    let n_dash = std::fs::read_dir(root().join(&host_dir)).unwrap().flatten().filter(|e| e.path().extension().is_some_and(|x| x == "json")).count();
    assert!(n_dash >= 1, "no dashboard JSON in {host_dir}");
    check_dashboard(&uid);
    assert_routes(&BTreeSet::from([metrics_path]), "prometheus.yml");
}

/// Every string under `key` anywhere in `v`.
fn collect_key(v: &Json, key: &str, out: &mut Vec<String>) {
    match v {
        Json::Object(m) => {
            for (k, x) in m {
                if k == key {
                    if let Some(s) = x.as_str() {
                        out.push(s.to_string());
                    }
                }
                collect_key(x, key, out);
            }
        }
        Json::Array(a) => a.iter().for_each(|x| collect_key(x, key, out)),
        _ => {}
    }
}

fn check_dashboard(ds_uid: &str) {
    let d: Json = serde_json::from_str(&read("deploy/grafana/dashboards/inferd.json")).expect("dashboard JSON");
    let mut exprs = Vec::new();
    collect_key(&d, "expr", &mut exprs);
    collect_key(&d, "definition", &mut exprs);
    assert!(exprs.len() >= 10, "dashboard has only {} queries", exprs.len());
    let used = check_metric_refs(&exprs.join("\n"), "the Grafana dashboard");
    for must in [
        "inferd_time_to_first_token_seconds",
        "inferd_inter_token_latency_seconds",
        "inferd_e2e_request_latency_seconds",
        "inferd_requests_total",
        "inferd_generation_tokens_total",
        "inferd_requests_waiting",
        "inferd_kv_cache_usage_ratio",
        "inferd_prefix_cache_hits_total",
        "inferd_prefix_cache_queries_total",
        "inferd_request_errors_total",
    ] {
        assert!(used.contains(must), "the dashboard does not chart {must}");
    }
    // Percentiles per model and version.
    for e in exprs.iter().filter(|e| e.contains("histogram_quantile")) {
        assert!(e.contains("model") && e.contains("version"), "percentile not split by model and version: {e}");
    }
    for q in ["0.5", "0.9", "0.99"] {
        assert!(exprs.iter().any(|e| e.contains(&format!("histogram_quantile({q},"))), "no P{q} panel");
    }
    let vars: BTreeSet<&str> = d["templating"]["list"].as_array().unwrap().iter().filter_map(|v| v["name"].as_str()).collect();
    assert!(vars.contains("model") && vars.contains("version"), "dashboard variables: {vars:?}");
    // Every panel's datasource is the provisioned one.
    let mut uids = Vec::new();
    collect_key(&d, "uid", &mut uids);
    let foreign: Vec<_> = uids.iter().filter(|u| *u != ds_uid && *u != d["uid"].as_str().unwrap()).collect();
    assert!(foreign.is_empty(), "dashboard uses datasources other than {ds_uid}: {foreign:?}");
    let ids: Vec<i64> = d["panels"].as_array().unwrap().iter().map(|p| p["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), ids.iter().collect::<BTreeSet<_>>().len(), "duplicate panel ids");
}

#[test]
fn compose_cpu_override() {
    let base = compose();
    let cpu = yaml("docker-compose.cpu.yml");
    let reps = replicas(&base);
    let over: Vec<String> = cpu["services"].as_mapping().unwrap().keys().map(|k| s(k).to_string()).collect();
    assert_eq!(over, reps, "docker-compose.cpu.yml must override exactly the replicas");
    let port = Dockerfile::load().port();
    for r in &reps {
        let svc = &cpu["services"][r.as_str()];
        match &svc["deploy"] {
            Yaml::Tagged(t) => assert_eq!(t.tag, "!reset", "{r}: deploy must be `!reset` (drops the GPU reservation)"),
            other => panic!("{r}: deploy must be `!reset {{}}`, got {other:?}"),
        }
        let args = ServeArgs::parse(&command(svc));
        assert_eq!((args.port, args.host.as_str()), (port, "0.0.0.0"), "{r}");
        // The base service's mounts still apply.
        let ms = mounts(&base["services"][r.as_str()]);
        let host = host_path(&ms, &args.config).unwrap_or_else(|| panic!("{r}: --config {} not mounted", args.config));
        let cfg = check_config(&read(&host), &args.config, "/app/weights", &format!("{r} (cpu): {host}"));
        assert_eq!(devices(&cfg), BTreeSet::from(["cpu".to_string()]), "{r}: the CPU profile must use the cpu device only");
        data_volume(&cfg, &ms, &format!("{r} (cpu)"));
        // SmolLM2 in the checkout's weights/ (what scripts/setup.sh fetches).
        for (_, _, v) in cfg.active() {
            let rel = normalize(&v.source).strip_prefix("/app").unwrap().to_path_buf();
            let name = rel.to_string_lossy().to_string();
            assert!(name.contains("smollm2") || name.contains("SmolLM2"), "{r}: CPU profile serves {name}, not SmolLM2");
        }
    }
}

// ---- Kubernetes ----------------------------------------------------------------

struct K8s {
    docs: Vec<(String, Yaml)>,
}

impl K8s {
    fn load() -> K8s {
        let mut docs = Vec::new();
        let mut names: Vec<String> = std::fs::read_dir(root().join("deploy/kubernetes")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().to_string()).filter(|n| n.ends_with(".yaml")).collect();
        names.sort();
        for n in names {
            for d in yaml_docs(&format!("deploy/kubernetes/{n}")) {
                docs.push((n.clone(), d));
            }
        }
        K8s { docs }
    }

    fn all(&self, kind: &str) -> Vec<&Yaml> {
        self.docs.iter().filter(|(_, d)| d["kind"] == kind).map(|(_, d)| d).collect()
    }

    fn one(&self, kind: &str, name: &str) -> &Yaml {
        let v: Vec<_> = self.all(kind).into_iter().filter(|d| d["metadata"]["name"] == name).collect();
        assert_eq!(v.len(), 1, "deploy/kubernetes: want one {kind} {name}, found {}", v.len());
        v[0]
    }
}

fn labels_match(selector: &Yaml, labels: &Yaml) -> bool {
    selector.as_mapping().is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels[s(k)] == *v))
}

#[test]
fn kubernetes() {
    let k = K8s::load();
    let d = Dockerfile::load();
    let port = d.port();
    // kustomization lists existing files, and every manifest but the adapter's.
    let kz = yaml("deploy/kubernetes/kustomization.yaml");
    let res = strs(&kz["resources"]);
    for r in &res {
        assert!(exists(&format!("deploy/kubernetes/{r}")), "kustomization lists {r}, which does not exist");
    }
    for (file, _) in &k.docs {
        assert!(res.contains(file) || file == "prometheus-adapter-rules.yaml" || file == "kustomization.yaml", "kustomization.yaml misses {file}");
    }

    let dep = k.one("Deployment", "inferd");
    let pod = &dep["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    assert!(labels_match(&dep["spec"]["selector"]["matchLabels"], labels), "Deployment selector does not match its pods");
    let cs = pod["spec"]["containers"].as_sequence().unwrap();
    assert_eq!(cs.len(), 1);
    let c = &cs[0];
    let args = ServeArgs::parse(&strs(&c["args"]));
    assert_eq!((args.port, args.host.as_str()), (port, "0.0.0.0"), "Deployment args");
    let cport = c["ports"].as_sequence().unwrap().iter().find(|p| p["name"] == "http").expect("no port named http");
    assert_eq!(cport["containerPort"].as_u64(), Some(port as u64), "containerPort vs --port");
    // GPU.
    assert!(c["resources"]["limits"]["nvidia.com/gpu"].as_u64().is_some_and(|n| n >= 1), "no GPU limit");
    assert_eq!(c["resources"]["requests"]["nvidia.com/gpu"], c["resources"]["limits"]["nvidia.com/gpu"], "GPU request != limit");
    // Probes.
    let probe = |name: &str| -> String {
        let p = &c[name]["httpGet"];
        assert!(p["port"] == "http" || p["port"].as_u64() == Some(port as u64), "{name} port {:?}", p["port"]);
        s(&p["path"]).to_string()
    };
    assert_eq!(probe("livenessProbe"), "/health/live");
    assert_eq!(probe("readinessProbe"), "/health/ready");
    let mut paths = BTreeSet::from(["/health/live".to_string(), "/health/ready".to_string()]);
    let ann = &pod["metadata"]["annotations"];
    assert_eq!(s(&ann["prometheus.io/port"]), port.to_string());
    paths.insert(s(&ann["prometheus.io/path"]).to_string());
    // Non-root, as the image.
    let sc = &pod["spec"]["securityContext"];
    assert_eq!(sc["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(sc["runAsUser"].as_i64(), Some(d.uid()), "runAsUser vs the Dockerfile's user");
    // Graceful termination: preStop + drain + margin.
    let pre: Vec<String> = strs(&c["lifecycle"]["preStop"]["exec"]["command"]);
    assert_eq!(pre[0], "sleep");
    let pre_s: u64 = pre[1].parse().unwrap();
    let grace = pod["spec"]["terminationGracePeriodSeconds"].as_u64().expect("terminationGracePeriodSeconds");
    let drain = drain_seconds();
    assert!(grace >= pre_s + drain + 5, "terminationGracePeriodSeconds {grace} < preStop {pre_s} + drain {drain} + 5");
    // Volumes: the ConfigMap holds the config, the PVC the weights.
    let vols = pod["spec"]["volumes"].as_sequence().unwrap();
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    let mount_of = |vol: &str| -> String { s(&mounts.iter().find(|m| m["name"] == vol).unwrap_or_else(|| panic!("volume {vol} not mounted"))["mountPath"]).to_string() };
    let cm_vol = vols.iter().find(|v| v["configMap"].is_mapping()).expect("no ConfigMap volume");
    let cm_name = s(&cm_vol["configMap"]["name"]);
    let cm_dir = mount_of(s(&cm_vol["name"]));
    let pvc_vol = vols.iter().find(|v| v["persistentVolumeClaim"].is_mapping()).expect("no PVC volume");
    let pvc = k.one("PersistentVolumeClaim", s(&pvc_vol["persistentVolumeClaim"]["claimName"]));
    assert!(strs(&pvc["spec"]["accessModes"]).iter().any(|m| m.ends_with("Many")), "the weights PVC is shared by replicas: use a *Many access mode");
    let weights_dir = mount_of(s(&pvc_vol["name"]));
    let key = args.config.strip_prefix(&format!("{cm_dir}/")).unwrap_or_else(|| panic!("--config {} is not in the ConfigMap mount {cm_dir}", args.config));
    let cm = k.one("ConfigMap", cm_name);
    let text = s(&cm["data"][key]);
    assert_eq!(text, read("deploy/config/gpu.toml"), "ConfigMap {cm_name}/{key} must be deploy/config/gpu.toml verbatim");
    let cfg = check_config(text, &args.config, &weights_dir, "ConfigMap inferd-config");
    assert_eq!(devices(&cfg), BTreeSet::from(["cuda:0".to_string()]), "one GPU per pod: cuda:0 only");
    let data_dir = normalize(&cfg.server.data_dir);
    let dm = mounts.iter().find(|m| Path::new(s(&m["mountPath"])) == data_dir).unwrap_or_else(|| panic!("data_dir {} is not mounted (the root filesystem is read-only)", data_dir.display()));
    assert_ne!(dm["readOnly"].as_bool(), Some(true), "data_dir must be writable");

    // Services, PDB, PodMonitor select the pods; ports by name.
    for svc in k.all("Service") {
        assert!(labels_match(&svc["spec"]["selector"], labels), "Service {:?} selects no inferd pod", svc["metadata"]["name"]);
        for p in svc["spec"]["ports"].as_sequence().unwrap() {
            assert_eq!(s(&p["targetPort"]), "http", "Service targetPort must be the named container port");
        }
    }
    let pdb = k.one("PodDisruptionBudget", "inferd");
    assert!(labels_match(&pdb["spec"]["selector"]["matchLabels"], labels), "PDB selects no inferd pod");
    for pm in k.all("PodMonitor") {
        assert!(labels_match(&pm["spec"]["selector"]["matchLabels"], labels), "PodMonitor selects no inferd pod");
        for ep in pm["spec"]["podMetricsEndpoints"].as_sequence().unwrap() {
            assert_eq!(s(&ep["port"]), "http");
            paths.insert(s(&ep["path"]).to_string());
        }
    }

    // HPA on a per-pod metric the adapter serves.
    let hpa = k.one("HorizontalPodAutoscaler", "inferd");
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!((s(&target["kind"]), s(&target["name"])), ("Deployment", "inferd"));
    assert!(hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2, "HPA minReplicas < 2");
    let m = &hpa["spec"]["metrics"][0];
    assert_eq!(s(&m["type"]), "Pods");
    let metric = s(&m["pods"]["metric"]["name"]).to_string();
    assert_eq!(metric, "inferd_requests_waiting");
    assert_eq!(metrics().get(&metric), Some(&Kind::Gauge), "the HPA metric must be a listed gauge");
    let adapter = k.one("ConfigMap", "prometheus-adapter");
    let rules: Yaml = serde_yaml::from_str(s(&adapter["data"]["config.yaml"])).expect("adapter config.yaml");
    let rule = rules["rules"].as_sequence().unwrap().iter().find(|r| r["name"]["as"] == metric.as_str()).unwrap_or_else(|| panic!("no prometheus-adapter rule serves {metric}"));
    let series = s(&rule["seriesQuery"]);
    assert!(series.starts_with(&format!("{metric}{{")) && series.contains("pod!=\"\""), "adapter seriesQuery {series}");
    assert_eq!(s(&rule["resources"]["overrides"]["pod"]["resource"]), "pod");
    check_metric_refs(series, "the prometheus-adapter rule");
    assert_routes(&paths, "deploy/kubernetes");
}

/// The server's drain time on SIGTERM: a `shutdown_timeout(N)` in src/, or
/// actix-web's default of 30 s.
fn drain_seconds() -> u64 {
    for (_, t) in rust_files("src") {
        if let Some(rest) = t.split("shutdown_timeout(").nth(1) {
            let n: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            if let Ok(n) = n.parse() {
                return n;
            }
        }
    }
    30
}

// ---- README ------------------------------------------------------------------

#[test]
fn readme() {
    let text = read("deploy/README.md");
    // Every repository path it names exists.
    let mut missing = Vec::new();
    for word in text.split(|c: char| c.is_whitespace() || "`()[]<>,\"'".contains(c)) {
        let w = word.trim_end_matches(['.', ':', ';']);
        let looks = ["deploy/", "config/", "scripts/", "tests/", "docs/"].iter().any(|p| w.starts_with(p)) || w.starts_with("docker-compose") || w == "Dockerfile";
        if looks && !w.contains('*') && !w.contains('$') && !w.contains('{') && !exists(w) {
            missing.push(w.to_string());
        }
    }
    assert!(missing.is_empty(), "deploy/README.md names missing files: {missing:?}");
    // Its admin calls are in the admin API contract.
    let contract = read("docs/admin-api.md");
    let mut admin = BTreeSet::new();
    for part in text.split("/admin/").skip(1) {
        let p: String = part.chars().take_while(|c| c.is_ascii_alphanumeric() || "/-_{}$".contains(*c)).collect();
        let last = p.rsplit('/').next().unwrap().to_string();
        admin.insert(last);
    }
    assert!(!admin.is_empty(), "deploy/README.md shows no admin call for rolling out a version");
    for seg in &admin {
        assert!(contract.contains(&format!("/{seg} ")) || contract.contains(&format!("/{seg} |")) || seg.starts_with('$') || seg.starts_with('{'), "deploy/README.md calls /admin/.../{seg}, which docs/admin-api.md does not define");
    }
    check_metric_refs(&text, "deploy/README.md");
    for topic in ["docker-compose.cpu.yml", "kubectl", "rollout", "x-session-id"] {
        assert!(text.contains(topic), "deploy/README.md does not cover {topic}");
    }
}
