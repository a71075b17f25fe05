//! The hub's listener and per-request decisions: forward (recording what
//! cached components get), or answer from the cache while offline.

use std::sync::Arc;
use std::time::Duration;

use autonomy_cache::{AutonomyCache, ComponentRule, OfflineAnswer, RequestInfo, Verb};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, CONTENT_LENGTH, CONTENT_TYPE, USER_AGENT};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use transport::http_server::TlsListener;

use crate::filters::Filters;
use crate::forward::{credentials, requested_upgrade, strip_hop_by_hop, upstream_request};
use crate::gunzip::{self, Encoding, GunzipBody, GzipCounters, MAX_DECODED_BODY};
use crate::metrics::HubMetrics;
use crate::prober::HubHealth;
use crate::record::{pump_body, CacheFailures, RecordCtx};
use crate::respond::{self, channel_body, HubBody};
use crate::upstream::{Credentials, UpstreamClient};
use crate::watch_pump::pump_watch;

/// Request bodies read for offline answers (lease, node- and pod-status writes) are capped here.
const MAX_OFFLINE_REQUEST_BODY: usize = 4 << 20;

/// Request heads must arrive within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything a request handler needs.
pub struct Hub {
    pub client: Arc<UpstreamClient>,
    pub health: HubHealth,
    pub cache: AutonomyCache,
    pub components: ComponentRule,
    pub metrics: HubMetrics,
    pub failures: CacheFailures,
    /// Response filters for cached components (online and offline alike).
    pub filters: Filters,
}

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `--hub-addr` (plain HTTP, node-local components): a request without
    /// `Authorization` goes upstream with the node's certificate.
    Node,
    /// `--hub-https-addr` (pods): never with the node's certificate; a
    /// request without a token goes upstream anonymously, and the apiserver
    /// answers it as it would answer the pod.
    Pods,
}

/// Who asks and what, decided once per request.
struct Classified {
    origin: Origin,
    info: RequestInfo,
    /// The cached component, if the User-Agent names one.
    component: Option<String>,
}

impl Classified {
    /// Responses to this request are recorded.
    fn recorded(&self) -> bool {
        self.component.is_some() && self.info.cacheable()
    }

    /// A read the cache can answer when the upstream fails.
    fn cache_readable(&self) -> bool {
        self.recorded() && !self.info.watch && matches!(self.info.verb, Verb::Get | Verb::List)
    }
}

/// TLS handshakes on the pods' listener must finish within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts clients until the task is dropped.
pub async fn serve(listener: TcpListener, hub: Arc<Hub>) {
    transport::http_server::serve_http1(listener, None, "hub-addr", HEADER_TIMEOUT, || {
        service(hub.clone(), Origin::Node)
    })
    .await
}

/// Accepts pods over TLS until the task is dropped.
pub async fn serve_https(listener: TcpListener, tls: tokio_rustls::TlsAcceptor, hub: Arc<Hub>) {
    let tls = TlsListener {
        acceptor: tls,
        handshake_timeout: HANDSHAKE_TIMEOUT,
    };
    transport::http_server::serve_http1(
        listener,
        Some(tls),
        "hub-https-addr",
        HEADER_TIMEOUT,
        || service(hub.clone(), Origin::Pods),
    )
    .await
}

