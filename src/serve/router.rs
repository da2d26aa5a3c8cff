//! Where a request goes: the routing table the control plane publishes (host → service →
//! traffic split or tag → revision → its pool), and the `Router` that reads it for each
//! request and leases a slot on an instance of the revision it picks. Hosts follow Cloud Run's
//! URLs on `*.localhost`: `SERVICE.localhost` gets the service's traffic split,
//! `TAG---SERVICE.localhost` the tagged revision, and anything else the only service (or the
//! default one).
//!
//! The router speaks no HTTP status: a request it cannot route gets a [`RouteError`], which
//! the proxy answers with Cloud Run's status and text.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::uri::Authority;
use http::HeaderMap;

use crate::instances::pool::{AcquireError, Lease, Pool};
use crate::instances::throttle::RequestName;
use crate::serve::invoker::{Denied, Invoker};

/// What the proxy asks for each request: where it goes, or why it goes nowhere. The
/// [`Router`] in the emulator; a fake in the proxy's tests.
pub trait Backend: Send + Sync + 'static {
    /// Routes a request by its host (`Host`, or the HTTP/2 `:authority`; empty when it has
    /// none), waiting for a cold start if needed.
    /// A private service's invoker check reads `headers`.
    fn route(
        &self,
        host: &str,
        headers: &HeaderMap,
    ) -> impl Future<Output = Result<Route, RouteError>> + Send;
}

/// Where one request goes: an instance's address, the revision's request settings, and the
/// slot that keeps the instance counted busy until the exchange is over.
pub struct Route {
    pub authority: Authority,
    /// End-to-end HTTP/2 cleartext (port named `h2c` or `--use-http2`).
    pub http2: bool,
    pub request_timeout: Duration,
    pub slot: Box<dyn Slot>,
    /// The header a private service's token came from: forwarded without its signature.
    pub token_header: Option<http::header::HeaderName>,
}

/// What a routed request holds on its instance for its whole life (response body, tunnel):
/// dropping it frees the instance's slot. A pool's [`Lease`] in the emulator.
pub trait Slot: Send + Sync + 'static {
    /// The request could not reach the instance (refused, reset, closed early).
    fn unreachable(&self);

    /// Which service, revision and instance the slot is on, for the request log.
    fn served_by(&self) -> Option<ServedBy> {
        None
    }

    /// What the request is, should the instance work after answering it.
    fn note_request(&self, _request: RequestName) {}
}

/// Where a request was served, as the request log names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedBy {
    pub service: Arc<str>,
    pub revision: Arc<str>,
    pub instance: Arc<str>,
    /// The instance's `IP:PORT`.
    pub server: SocketAddr,
}

impl Slot for Lease {
    fn unreachable(&self) {
        Lease::unreachable(self);
    }

    fn note_request(&self, request: RequestName) {
        Lease::note_request(self, request);
    }

    fn served_by(&self) -> Option<ServedBy> {
        let (service, revision) = self.names();
        Some(ServedBy {
            service,
            revision,
            instance: self.instance_id(),
            server: self.addr,
        })
    }
}

/// The service a request's host names (`SERVICE.localhost`, `TAG---SERVICE.localhost`), if
/// any: for the request log of a request no instance answered.
pub fn service_of_host(host: &str) -> Option<&str> {
    parse_host(host).0
}

/// Why a request could not be routed to an instance.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// No service answers at the host; `services` are the URLs of those that exist.
    #[error("no service answers at '{host}'. Services here: {}", list_or_none(.services))]
    NoService { host: String, services: Vec<String> },
    #[error("no revision is tagged '{0}'")]
    NoTag(String),
    /// The service sends no percent of its traffic to a revision that exists (its first
    /// revision failed, say).
    #[error("the service routes no traffic to a revision")]
    NoTraffic,
    /// A private service refused the request (no token, or not a valid one for it).
    #[error("the request has no valid ID token for this private service")]
    Denied(Denied),
    /// The revision was picked, but none of its instances took the request.
    #[error(transparent)]
    Acquire(#[from] AcquireError),
}

fn list_or_none(items: &[String]) -> String {
    match items.is_empty() {
        true => "none".to_string(),
        false => items.join(", "),
    }
}

/// The service URL: `http://SERVICE.localhost:PORT` (`*.localhost` is loopback).
pub fn service_url(service: &str, port: u16) -> String {
    format!("http://{}:{port}", service_host(service))
}

/// A tag's URL: `http://TAG---SERVICE.localhost:PORT`.
pub fn tag_url(tag: &str, service: &str, port: u16) -> String {
    format!("http://{}:{port}", tag_host(tag, service))
}

