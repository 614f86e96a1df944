//! The HTTP listener at `[metrics] address`, served with hyper (HTTP/1.1, keep-alive):
//!
//! ```text
//! GET    /metrics                    Prometheus text (OpenMetrics)
//! GET    /healthz                    200 while the process serves (liveness)
//! GET    /readyz                     200 when Redis answers (breaker closed) and, when rules
//!                                    need it, tracking is up; 503 with the reasons otherwise
//! GET    /api/stats                  PROXY INFO as JSON: {"Proxy": {...}, "Cache": {...}, ...}
//! GET    /api/breaker                the circuit breaker's state and counters
//! GET    /api/config                 the running configuration (secrets hidden)
//! POST   /api/reload                 re-read proxy.toml (400 with the reason if refused)
//! GET    /api/keys/<key>             one key: its rule and cached variants (bytes, age, TTL)
//! DELETE /api/keys/<key>             drop it from the tier: {"dropped": 0|1}
//! POST   /api/invalidate?pattern=<g> drop the keys matching a glob: {"dropped": n}
//! POST   /api/clear                  empty the tier
//! GET    /api/hotkeys?n=10           the most-read and most-invalidated keys lately
//! POST   /api/warm?pattern=<g>&limit=n  fill the tier with matching keys (in the background)
//! GET    /api/warm                   the warm-up's progress
//! ```
//!
//! `/api/*` needs `Authorization: Bearer <admin password>` when `[admin] password_env` is set
//! (401 otherwise). Keys and patterns are percent-decoded. The API calls the same functions as
//! the `PROXY` commands (`admin.rs`); INFO-style texts become JSON objects, numbers as numbers.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use super::Snapshot;
use super::export::render;
use crate::admin;
use crate::breaker::State;
use crate::config::{CacheMode, Tracking};
use crate::context::Context;
use crate::error::ProxyError;

/// How long a client gets to send a request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

type Reply = Response<Full<Bytes>>;

/// Serves HTTP on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, ctx: Arc<Context>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "http: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ctx = Arc::clone(&ctx);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let ctx = Arc::clone(&ctx);
                async move { Ok::<_, Infallible>(handle(&request, &ctx)) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                debug!(error = %e, "http: connection ended");
            }
        });
    }
}

fn handle(request: &Request<Incoming>, ctx: &Context) -> Reply {
    let path = request.uri().path();
    let method = request.method();
    match (method, path) {
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(Snapshot::take(ctx)),
        ),
        (&Method::GET, "/healthz") => json_reply(StatusCode::OK, json!({"status": "ok"})),
        (&Method::GET, "/readyz") => readiness(ctx),
        (_, path) if path.starts_with("/api/") => {
            let token = request.headers().get(AUTHORIZATION).and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
            if !admin::admits(ctx, token) {
                let mut refused =
                    error(StatusCode::UNAUTHORIZED, "an admin password is set: send Authorization: Bearer <password>");
                refused.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return refused;
            }
            api(method, path, request.uri().query().unwrap_or_default(), ctx)
        }
        _ => error(StatusCode::NOT_FOUND, "not found: see /metrics, /healthz, /readyz and /api/..."),
    }
}