fn service(
    hub: Arc<Hub>,
    origin: Origin,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<HubBody>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Send {
    hyper::service::service_fn(move |req| {
        let hub = hub.clone();
        async move { Ok::<_, std::convert::Infallible>(hub.handle(req, origin).await) }
    })
}

impl Hub {
    /// Answers one request.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        origin: Origin,
    ) -> Response<HubBody> {
        let path_and_query = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".to_string());
        let info = match RequestInfo::parse(req.method().as_str(), &path_and_query) {
            Ok(i) => i.with_content_type(
                req.headers()
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok()),
            ),
            Err(e) => return respond::status(400, "BadRequest", &e.to_string()),
        };
        let agent = req.headers().get(USER_AGENT).and_then(|v| v.to_str().ok());
        let component = self.components.component(agent);
        let c = Classified {
            origin,
            info,
            component,
        };
        if self.health.current().forwards() {
            self.forward(req, c, &path_and_query).await
        } else {
            self.answer_offline(req, c).await
        }
    }

    /// Offline: cached components get the cache's answer, others a 503.
    async fn answer_offline(&self, req: Request<Incoming>, c: Classified) -> Response<HubBody> {
        let Some(component) = c.component.as_deref() else {
            return respond::offline_unavailable("requests of uncached clients");
        };
        let body = match respond::read_bounded(req.into_body(), MAX_OFFLINE_REQUEST_BODY).await {
            Ok(b) => b,
            Err(e) => return respond::status(413, "RequestEntityTooLarge", &e),
        };
        let answer = self
            .cache
            .offline_answer_durable(component, &c.info, &body)
            .await;
        self.respond_cached(component, &c.info, answer)
    }

    fn cache_answer(&self, component: &str, info: &RequestInfo, body: &[u8]) -> Response<HubBody> {
        let answer = self.cache.offline_answer(component, info, body);
        self.respond_cached(component, info, answer)
    }

    fn respond_cached(
        &self,
        component: &str,
        info: &RequestInfo,
        answer: OfflineAnswer,
    ) -> Response<HubBody> {
        match answer {
            OfflineAnswer::Respond { status, body } => {
                self.count(component, info, "cache");
                let filter = (status == 200)
                    .then(|| self.filters.for_request(component, info))
                    .flatten();
                let body = match filter.and_then(|f| f.body(&body)) {
                    Some(filtered) => filtered,
                    None => body,
                };
                respond::json(status, body)
            }
            OfflineAnswer::HoldWatch => {
                self.count(component, info, "held");
                respond::held_watch(info.timeout_seconds, self.health.subscribe())
            }
        }
    }

    fn gzip_counters(&self) -> GzipCounters {
        let side = |s: &str| self.metrics.hub_gzip_bytes.with_label_values(&[s]);
        GzipCounters {
            compressed: side("compressed"),
            decoded: side("decoded"),
        }
    }

    fn count(&self, component: &str, info: &RequestInfo, result: &str) {
        let verb = format!("{:?}", info.verb).to_lowercase();
        self.metrics
            .cache_requests
            .with_label_values(&[component, &verb, result])
            .inc();
    }

    /// Online: forward; if the upstream fails or the cloud goes offline while
    /// we wait, cached reads are answered from the cache.
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        c: Classified,
        pq: &str,
    ) -> Response<HubBody> {
        let upgrade = requested_upgrade(req.headers()).is_some();
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let creds = match c.origin {
            Origin::Node => credentials(req.headers()),
            Origin::Pods => Credentials::OwnToken,
        };
        let (parts, body) = req.into_parts();
        let up_req = match upstream_request(parts, body.boxed(), pq, c.recorded()) {
            Ok(r) => r,
            Err(e) => return respond::status(400, "BadRequest", &format!("unusable request: {e}")),
        };
        let mut reachability = self.health.subscribe();
        let waiting = self.health.waiting();
        let sent = tokio::select! {
            r = self.client.send(creds, up_req, upgrade) => Some(r),
            _ = reachability.wait_for(|r| !r.forwards()) => None,
        };
        drop(waiting);
        let resp = match sent {
            Some(Ok(resp)) => {
                if !resp.status().is_server_error() {
                    self.health.answered();
                }
                resp
            }
            Some(Err(e)) => {
                let reason = e.to_string();
                self.health.traffic_failed(e.offline_reason(), &reason);
                return self.fallback(&c, &reason);
            }
            None => return self.fallback(&c, "the cloud went offline while waiting"),
        };
        if let Some(on_client) = client_upgrade {
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                return splice_upgrade(resp, on_client);
            }
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        // Cached requests asked for gzip (forward.rs): their bodies are decoded here.
        let asked_gzip = c.recorded().then(|| self.gzip_counters());
        let (body, readable) = decoded_body(&mut parts.headers, body, asked_gzip);
        let recordable = parts.status.is_success() && c.recorded() && readable;
        let recording = match (&c.component, recordable) {
            (Some(component), true) => Some(component.clone()),
            _ => None,
        };
        if let Some(component) = &c.component {
            let result = if recording.is_some() {
                "upstream"
            } else {
                "upstream_uncached"
            };
            self.count(component, &c.info, result);
        }
        let Some(component) = recording else {
            return Response::from_parts(parts, body);
        };
        let filter = self.filters.for_request(&component, &c.info);
        if filter.is_some() {
            // A filtered body may change length.
            parts.headers.remove(CONTENT_LENGTH);
        }
        let (tx, client_body) = channel_body();
        let ctx = RecordCtx {
            cache: self.cache.clone(),
            component,
            info: c.info.clone(),
            failures: self.failures.clone(),
            reachability,
            filter,
        };
        if c.info.watch {
            tokio::spawn(pump_watch(body, tx, ctx));
        } else {
            tokio::spawn(pump_body(body, tx, ctx));
        }
        Response::from_parts(parts, client_body)
    }

    /// The upstream did not answer: cached reads come from the cache, the rest get a 503.
    fn fallback(&self, c: &Classified, reason: &str) -> Response<HubBody> {
        match c.component.as_deref() {
            Some(component) if c.cache_readable() => {
                tracing::debug!(
                    component,
                    reason,
                    "upstream did not answer; reading the cache"
                );
                self.cache_answer(component, &c.info, &[])
            }
            Some(component) if c.recorded() && c.info.watch => {
                self.cache_answer(component, &c.info, &[])
            }
            _ => respond::status(
                503,
                "ServiceUnavailable",
                &format!("the apiserver did not answer: {reason}"),
            ),
        }
    }
}

