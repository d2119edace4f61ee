//! The HTTP front of the API server: path routing to discovery, OpenAPI,
//! list/watch/get and the write verbs; errors leave as `Status` objects.

pub mod auth;
mod discovery;
mod exec;
mod logs;
mod negotiate;
mod openapi;
pub mod protobuf;
pub mod protobuf_encode;
pub mod table;
pub mod tls;
mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::registry::patch::{self, PatchType};
use crate::registry::selectors::{FieldSelector, LabelSelector};
use crate::registry::{DeleteOptions, Registry, Sub, WriteOptions};
use crate::resources::{self, ResourceType};
use negotiate::Format;

/// Finds a container's log file for `pods/log`: (pod object, container name) → path.
pub type LogLocator = Arc<dyn Fn(&Value, &str) -> Option<PathBuf> + Send + Sync>;

#[derive(Clone)]
pub struct ApiServerConfig {
    pub log_locator: Option<LogLocator>,
    pub bookmark_interval: Duration,
    /// Serve HTTPS, authenticating bearer tokens (`auth`), instead of plain HTTP.
    pub https: Option<Https>,
}

/// An HTTPS listener's certificate and the tokens it accepts.
#[derive(Clone)]
pub struct Https {
    pub certs: tls::ServingCerts,
    pub tokens: Arc<auth::Tokens>,
}

impl Default for ApiServerConfig {
    fn default() -> Self {
        ApiServerConfig {
            log_locator: None,
            bookmark_interval: Duration::from_secs(15),
            https: None,
        }
    }
}

struct AppState {
    registry: Arc<Registry>,
    cfg: ApiServerConfig,
}

/// A running API server; dropping `shutdown` (or calling `stop`) ends it.
pub struct ApiServer {
    pub addr: SocketAddr,
    scheme: &'static str,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl ApiServer {
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.handle.take() {
            h.abort();
            let _ = h.await;
        }
    }
}

/// Binds `listen` and serves the registry over plain HTTP, or HTTPS with `cfg.https`.
pub async fn serve(
    registry: Arc<Registry>,
    listen: SocketAddr,
    cfg: ApiServerConfig,
) -> Result<ApiServer> {
    let listener = TcpListener::bind(listen).await.map_err(Error::internal)?;
    let addr = listener.local_addr().map_err(Error::internal)?;
    let tls = cfg.https.as_ref().map(|h| h.certs.config.clone());
    let state = Arc::new(AppState { registry, cfg });
    let app = axum::Router::new().fallback(handle).with_state(state);
    let (tx, rx) = oneshot::channel::<()>();
    let (scheme, handle) = match tls {
        None => ("http", tokio::spawn(run(listener, app, rx))),
        Some(tls) => {
            let listener = tls::TlsListener::new(listener, tls)?;
            ("https", tokio::spawn(run(listener, app, rx)))
        }
    };
    tracing::info!(%addr, scheme, "api server listening");
    Ok(ApiServer {
        addr,
        scheme,
        shutdown: Some(tx),
        handle: Some(handle),
    })
}

async fn run<L>(listener: L, app: axum::Router, stop: oneshot::Receiver<()>)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stop.await;
    });
    if let Err(e) = server.await {
        tracing::error!(error = %e, "api server stopped");
    }
}

fn json_response(code: u16, v: &Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(v).unwrap_or_default(),
    )
        .into_response()
}

fn error_response(e: &Error) -> Response {
    json_response(e.code(), &e.to_status())
}

/// `v` in the negotiated format: protobuf when chosen and `v`'s kind is declared, else JSON.
fn answer(format: Format, code: u16, v: &Value) -> Response {
    if format == Format::Protobuf {
        let encoded = protobuf_encode::encode(v);
        match encoded {
            Ok(body) => {
                let status = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
                return (status, [(header::CONTENT_TYPE, negotiate::PROTOBUF)], body)
                    .into_response();
            }
            Err(e) => {
                tracing::error!(error = %e, kind = %v["kind"], "cannot encode the answer in protobuf");
                if code < 400 {
                    return answer(format, e.code(), &e.to_status());
                }
            }
        }
    }
    json_response(code, v)
}

fn error_answer(format: Format, e: &Error) -> Response {
    answer(format, e.code(), &e.to_status())
}