/// The service URL's host name.
pub fn service_host(service: &str) -> String {
    format!("{service}.localhost")
}

/// A tag URL's host name.
pub fn tag_host(tag: &str, service: &str) -> String {
    format!("{tag}---{service}.localhost")
}

/// Splits a request's host into (service, tag): the inverse of [`service_url`] and
/// [`tag_url`].
fn parse_host(host: &str) -> (Option<&str>, Option<&str>) {
    let host = host
        .rsplit_once(':')
        .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(h, _)| h);
    let Some(label) = host.strip_suffix(".localhost") else {
        return (None, None);
    };
    match label.split_once("---") {
        Some((tag, service)) => (Some(service), Some(tag)),
        None => (Some(label), None),
    }
}

/// Where requests go, as the control plane last published it: built whole, then swapped in.
/// It also answers where traffic goes for status documents and deletes, so neither can
/// disagree with the requests. `P` is what serves a revision: its [`Pool`] (another type in
/// tests).
pub struct RoutingTable<P = Pool> {
    services: HashMap<String, ServiceRoutes<P>>,
    /// The service plain `http://localhost:PORT` reaches when several exist.
    default_service: Option<String>,
}

impl<P> Default for RoutingTable<P> {
    fn default() -> Self {
        RoutingTable {
            services: HashMap::new(),
            default_service: None,
        }
    }
}

/// One service's routes.
pub struct ServiceRoutes<P = Pool> {
    /// The revisions receiving a percent of the requests, with it.
    split: Vec<(RevisionRoute<P>, u32)>,
    tags: HashMap<String, RevisionRoute<P>>,
    /// The traffic as published, by revision name.
    targets: Vec<RoutedTarget>,
    /// A private service's invoker check; `None` for a public one.
    pub invoker: Option<Invoker>,
}

impl<P> Default for ServiceRoutes<P> {
    fn default() -> Self {
        ServiceRoutes {
            split: Vec::new(),
            tags: HashMap::new(),
            targets: Vec::new(),
            invoker: None,
        }
    }
}

/// One published traffic entry, resolved to a revision.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutedTarget {
    pub revision: String,
    /// Whether it follows LATEST (resolved when the table was published).
    pub latest: bool,
    pub percent: u32,
    pub tag: Option<String>,
}

/// A revision requests can be sent to, and its request settings.
#[derive(Clone, Debug)]
pub struct RevisionRoute<P = Pool> {
    pub revision: String,
    pub pool: P,
    pub http2: bool,
    pub timeout: Duration,
}

impl<P: Clone> ServiceRoutes<P> {
    /// Adds one traffic entry, resolved to the revision it sends requests to.
    pub fn add(
        &mut self,
        revision: RevisionRoute<P>,
        latest: bool,
        percent: u32,
        tag: Option<String>,
    ) {
        self.targets.push(RoutedTarget {
            revision: revision.revision.clone(),
            latest,
            percent,
            tag: tag.clone(),
        });
        if let Some(tag) = tag {
            self.tags.insert(tag, revision.clone());
        }
        if percent > 0 {
            self.split.push((revision, percent));
        }
    }
}

impl<P> RoutingTable<P> {
    pub fn new(default_service: Option<String>) -> Self {
        RoutingTable {
            services: HashMap::new(),
            default_service,
        }
    }

    pub fn insert(&mut self, service: String, routes: ServiceRoutes<P>) {
        self.services.insert(service, routes);
    }

    /// A service's published traffic entries (none when it routes nowhere).
    pub fn routed(&self, service: &str) -> &[RoutedTarget] {
        self.services
            .get(service)
            .map(|r| r.targets.as_slice())
            .unwrap_or_default()
    }