/// The upstream body as the client gets it, and whether the cache can read
/// it. Only requests the hub asked gzip for (`asked_gzip`, counted there) are
/// decoded: other clients' encodings pass through untouched, as they asked
/// for them.
fn decoded_body(
    headers: &mut HeaderMap,
    body: Incoming,
    asked_gzip: Option<GzipCounters>,
) -> (HubBody, bool) {
    let plain = |body: Incoming| body.map_err(std::io::Error::other).boxed();
    let Some(counters) = asked_gzip else {
        return (plain(body), true);
    };
    match gunzip::encoding(headers) {
        Encoding::Identity => (plain(body), true),
        Encoding::Gzip => {
            gunzip::strip_encoding_headers(headers);
            (
                GunzipBody::new(body, MAX_DECODED_BODY, counters).boxed(),
                true,
            )
        }
        Encoding::Other(other) => {
            tracing::warn!(encoding = %other,
                "the apiserver answered a cached request in an encoding the hub did not ask for: passed through, not cached");
            (plain(body), false)
        }
    }
}

/// Returns the 101 to the client and splices the two upgraded connections.
fn splice_upgrade(
    mut resp: Response<Incoming>,
    on_client: hyper::upgrade::OnUpgrade,
) -> Response<HubBody> {
    let on_upstream = hyper::upgrade::on(&mut resp);
    let (parts, _) = resp.into_parts();
    tokio::spawn(async move {
        let (client, upstream) = match tokio::join!(on_client, on_upstream) {
            (Ok(c), Ok(u)) => (c, u),
            (Err(e), _) | (_, Err(e)) => {
                tracing::info!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(error = %e, "upgraded connection ended with an error");
        }
    });
    let empty = http_body_util::Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed();
    Response::from_parts(parts, empty)
}
