//! One HTTP request: record it, apply the active fault, route it and answer like
//! kube-apiserver (objects, lists, Status errors; watches are handed to [`super::watch`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use autonomy_cache::strategic_merge::{self, Schema};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::body::ApiBody;
use super::discovery;
use super::fault::{FaultAction, MALFORMED_BODY};
use super::filter::{list_item, ObjectFilter};
use super::gzip;
use super::meta::merge_patch;
use super::paging::{self, ContinueToken};
use super::pod_update;
use super::resource::Res;
use super::route::{parse_path, parse_query, Query, ResourcePath, Route};
use super::server::{lock, AnsweredRequest, ClientIdentity, RecordedRequest, Shared};
use super::status::ApiError;
use super::store::parse_rv;
use super::watch;

/// Largest request body accepted (kube-apiserver's limit is 3 MiB).
const MAX_REQUEST_BODY: usize = 3 * 1024 * 1024;
/// Most of an oversized body read and dropped before answering 413.
const MAX_DRAINED: usize = 16 * 1024 * 1024;

/// Answers one request.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    identity: ClientIdentity,
) -> Response<ApiBody> {
    let request = recorded(&req, &identity);
    let (method, path_and_query) = (request.method.clone(), request.path_and_query.clone());
    shared.record(request);
    let resp = answer(&shared, req, identity).await;
    shared.record_answer(AnsweredRequest {
        method,
        path_and_query,
        status: resp.status().as_u16(),
    });
    resp
}

async fn answer(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    identity: ClientIdentity,
) -> Response<ApiBody> {
    let path = req.uri().path().to_owned();
    match shared.fault().action_for(&path) {
        FaultAction::Serve => {}
        FaultAction::DelayThenServe(dur) => tokio::time::sleep(dur).await,
        FaultAction::Malformed => {
            return with_type(
                StatusCode::OK,
                ApiBody::full(MALFORMED_BODY),
                "application/json",
            )
        }
        FaultAction::Huge(bytes) => {
            return with_type(StatusCode::OK, ApiBody::filler(bytes), "application/json")
        }
        FaultAction::Status { code, reason } => {
            return error_response(&ApiError::Injected { code, reason })
        }
    }
    let compressible = shared.compression.load(Ordering::SeqCst)
        && gzip::wants_gzip(req.headers())
        && compressible_request(&req);
    let resp = match route(shared, req, &identity).await {
        Ok(resp) => resp,
        Err(e) => error_response(&e),
    };
    if !compressible {
        return resp;
    }
    let (resp, gzipped) = gzip::compress_large(resp);
    if gzipped {
        shared.gzipped.fetch_add(1, Ordering::SeqCst);
    }
    resp
}

/// A resource request that is not a watch: kube-apiserver compresses only those (never
/// watches, discovery or health).
fn compressible_request(req: &Request<Incoming>) -> bool {
    match parse_path(req.uri().path()) {
        Route::Resource(path) => {
            !path.legacy_watch && !parse_query(req.uri().query().unwrap_or("")).watch
        }
        _ => false,
    }
}

fn recorded(req: &Request<Incoming>, identity: &ClientIdentity) -> RecordedRequest {
    let header = |name: &str| header_str(req.headers(), name);
    RecordedRequest {
        method: req.method().to_string(),
        path_and_query: req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().path().to_owned(), |pq| pq.as_str().to_owned()),
        user_agent: header("user-agent"),
        accept: header("accept"),
        accept_encoding: header("accept-encoding"),
        authorization: header("authorization"),
        content_type: header("content-type"),
        client_cn: identity.cn.clone(),
        client_orgs: identity.orgs.clone(),
    }
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn route(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    identity: &ClientIdentity,
) -> Result<Response<ApiBody>, ApiError> {
    let route = parse_path(req.uri().path());
    let query = parse_query(req.uri().query().unwrap_or(""));
    if !matches!(route, Route::Resource(_)) && req.method() != Method::GET {
        return Err(ApiError::MethodNotAllowed);
    }
    match route {
        Route::Health => Ok(with_type(
            StatusCode::OK,
            ApiBody::full("ok"),
            "text/plain; charset=utf-8",
        )),
        Route::Version => Ok(json_response(StatusCode::OK, &discovery::version())),
        Route::CoreVersions => Ok(json_response(
            StatusCode::OK,
            &discovery::core_versions(&shared.server_address),
        )),
        Route::Groups => {
            let doc = discovery::groups(lock(&shared.store).resources());
            Ok(json_response(StatusCode::OK, &doc))
        }
        Route::Resources { group, version } => {
            let doc = discovery::resource_list(lock(&shared.store).resources(), &group, &version)
                .ok_or(ApiError::UnknownPath)?;
            Ok(json_response(StatusCode::OK, &doc))
        }
        Route::Resource(path) => resource(shared, req, path, query, identity).await,
        Route::Unknown => Err(ApiError::UnknownPath),
    }
}