async fn handle(
    State(st): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    ws: std::result::Result<
        axum::extract::ws::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let err_format = negotiate::for_error(
        headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default(),
    );
    if let Some(h) = &st.cfg.https {
        match auth::authenticate(&h.tokens, &st.registry, &headers, &method, &path) {
            Ok(user) => tracing::trace!(%method, %path, user = %user.name(), "authenticated"),
            Err(e) => return error_answer(err_format, &e),
        }
    }
    if let Some((ns, name)) = exec::target(&path) {
        let query = uri.query().unwrap_or_default();
        return match exec::serve(&st.registry, &ns, &name, query, ws) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%method, %path, code = e.code(), error = %e, "exec refused");
                error_response(&e)
            }
        };
    }
    let q: HashMap<String, String> =
        form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    match route(&st, &method, &path, &q, &headers, body).await {
        Ok(r) => {
            tracing::debug!(%method, %path, code = r.status().as_u16(), "request");
            r
        }
        Err(e) => {
            tracing::debug!(%method, %path, code = e.code(), error = %e, "request failed");
            error_answer(err_format, &e)
        }
    }
}

/// A parsed resource URL.
struct Target {
    rt: ResourceType,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_target(reg: &Registry, group: &str, version: &str, segs: &[&str]) -> Result<Target> {
    let find = |plural: &str| reg.lookup(group, version, plural).ok_or(Error::NoRoute);
    let t = match segs {
        ["namespaces", ns, res, rest @ ..] if reg.lookup(group, version, res).is_some() => {
            let rt = find(res)?;
            if !rt.namespaced {
                return Err(Error::NoRoute);
            }
            let (name, sub) = match rest {
                [] => (None, None),
                [n] => (Some(n.to_string()), None),
                [n, s] => (Some(n.to_string()), Some(s.to_string())),
                _ => return Err(Error::NoRoute),
            };
            Target {
                rt,
                ns: Some(ns.to_string()),
                name,
                sub,
            }
        }
        [res, rest @ ..] => {
            let rt = find(res)?;
            let (name, sub) = match rest {
                [] => (None, None),
                [n] if !rt.namespaced => (Some(n.to_string()), None),
                [n, s] if !rt.namespaced => (Some(n.to_string()), Some(s.to_string())),
                _ => return Err(Error::NoRoute),
            };
            Target {
                rt,
                ns: None,
                name,
                sub,
            }
        }
        _ => return Err(Error::NoRoute),
    };
    if let Some(s) = &t.sub
        && !t.rt.has_subresource(s)
    {
        return Err(Error::NoRoute);
    }
    Ok(t)
}

async fn route(
    st: &Arc<AppState>,
    method: &Method,
    path: &str,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let get = method == Method::GET;
    let types = if get {
        st.registry.served_types()
    } else {
        Vec::new()
    };
    match segs.as_slice() {
        ["version"] if get => return Ok(json_response(200, &discovery::version())),
        ["healthz" | "readyz" | "livez"] if get => {
            return Ok((StatusCode::OK, "ok").into_response());
        }
        ["api"] if get => return Ok(json_response(200, &discovery::core_versions())),
        ["apis"] if get => return Ok(json_response(200, &discovery::group_list(&types))),
        ["api", v] if get => {
            return discovery::resource_list(&types, "", v)
                .map(|d| json_response(200, &d))
                .ok_or(Error::NoRoute);
        }
        ["apis", g] if get => {
            return discovery::group(&types, g)
                .map(|d| json_response(200, &d))
                .ok_or(Error::NoRoute);
        }
        ["apis", g, v] if get => {
            return discovery::resource_list(&types, g, v)
                .map(|d| json_response(200, &d))
                .ok_or(Error::NoRoute);
        }
        ["openapi", "v3"] if get => return Ok(json_response(200, &openapi::index(&types))),
        ["openapi", "v3", rest @ ..] if get => {
            return openapi::document(&types, &rest.join("/"))
                .map(|d| json_response(200, &d))
                .ok_or(Error::NoRoute);
        }
        _ => {}
    }
    let target = match segs.as_slice() {
        ["api", v, rest @ ..] => parse_target(&st.registry, "", v, rest)?,
        ["apis", g, v, rest @ ..] => parse_target(&st.registry, g, v, rest)?,
        _ => return Err(Error::NoRoute),
    };
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Target { rt, ns, name, sub } = target;
    let watching = method == Method::GET
        && name.is_none()
        && q.get("watch").is_some_and(|w| w == "true" || w == "1");
    // Logs are text whatever the Accept; every other answer is negotiated.
    let negotiated = if sub.as_deref() == Some("log") {
        negotiate::Negotiated::JSON
    } else {
        let pb =
            resources::is_builtin(&rt) && protobuf_encode::encodable(&rt.api_version(), rt.kind);
        negotiate::negotiate(accept, pb, watching)?
    };
    let (as_table, fmt) = (negotiated.table, negotiated.format);
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let opts = WriteOptions {
        strict: q.get("fieldValidation").is_some_and(|v| v == "Strict"),
        dry_run: q.get("dryRun").is_some_and(|v| v == "All"),
    };
    let reg = &st.registry;
    let ns = ns.as_deref();
    match (method.clone(), name.as_deref(), sub.as_deref()) {
        (Method::GET, None, None) => {
            let labels = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))?;
            let fields = FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str))?;
            if watching {
                let timeout = q
                    .get("timeoutSeconds")
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(1800);
                let params = watch::WatchParams {
                    rt,
                    ns: ns.map(String::from),
                    labels,
                    fields,
                    resource_version: q.get("resourceVersion").cloned(),
                    bookmarks: q
                        .get("allowWatchBookmarks")
                        .is_some_and(|b| b == "true" || b == "1"),
                    send_initial_events: q.get("sendInitialEvents").is_some_and(|b| b == "true"),
                    timeout: Duration::from_secs(timeout),
                    as_table,
                    columns: reg.custom_type(&rt).map(|t| t.columns),
                    bookmark_interval: st.cfg.bookmark_interval,
                    format: fmt,
                };
                let body = watch::start(reg.clone(), params);
                let ct = match fmt {
                    Format::Json => "application/json".to_string(),
                    Format::Protobuf => format!("{};stream=watch", negotiate::PROTOBUF),
                };
                return Response::builder()
                    .header(header::CONTENT_TYPE, ct)
                    .header(header::TRANSFER_ENCODING, "chunked")
                    .body(body)
                    .map_err(Error::internal);
            }
            list(reg, &rt, ns, &labels, &fields, q, as_table, fmt)
        }
        (Method::GET, Some(n), None | Some("status")) => {
            let obj = reg.get(&rt, ns, n)?;
            if as_table {
                let rv = obj["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                return Ok(json_response(200, &to_table(reg, &rt, &[obj], rv)));
            }
            Ok(answer(fmt, 200, &obj))
        }
        (Method::GET, Some(n), Some("scale")) => Ok(answer(
            fmt,
            200,
            &reg.get_scale(&rt, ns.unwrap_or_default(), n)?,
        )),
        (Method::GET, Some(n), Some("log")) => {
            logs::serve(
                reg,
                st.cfg.log_locator.as_ref(),
                ns.unwrap_or_default(),
                n,
                q,
            )
            .await
        }
        (Method::POST, None, None) => {
            let body = parse_json(&body, &ct)?;
            Ok(answer(fmt, 201, &reg.create(&rt, ns, body, opts)?))
        }
        (Method::POST, Some(n), Some("binding")) => {
            let body = parse_json(&body, &ct)?;
            Ok(answer(
                fmt,
                201,
                &reg.bind(ns.unwrap_or_default(), n, &body)?,
            ))
        }
        (Method::PUT, Some(n), Some("scale")) => {
            let body = parse_json(&body, &ct)?;
            Ok(answer(
                fmt,
                200,
                &reg.set_scale(&rt, ns.unwrap_or_default(), n, &body)?,
            ))
        }
        (Method::PUT, Some(n), s @ (None | Some("status"))) => {
            let body = parse_json(&body, &ct)?;
            let sub = if s.is_some() { Sub::Status } else { Sub::Main };
            Ok(answer(fmt, 200, &reg.replace(&rt, ns, n, body, sub, opts)?))
        }
        (Method::PATCH, Some(n), Some("scale")) => {
            let pt = PatchType::from_content_type(&ct)?;
            let p = patch::parse_body(pt, &body)?;
            let scale = reg.get_scale(&rt, ns.unwrap_or_default(), n)?;
            let mut desired = patch::apply(pt, &scale, &p)?;
            if p["metadata"]["resourceVersion"].is_null() {
                desired["metadata"]["resourceVersion"] = Value::Null;
            }
            Ok(answer(
                fmt,
                200,
                &reg.set_scale(&rt, ns.unwrap_or_default(), n, &desired)?,
            ))
        }
        (Method::PATCH, Some(n), s @ (None | Some("status"))) => {
            let pt = PatchType::from_content_type(&ct)?;
            if pt == PatchType::Strategic && !resources::is_builtin(&rt) {
                // As apiextensions-apiserver: custom resources have no patch strategies.
                return Err(Error::UnsupportedMediaType(
                    "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml".into(),
                ));
            }
            let p = patch::parse_body(pt, &body)?;
            let sub = if s.is_some() { Sub::Status } else { Sub::Main };
            let existed = reg.get(&rt, ns, n).is_ok();
            let out = reg.patch(&rt, ns, n, pt, &p, sub, opts)?;
            Ok(answer(fmt, if existed { 200 } else { 201 }, &out))
        }
        (Method::DELETE, Some(n), None) => {
            let mut opts = if body.is_empty() {
                DeleteOptions::default()
            } else {
                DeleteOptions::from_body(&parse_json(&body, &ct)?)
            };
            if let Some(g) = q.get("gracePeriodSeconds").and_then(|g| g.parse().ok()) {
                opts.grace_period_seconds = Some(g);
            }
            if let Some(p) = q.get("propagationPolicy") {
                opts.propagation_policy = Some(p.clone());
            }
            opts.dry_run |= q.get("dryRun").is_some_and(|v| v == "All");
            let out = reg.delete(&rt, ns, n, &opts)?;
            let pending =
                !out["metadata"]["deletionTimestamp"].is_null() && reg.get(&rt, ns, n).is_ok();
            Ok(answer(fmt, if pending { 202 } else { 200 }, &out))
        }
        (Method::DELETE, None, None) => {
            let labels = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))?;
            let fields = FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str))?;
            let (items, _) = reg.list(&rt, ns, &labels, &fields);
            let opts = if body.is_empty() {
                DeleteOptions::default()
            } else {
                DeleteOptions::from_body(&parse_json(&body, &ct)?)
            };
            let mut deleted = Vec::new();
            for item in items {
                let (ins, iname) = (
                    item["metadata"]["namespace"].as_str(),
                    item["metadata"]["name"].as_str().unwrap_or_default(),
                );
                match reg.delete(&rt, ins, iname, &opts) {
                    Ok(o) => deleted.push(o),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(answer(
                fmt,
                200,
                &json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(),
                "metadata": {}, "items": deleted}),
            ))
        }
        _ => Err(Error::MethodNotAllowed),
    }
}