    /// The entries that send `service`'s requests to `revision`, by percent or tag: whether
    /// traffic goes to a revision is this one question.
    pub fn targets_of<'a>(
        &'a self,
        service: &str,
        revision: &'a str,
    ) -> impl Iterator<Item = &'a RoutedTarget> {
        self.routed(service)
            .iter()
            .filter(move |t| t.revision == revision)
    }

    /// The percent of `service`'s requests that go to `revision`.
    pub fn percent_of(&self, service: &str, revision: &str) -> u32 {
        self.targets_of(service, revision).map(|t| t.percent).sum()
    }

    /// The revision a request to `host` (lower case) goes to: by tag, or picked from the
    /// service's split at random by weight.
    #[cfg(test)]
    fn lookup(
        &self,
        host: &str,
        port: u16,
        rng: &mut impl rand::Rng,
    ) -> Result<&RevisionRoute<P>, RouteError> {
        let (routes, tag) = self.find(host, port)?;
        routes.pick(tag, rng)
    }

    /// The service a request to `host` (lower case) goes to, and the tag it names.
    fn find<'h>(
        &self,
        host: &'h str,
        port: u16,
    ) -> Result<(&ServiceRoutes<P>, Option<&'h str>), RouteError> {
        let (service, tag) = parse_host(host);
        let routes = match service {
            Some(name) => self.services.get(name),
            None if self.services.len() == 1 => self.services.values().next(),
            None => self
                .default_service
                .as_deref()
                .and_then(|d| self.services.get(d)),
        };
        let Some(routes) = routes else {
            return Err(RouteError::NoService {
                host: host.to_string(),
                services: self.services.keys().map(|s| service_url(s, port)).collect(),
            });
        };
        Ok((routes, tag))
    }
}

impl<P> ServiceRoutes<P> {
    /// The revision a request goes to: by tag, or picked from the split at random by weight.
    fn pick(
        &self,
        tag: Option<&str>,
        rng: &mut impl rand::Rng,
    ) -> Result<&RevisionRoute<P>, RouteError> {
        match tag {
            Some(tag) => self
                .tags
                .get(tag)
                .ok_or_else(|| RouteError::NoTag(tag.to_string())),
            None => pick(&self.split, rng).ok_or(RouteError::NoTraffic),
        }
    }
}

/// Picks one item at random, weighted by its percent; `None` when every weight
/// is 0. It runs once per request, so it draws one number and scans once.
fn pick<'a, T>(split: &'a [(T, u32)], rng: &mut impl rand::Rng) -> Option<&'a T> {
    let total: u64 = split.iter().map(|(_, weight)| u64::from(*weight)).sum();
    if total == 0 {
        return None;
    }
    let mut point = rng.random_range(0..total);
    for (item, weight) in split {
        let weight = u64::from(*weight);
        if point < weight {
            return Some(item);
        }
        point -= weight;
    }
    // Unreachable: `point` starts below the sum of the weights it walks past.
    None
}

/// Routes requests by the routing table last published. Cheap to clone; per request it takes
/// one read lock (to clone the table's `Arc`).
#[derive(Clone)]
pub struct Router {
    table: Arc<RwLock<Arc<RoutingTable>>>,
    /// The front end's port, for the service URLs a 404 lists.
    port: u16,
}

impl Router {
    pub fn new(port: u16) -> Self {
        Router {
            table: Arc::new(RwLock::new(Arc::new(RoutingTable::default()))),
            port,
        }
    }

    /// Replaces the routing table: requests that arrive from now on follow the new one.
    pub fn publish(&self, table: RoutingTable) {
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
    }

