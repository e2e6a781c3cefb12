//! The built-in web console at `/ui`: the front end of `web/` (built by
//! `scripts/build-ui.sh` into `web/dist`, which is committed), embedded in the
//! binary at compile time, so the console needs no other server and no
//! network. Register it with `app.configure(inferd::ui::configure)`.
//!
//! - `GET /ui`, `/ui/` and any `/ui/<path>` without a file extension answer
//!   `index.html` (the console routes by `#/page`, deep links still work);
//! - `GET /ui/<file>` answers the embedded file with its content type;
//!   Vite's content-hashed `assets/` are cached for a year, the rest revalidated;
//! - anything else under `/ui/` is a 404.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{guard, web, HttpRequest, HttpResponse};
use include_dir::{include_dir, Dir};

static DIST: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/web/dist");

/// The console page only talks to its own origin.
const CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// Register `/ui` and `/ui/{path}` (GET and HEAD).
pub fn configure(cfg: &mut web::ServiceConfig) {
    let get_or_head = || web::route().guard(guard::Any(guard::Get()).or(guard::Head()));
    cfg.route("/ui", get_or_head().to(serve)).route("/ui/{path:.*}", get_or_head().to(serve));
}

/// The content type of an embedded file, by extension.
pub fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// What `/ui/<path>` resolves to: an embedded file's path, or `None` (404).
pub fn resolve(path: &str) -> Option<&'static str> {
    let path = path.trim_start_matches('/');
    if path.is_empty() {
        return Some("index.html");
    }
    if path.split('/').any(|seg| seg == ".." || seg == ".") {
        return None;
    }
    if let Some(f) = DIST.get_file(path) {
        return f.path().to_str();
    }
    // A client-side route (no extension) gets the page; a missing file does not.
    let last = path.rsplit('/').next().unwrap_or(path);
    if last.contains('.') {
        None
    } else {
        Some("index.html")
    }
}

async fn serve(req: HttpRequest) -> HttpResponse {
    let path = req.match_info().get("path").unwrap_or("");
    let Some(file) = resolve(path).and_then(|p| DIST.get_file(p)) else {
        return HttpResponse::NotFound().content_type("application/json").body(r#"{"error":{"message":"no such console file","type":"not_found","param":null,"code":"not_found"}}"#);
    };
    let name = file.path().to_str().unwrap_or("");
    let cache = if name.starts_with("assets/") { "public, max-age=31536000, immutable" } else { "no-cache" };
    let mut res = HttpResponse::Ok();
    res.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(content_type(name))))
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static(cache)))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")));
    if name.ends_with(".html") {
        res.insert_header((header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)));
    }
    if req.method() == actix_web::http::Method::HEAD {
        return res.finish();
    }
    res.body(file.contents())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{test as atest, App};

    fn first_asset(ext: &str) -> String {
        let assets = DIST.get_dir("assets").expect("web/dist/assets is missing: run scripts/build-ui.sh");
        let f = assets.files().find(|f| f.path().extension().is_some_and(|e| e == ext)).expect("no asset of that kind");
        f.path().to_str().unwrap().to_string()
    }

    #[actix_web::test]
    async fn index_assets_fallback_and_404() {
        let app = atest::init_service(App::new().configure(configure)).await;
        for uri in ["/ui", "/ui/", "/ui/models"] {
            let res = atest::call_service(&app, atest::TestRequest::get().uri(uri).to_request()).await;
            assert_eq!(res.status(), 200, "{uri}");
            assert_eq!(res.headers().get("content-type").unwrap(), "text/html; charset=utf-8", "{uri}");
            assert!(res.headers().get("content-security-policy").is_some());
            let body = atest::read_body(res).await;
            assert!(std::str::from_utf8(&body).unwrap().contains("<div id=\"app\">"), "{uri}");
        }
        let js = first_asset("js");
        let res = atest::call_service(&app, atest::TestRequest::get().uri(&format!("/ui/{js}")).to_request()).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers().get("content-type").unwrap(), "text/javascript; charset=utf-8");
        assert!(res.headers().get("cache-control").unwrap().to_str().unwrap().contains("immutable"));
        let css = first_asset("css");
        let res = atest::call_service(&app, atest::TestRequest::get().uri(&format!("/ui/{css}")).to_request()).await;
        assert_eq!(res.headers().get("content-type").unwrap(), "text/css; charset=utf-8");
        for uri in ["/ui/assets/nope.js", "/ui/../Cargo.toml", "/ui/assets/../../Cargo.toml"] {
            let res = atest::call_service(&app, atest::TestRequest::get().uri(uri).to_request()).await;
            assert_eq!(res.status(), 404, "{uri}");
        }
        let res = atest::call_service(&app, atest::TestRequest::default().method(actix_web::http::Method::HEAD).uri("/ui/").to_request()).await;
        assert_eq!(res.status(), 200);
    }

    #[test]
    fn resolve_refuses_dot_segments() {
        assert_eq!(resolve("a/../index.html"), None);
        assert_eq!(resolve(""), Some("index.html"));
        assert_eq!(resolve("live"), Some("index.html"));
        assert_eq!(content_type("x.JS"), "text/javascript; charset=utf-8");
    }
}