fn parse_json(body: &[u8], ct: &str) -> Result<Value> {
    if ct.contains("protobuf") {
        return protobuf::decode(body);
    }
    if ct.contains("cbor") {
        return Err(Error::UnsupportedMediaType(
            "application/json, application/yaml".into(),
        ));
    }
    if ct.contains("yaml") {
        return serde_yaml::from_slice(body)
            .map_err(|e| Error::BadRequest(format!("error decoding YAML: {e}")));
    }
    serde_json::from_slice(body)
        .map_err(|e| Error::BadRequest(format!("error decoding request body: {e}")))
}

#[allow(clippy::too_many_arguments)] // the request's parts, each used once
fn list(
    reg: &Registry,
    rt: &ResourceType,
    ns: Option<&str>,
    labels: &LabelSelector,
    fields: &FieldSelector,
    q: &HashMap<String, String>,
    as_table: bool,
    fmt: Format,
) -> Result<Response> {
    let (mut items, rv) = reg.list(rt, ns, labels, fields);
    let mut meta = json!({"resourceVersion": rv.to_string()});
    // Continue tokens are the hex of the last key returned.
    if let Some(tok) = q.get("continue").filter(|t| !t.is_empty()) {
        let last = hex::decode(tok)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| Error::BadRequest("invalid continue token".into()))?;
        items.retain(|o| item_key(o) > last);
    }
    if let Some(limit) = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        && items.len() > limit
    {
        let remaining = items.len() - limit;
        items.truncate(limit);
        meta["continue"] = json!(hex::encode(item_key(items.last().expect("non-empty"))));
        meta["remainingItemCount"] = json!(remaining);
    }
    if as_table {
        return Ok(json_response(200, &to_table(reg, rt, &items, rv)));
    }
    Ok(answer(
        fmt,
        200,
        &json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": meta, "items": items}),
    ))
}

/// A Table of `items`: built-in columns, or a custom type's printer columns.
fn to_table(reg: &Registry, rt: &ResourceType, items: &[Value], rv: u64) -> Value {
    match reg.custom_type(rt) {
        Some(t) => table::custom_table(&t.columns, items, rv),
        None => table::table(rt, items, rv),
    }
}

fn item_key(o: &Value) -> String {
    format!(
        "{}\u{0}{}",
        o["metadata"]["namespace"].as_str().unwrap_or_default(),
        o["metadata"]["name"].as_str().unwrap_or_default()
    )
}