/// The resource type a path names, checked against its scope and subresource.
fn resolve(shared: &Shared, path: &ResourcePath) -> Result<Res, ApiError> {
    let res = lock(&shared.store)
        .lookup(&path.group, &path.version, &path.resource)
        .ok_or(ApiError::UnknownPath)?;
    let bad_scope = !res.namespaced && path.namespace.is_some();
    let bad_sub = path
        .subresource
        .as_deref()
        .is_some_and(|s| s != "status" && !res.extra_subresources().contains(&s));
    if bad_scope || bad_sub || (path.subresource.is_some() && path.legacy_watch) {
        return Err(ApiError::UnknownPath);
    }
    Ok(res)
}

async fn resource(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    path: ResourcePath,
    query: Query,
    identity: &ClientIdentity,
) -> Result<Response<ApiBody>, ApiError> {
    let res = resolve(shared, &path)?;
    let ns = path.namespace.as_deref();
    let sub = path.subresource.as_deref();
    let status_only = sub == Some("status");
    let method = req.method().clone();
    let content_type = header_str(req.headers(), "content-type").unwrap_or_default();
    match (method, path.name.as_deref()) {
        (Method::GET, name) if query.watch || path.legacy_watch => {
            let filter = ObjectFilter::new(ns, name, &query.label_selector, &query.field_selector)
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
            watch::start(shared.clone(), &res, filter, &query)
        }
        (Method::GET, Some(name)) => {
            let obj = lock(&shared.store)
                .get(&res, ns, name)
                .ok_or_else(|| not_found(&res, name))?;
            Ok(json_response(StatusCode::OK, &obj))
        }
        (Method::GET, None) => list(shared, &res, ns, &query),
        (Method::POST, None) if sub.is_some() => Err(ApiError::MethodNotAllowed),
        (Method::POST, None) if res.namespaced && ns.is_none() => Err(ApiError::MethodNotAllowed),
        (Method::POST, None) => {
            require_json(&content_type)?;
            let mut body = read_json(req).await?;
            if res == Res::certificate_signing_requests() {
                set_requester(&mut body, identity);
            }
            let obj = shared.mutate(|s| s.create(&res, ns, body))?;
            Ok(json_response(StatusCode::CREATED, &obj))
        }
        (Method::PUT, Some(name)) => {
            require_json(&content_type)?;
            let body = read_json(req).await?;
            let obj = shared.mutate(|s| {
                // A missing object: `update` answers (404, or 400 for a renamed body).
                let next = match s.get(&res, ns, name) {
                    Some(stored) => checked_write(&res, sub, name, &stored, body)?,
                    None => body,
                };
                s.update(&res, ns, name, next, status_only)
            })?;
            Ok(json_response(StatusCode::OK, &obj))
        }
        (Method::PATCH, Some(name)) => {
            // Strategic merge patches with the node proxy's rules (core/v1 merge keys).
            let strategic = match content_type.split(';').next().unwrap_or("").trim() {
                "application/merge-patch+json" => false,
                "application/strategic-merge-patch+json" => true,
                _ => return Err(ApiError::UnsupportedMediaType),
            };
            let patch = read_json(req).await?;
            let schema = Schema::for_resource(&res.group, &res.resource);
            let obj = shared.mutate(|s| {
                let stored = s.get(&res, ns, name).ok_or_else(|| not_found(&res, name))?;
                let next = if strategic {
                    strategic_merge::apply(&stored, &patch, &schema)
                        .map_err(|e| ApiError::BadRequest(e.to_string()))?
                } else {
                    let mut next = (*stored).clone();
                    merge_patch(&mut next, &patch);
                    next
                };
                let next = checked_write(&res, sub, name, &stored, next)?;
                s.update(&res, ns, name, next, status_only)
            })?;
            Ok(json_response(StatusCode::OK, &obj))
        }
        (Method::DELETE, Some(name)) if !status_only => {
            let gone = shared
                .mutate(|s| s.delete(&res, ns, name))
                .ok_or_else(|| not_found(&res, name))?;
            Ok(json_response(StatusCode::OK, &gone))
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

/// What a PUT or PATCH (already applied) writes, after the checks of its subresource:
/// `approval` takes only `status.conditions`; a pod update is validated as
/// kube-apiserver's `ValidatePodUpdate` does (after the resourceVersion precondition,
/// which [`super::store::Store::update`] checks).
fn checked_write(
    res: &Res,
    sub: Option<&str>,
    name: &str,
    stored: &Value,
    next: Value,
) -> Result<Value, ApiError> {
    let rv = |v: &Value| {
        v.get("metadata")
            .and_then(|m| m.get("resourceVersion"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    match sub {
        Some("approval") => {
            let mut out = stored.clone();
            if let Some(body_rv) = rv(&next).filter(|r| !r.is_empty()) {
                out["metadata"]["resourceVersion"] = Value::String(body_rv);
            }
            let conditions = next
                .get("status")
                .and_then(|s| s.get("conditions"))
                .cloned()
                .unwrap_or(Value::Null);
            if !out.get("status").is_some_and(Value::is_object) {
                out["status"] = json!({});
            }
            out["status"]["conditions"] = conditions;
            Ok(out)
        }
        None if *res == Res::pods() => {
            let stale = rv(&next).is_some_and(|r| !r.is_empty() && Some(&r) != rv(stored).as_ref());
            if !stale {
                pod_update::validate(name, stored, &next)?;
            }
            Ok(next)
        }
        _ => Ok(next),
    }
}

/// `spec.username` and `spec.groups` of a new CSR: who created it, as the x509
/// authenticator sees the client certificate (whatever the body claims).
fn set_requester(body: &mut Value, identity: &ClientIdentity) {
    let (user, mut groups) = match &identity.cn {
        Some(cn) => (cn.clone(), identity.orgs.clone()),
        None => (
            "system:anonymous".to_owned(),
            vec!["system:unauthenticated".to_owned()],
        ),
    };
    if identity.cn.is_some() {
        groups.push("system:authenticated".to_owned());
    }
    if !body.get("spec").is_some_and(Value::is_object) {
        body["spec"] = json!({});
    }
    body["spec"]["username"] = json!(user);
    body["spec"]["groups"] = json!(groups);
}

/// 415 for a body that is not JSON (e.g. kubectl's and kubelet's protobuf), so client-go
/// retries in JSON; a missing Content-Type is read as JSON.
fn require_json(content_type: &str) -> Result<(), ApiError> {
    match content_type.split(';').next().unwrap_or("").trim() {
        "" | "application/json" => Ok(()),
        _ => Err(ApiError::UnsupportedMediaType),
    }
}

fn not_found(res: &Res, name: &str) -> ApiError {
    ApiError::NotFound {
        resource: res.resource.clone(),
        name: name.to_owned(),
    }
}

/// A list: `<Kind>List` with the current resourceVersion and items without kind/apiVersion,
/// one page of it when `limit` is set.
fn list(
    shared: &Shared,
    res: &Res,
    namespace: Option<&str>,
    query: &Query,
) -> Result<Response<ApiBody>, ApiError> {
    let filter = ObjectFilter::new(
        namespace,
        None,
        &query.label_selector,
        &query.field_selector,
    )
    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let rv_param = query.resource_version.as_deref();
    let requested = parse_rv(rv_param)?;
    let after = query
        .continue_token
        .as_deref()
        .map(ContinueToken::decode)
        .transpose()?;
    let store = lock(&shared.store);
    let current = store.current_rv();
    if let Some(rv) = requested {
        if rv > current {
            return Err(ApiError::TooLargeResourceVersion {
                requested: rv,
                current,
            });
        }
        let exact = query.resource_version_match.as_deref() == Some("Exact");
        if exact && rv < store.oldest_rv() {
            return Err(ApiError::ListExpired);
        }
    }
    if after.as_ref().is_some_and(|t| t.rv < store.oldest_rv()) {
        return Err(ApiError::ContinueExpired);
    }
    let selected: Vec<_> = store
        .list(res, namespace)
        .into_iter()
        .filter(|o| filter.matches(o))
        .collect();
    drop(store);
    // The watch cache (rv "0") ignores limit; so does the fake.
    let limit = if rv_param == Some("0") {
        0
    } else {
        query.limit
    };
    let list_rv = after.as_ref().map_or(current, |t| t.rv);
    let page = paging::page(selected, after.as_ref(), limit, list_rv);
    let mut meta = json!({ "resourceVersion": list_rv.to_string() });
    if let (Some(token), Some(remaining)) = (page.continue_token, page.remaining) {
        meta["continue"] = json!(token);
        meta["remainingItemCount"] = json!(remaining);
    }
    let items: Vec<Value> = page.items.iter().map(|o| list_item(o)).collect();
    let doc = json!({
        "kind": res.list_kind(),
        "apiVersion": res.api_version(),
        "metadata": meta,
        "items": items,
    });
    Ok(json_response(StatusCode::OK, &doc))
}

/// Reads a bounded JSON request body. An oversized body is still read (and dropped) up to
/// [`MAX_DRAINED`] so the client receives the 413 instead of a reset connection.
async fn read_json(req: Request<Incoming>) -> Result<Value, ApiError> {
    let mut body = req.into_body();
    let mut bytes = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::BadRequest(format!("reading the request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen = seen.saturating_add(data.len());
        if seen > MAX_DRAINED {
            break;
        }
        if seen <= MAX_REQUEST_BODY {
            bytes.extend_from_slice(&data);
        }
    }
    if seen > MAX_REQUEST_BODY {
        return Err(ApiError::TooLarge {
            limit: MAX_REQUEST_BODY,
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::BadRequest(format!("couldn't get version/kind; json parse error: {e}"))
    })
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &Value) -> Response<ApiBody> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    with_type(status, ApiBody::full(bytes), "application/json")
}

/// A `Status` error response.
pub fn error_response(err: &ApiError) -> Response<ApiBody> {
    let status = StatusCode::from_u16(err.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &err.to_status())
}

/// A response with a status, body and Content-Type.
pub fn with_type(
    status: StatusCode,
    body: ApiBody,
    content_type: &'static str,
) -> Response<ApiBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