fn api(method: &Method, path: &str, query: &str, ctx: &Context) -> Reply {
    let done = |result: Result<Value, ProxyError>| match result {
        Ok(value) => json_reply(StatusCode::OK, value),
        Err(err @ ProxyError::TierDisabled) => error(StatusCode::CONFLICT, &err.to_string()),
        Err(err) => error(StatusCode::BAD_REQUEST, &err.to_string()),
    };
    match (method, path) {
        (&Method::GET, "/api/stats") => json_reply(StatusCode::OK, info_json(&admin::info(ctx))),
        (&Method::GET, "/api/breaker") => json_reply(StatusCode::OK, info_json(&admin::breaker_status(ctx))),
        (&Method::GET, "/api/config") => {
            let pairs = admin::config(ctx, b"*").into_iter().map(|(k, v)| (k, Value::String(v)));
            json_reply(StatusCode::OK, Value::Object(pairs.collect()))
        }
        (&Method::POST, "/api/reload") => done(admin::reload(ctx).map(|summary| json!({"reloaded": summary}))),
        (&Method::GET, "/api/hotkeys") => {
            let n = query.split('&').find_map(|p| p.strip_prefix("n=")).and_then(|n| n.parse().ok()).unwrap_or(10);
            let list = |keys: &[(Bytes, u64)]| -> Value {
                keys.iter().map(|(k, n)| json!({"key": String::from_utf8_lossy(k), "count": n})).collect()
            };
            let sampling =
                json!({"sample_every": crate::cache::SAMPLE_EVERY, "window_seconds": crate::cache::WINDOW.as_secs()});
            done(admin::hot_keys(ctx, usize::min(n, 1000)).map(|hot| {
                json!({"reads": list(&hot.reads), "invalidations": list(&hot.invalidations), "sampling": sampling})
            }))
        }
        (&Method::GET, "/api/warm") => json_reply(StatusCode::OK, info_json(&admin::warm_status(ctx))),
        (&Method::POST, "/api/warm") => {
            let param = |name: &str| query.split('&').find_map(|p| p.strip_prefix(name)?.strip_prefix('='));
            let limit = param("limit").and_then(|l| l.parse::<u64>().ok()).filter(|&l| l > 0);
            match param("pattern").map(percent_decode) {
                Some(pattern) => done(admin::warm(ctx, &pattern, limit).map(|()| json!({"started": true}))),
                None => error(StatusCode::BAD_REQUEST, "POST /api/warm?pattern=<glob>[&limit=n]"),
            }
        }
        (&Method::POST, "/api/clear") => done(admin::clear(ctx).map(|()| json!({"cleared": true}))),
        (&Method::POST, "/api/invalidate") => {
            let pattern = query.split('&').find_map(|pair| pair.strip_prefix("pattern=")).map(percent_decode);
            match pattern {
                Some(glob) => done(admin::invalidate_matching(ctx, &glob).map(|n| json!({"dropped": n}))),
                None => error(StatusCode::BAD_REQUEST, "POST /api/invalidate?pattern=<glob>"),
            }
        }
        (method, path) if path.starts_with("/api/keys/") => {
            let key = percent_decode(&path["/api/keys/".len()..]);
            match *method {
                Method::GET => done(admin::inspect(ctx, &key).map(|text| info_json(&text))),
                Method::DELETE => done(admin::invalidate_key(ctx, &key).map(|n| json!({"dropped": n}))),
                _ => error(StatusCode::METHOD_NOT_ALLOWED, "GET or DELETE /api/keys/<key>"),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "no such API endpoint"),
    }
}

/// Ready when Redis answers (the breaker is closed; in front of a cluster, every master's, and
/// every slot has a master) and, if a tracked rule needs it, the tier's tracking connection is
/// up (every master's).
fn readiness(ctx: &Context) -> Reply {
    let mut reasons = Vec::new();
    match &ctx.cluster {
        Some(cluster) => {
            let map = cluster.map();
            if map.uncovered() > 0 {
                reasons.push(format!("{} slots have no master in the cluster's map", map.uncovered()));
            }
            for (addr, up, _) in cluster.nodes().into_iter().filter(|(addr, _, _)| map.masters().contains(addr)) {
                let state = up.breaker().state();
                if state != State::Closed {
                    reasons.push(format!("circuit breaker {} for cluster node {addr}", state.name()));
                }
            }
        }
        None => {
            let state = ctx.upstream.breaker().state();
            if state != State::Closed {
                reasons.push(format!("circuit breaker {} for upstream {}", state.name(), ctx.upstream.addr()));
            }
        }
    }
    let live = ctx.live.load();
    let config = &live.config;
    let tracked = config.default.cache == CacheMode::Tracked
        || config.rule.iter().any(|rule| rule.cache == Some(CacheMode::Tracked));
    let needs_tracking = config.cache.tracking == Tracking::On && tracked;
    if let Some(tier) = ctx.tier.as_deref().filter(|_| needs_tracking) {
        let masters = ctx.cluster.as_ref().map(|c| (c.map().masters().len() as u64, c.tracked_masters()));
        match masters {
            Some((all, tracked)) if tracked < all => reasons
                .push(format!("tracking is down on {} of {all} masters: their keys are not cached", all - tracked)),
            None if !tier.tracking_up() => reasons.push("tracking is down: tracked keys are not cached".to_owned()),
            _ => {}
        }
    }
    match reasons.is_empty() {
        true => json_reply(StatusCode::OK, json!({"ready": true})),
        false => json_reply(StatusCode::SERVICE_UNAVAILABLE, json!({"ready": false, "reasons": reasons})),
    }
}

/// INFO-style text as JSON: `# Section` headers become objects, `key:value` lines members,
/// numbers numbers.
pub fn info_json(text: &str) -> Value {
    let mut top = Map::new();
    let mut section: Option<(String, Map<String, Value>)> = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("# ") {
            if let Some((name, fields)) = section.take() {
                top.insert(name, Value::Object(fields));
            }
            section = Some((name.trim().to_owned(), Map::new()));
        } else if let Some((key, value)) = line.split_once(':') {
            let value = match value.parse::<i64>() {
                Ok(n) => json!(n),
                Err(_) => value.parse::<f64>().map_or_else(|_| json!(value), |f| json!(f)),
            };
            let fields = section.as_mut().map_or(&mut top, |(_, fields)| fields);
            fields.insert(key.to_owned(), value);
        }
    }
    if let Some((name, fields)) = section {
        top.insert(name, Value::Object(fields));
    }
    Value::Object(top)
}

/// `%XX` escapes decoded (and `+` left as it is: keys may contain it).
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json_reply(status: StatusCode, value: Value) -> Reply {
    let mut body = value.to_string();
    body.push('\n');
    reply(status, "application/json", body)
}

fn error(status: StatusCode, message: &str) -> Reply {
    json_reply(status, json!({"error": message}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_text_becomes_json_with_numbers() {
        let value = info_json(
            "# Cache\r\ncache_hits:12\r\nratio:0.5\r\ncache_tracking:up\r\n\r\n# Breaker\r\nbreaker_state:closed\r\n",
        );
        assert_eq!(value["Cache"]["cache_hits"], json!(12));
        assert_eq!(value["Cache"]["ratio"], json!(0.5));
        assert_eq!(value["Cache"]["cache_tracking"], json!("up"));
        assert_eq!(value["Breaker"]["breaker_state"], json!("closed"));
        assert_eq!(info_json("state:open\r\nretry_in_ms:5\r\n")["retry_in_ms"], json!(5));
    }

    #[test]
    fn keys_are_percent_decoded() {
        assert_eq!(percent_decode("user%3A1%20x+y%zz"), b"user:1 x+y%zz");
    }
}