    /// The routing table requests are routed by now.
    pub fn table(&self) -> Arc<RoutingTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Backend for Router {
    async fn route(&self, host: &str, headers: &HeaderMap) -> Result<Route, RouteError> {
        let table = self.table();
        let host = match host.bytes().any(|b| b.is_ascii_uppercase()) {
            true => std::borrow::Cow::Owned(host.to_ascii_lowercase()),
            false => std::borrow::Cow::Borrowed(host),
        };
        let (routes, tag) = table.find(&host, self.port)?;
        // A public service has no invoker: nothing to check.
        let token_header = match &routes.invoker {
            None => None,
            Some(invoker) => Some(
                invoker
                    .check(headers, crate::metadata::unix_now())
                    .map_err(RouteError::Denied)?,
            ),
        };
        let revision = routes.pick(tag, &mut rand::rng())?;
        let lease = revision.pool.acquire().await?;
        Ok(Route {
            authority: lease.authority.clone(),
            http2: revision.http2,
            request_timeout: revision.timeout,
            slot: Box::new(lease),
            token_header,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn hosts_name_services_and_tags() {
        assert_eq!(parse_host("hello.localhost:8080"), (Some("hello"), None));
        assert_eq!(
            parse_host("candidate---hello.localhost:8080"),
            (Some("hello"), Some("candidate"))
        );
        assert_eq!(parse_host("hello.localhost"), (Some("hello"), None));
        assert_eq!(parse_host("localhost:8080"), (None, None));
        assert_eq!(parse_host("127.0.0.1:8080"), (None, None));
    }

    #[test]
    fn urls_parse_back_to_their_service_and_tag() {
        assert_eq!(
            parse_host(&service_url("hello", 8080)["http://".len()..]),
            (Some("hello"), None)
        );
        assert_eq!(
            parse_host(&tag_url("blue", "hello", 8080)["http://".len()..]),
            (Some("hello"), Some("blue"))
        );
    }

    #[test]
    fn pick_follows_the_weights() {
        let mut rng = StdRng::seed_from_u64(7);
        let split = [("a", 30), ("b", 70)];
        let picks = 10_000;
        let a = (0..picks)
            .filter(|_| pick(&split, &mut rng) == Some(&"a"))
            .count();
        let share = a as f64 / f64::from(picks);
        assert!(
            (share - 0.30).abs() <= 0.03,
            "a was picked {share:.3} of the time"
        );
    }

    #[test]
    fn pick_skips_zero_weights_and_refuses_nothing() {
        let mut rng = StdRng::seed_from_u64(1);
        let split = [("zero", 0), ("all", 100), ("also-zero", 0)];
        for _ in 0..1000 {
            assert_eq!(pick(&split, &mut rng), Some(&"all"));
        }
        assert_eq!(pick::<&str>(&[], &mut rng), None);
        assert_eq!(pick(&[("a", 0), ("b", 0)], &mut rng), None);
    }

    /// A revision served by a name instead of a pool.
    fn revision(name: &str) -> RevisionRoute<&'static str> {
        RevisionRoute {
            revision: name.to_string(),
            pool: "pool",
            http2: false,
            timeout: Duration::from_secs(300),
        }
    }

    /// `hello`: 100% to hello-1, hello-2 tagged `blue` with 0%; `other`: routes nowhere.
    fn table(default_service: Option<&str>) -> RoutingTable<&'static str> {
        let mut table = RoutingTable::new(default_service.map(str::to_string));
        let mut hello = ServiceRoutes::default();
        hello.add(revision("hello-1"), true, 100, None);
        hello.add(revision("hello-2"), false, 0, Some("blue".to_string()));
        table.insert("hello".to_string(), hello);
        table.insert("other".to_string(), ServiceRoutes::default());
        table
    }

    fn routed_to(table: &RoutingTable<&'static str>, host: &str) -> Result<String, String> {
        let mut rng = StdRng::seed_from_u64(3);
        table
            .lookup(host, 8080, &mut rng)
            .map(|r| r.revision.clone())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn requests_go_by_service_then_tag_or_split() {
        let table = table(None);
        assert_eq!(
            routed_to(&table, "hello.localhost:8080"),
            Ok("hello-1".into())
        );
        assert_eq!(
            routed_to(&table, "blue---hello.localhost:8080"),
            Ok("hello-2".into())
        );
        assert_eq!(
            routed_to(&table, "green---hello.localhost:8080"),
            Err("no revision is tagged 'green'".into())
        );
        assert!(matches!(
            table.lookup("other.localhost", 8080, &mut rand::rng()),
            Err(RouteError::NoTraffic)
        ));
    }

    #[test]
    fn an_unnamed_host_goes_to_the_default_or_only_service() {
        assert_eq!(
            routed_to(&table(Some("hello")), "localhost:8080"),
            Ok("hello-1".into())
        );
        let Err(RouteError::NoService { host, mut services }) =
            table(None).lookup("localhost:8080", 8080, &mut rand::rng())
        else {
            panic!("two services and no default: nothing answers");
        };
        services.sort();
        assert_eq!(host, "localhost:8080");
        assert_eq!(
            services,
            ["http://hello.localhost:8080", "http://other.localhost:8080"]
        );
        let mut only = RoutingTable::new(None);
        let mut hello = ServiceRoutes::default();
        hello.add(revision("hello-1"), true, 100, None);
        only.insert("hello".to_string(), hello);
        assert_eq!(routed_to(&only, "127.0.0.1:8080"), Ok("hello-1".into()));
        assert_eq!(
            routed_to(&RoutingTable::default(), "x.localhost"),
            Err("no service answers at 'x.localhost'. Services here: none".into())
        );
    }

    #[test]
    fn a_revision_is_routed_to_by_percent_or_tag() {
        let table = table(None);
        assert_eq!(table.percent_of("hello", "hello-1"), 100);
        assert_eq!(table.percent_of("hello", "hello-2"), 0);
        assert_eq!(
            table
                .targets_of("hello", "hello-2")
                .map(|t| t.tag.as_deref())
                .collect::<Vec<_>>(),
            [Some("blue")]
        );
        assert_eq!(table.targets_of("hello", "hello-3").count(), 0);
        assert_eq!(table.targets_of("other", "hello-1").count(), 0);
        assert!(table.routed("missing").is_empty());
    }
}
