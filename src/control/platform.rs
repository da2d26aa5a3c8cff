//! The emulated Cloud Run control plane: services, their immutable revisions and their
//! traffic, applied the way Knative Serving applies a Service (a changed template makes a new
//! revision; traffic moves only to revisions that are ready). It publishes the routing table
//! the front end's router reads on every request, and reads status back from it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cloudrun;
use crate::config::FieldError;
use crate::control::knative::{self, Condition, ObjectMeta, RevisionTemplate};
use crate::control::template::{self, Secrets};
use crate::control::traffic::{self, TargetKey, TrafficTarget};
use crate::events::{Event, Events};
use crate::instances::instance::{ContainerNetwork, RevisionSpec, StartError, StartFailure};
use crate::instances::pool::{InstanceContext, Pool};
use crate::instances::revision::RevisionConfig;
use crate::metadata;
use crate::runtime::{self, RuntimeError};
use crate::serve::invoker::Invoker;
use crate::serve::router::{self, RevisionRoute, Router, RoutingTable, ServiceRoutes};

/// Why an apply (deploy, replace, update-traffic) was refused or failed. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A field of the document is wrong (the user's fault).
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The traffic asked for is not valid (gcloud's and Knative's texts).
    #[error(transparent)]
    Traffic(#[from] traffic::TrafficError),
    /// The image is missing or cannot be pulled.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The image is not linux/amd64: Cloud Run refuses it.
    #[error(
        "{}\n(the local image is {platform}.)\n\n{}",
        cloudrun::unsupported_platform(image, "application/vnd.docker.distribution.manifest.v2+json"),
        cloudrun::AMD64_HINT.replace("IMAGE", image)
    )]
    Unsupported {
        image: String,
        /// The platform the local image is for, e.g. `linux/arm64/v8`.
        platform: String,
    },
    /// The new revision (or one that traffic moves to) did not become ready.
    #[error(transparent)]
    NotReady(#[from] NotReady),
    /// The change raced with something else: a delete, the shutdown, a name taken.
    #[error(transparent)]
    Conflict(#[from] Conflict),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// The image of a new revision cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{source}\nThe image is neither present locally nor pullable (is the registry reachable, and are you logged in?). Build it locally: docker build --platform linux/amd64 -t {image} .")]
    NotPullable {
        image: String,
        #[source]
        source: RuntimeError,
    },
    #[error("image '{image}' was pulled but cannot be found")]
    GoneAfterPull { image: String },
}

/// Why the traffic asked for has no ready revision to go to.
#[derive(Clone, Debug, thiserror::Error)]
pub enum NotReady {
    /// A revision failed its start: now, or when it was created (Cloud Run keeps it, failed).
    #[error(transparent)]
    Failed(#[from] RevisionFailure),
    /// LATEST is asked for, but the service has never had a ready revision.
    #[error("The service has no ready revision for LATEST to send traffic to.")]
    NoLatestRevision,
}

/// A revision whose instance did not become ready: the failed start and the settings it ran
/// with. Shown as Cloud Run's text, the container's last log lines and the diagnosis.
#[derive(Clone, Debug)]
pub struct RevisionFailure {
    start: Arc<StartFailure>,
    spec: Arc<RevisionSpec>,
}

impl RevisionFailure {
    pub fn new(start: StartFailure, spec: &RevisionSpec) -> Self {
        RevisionFailure {
            start: Arc::new(start),
            spec: Arc::new(spec.clone()),
        }
    }

    /// Why the start failed: an exit (with its code and whether it was an OOM kill), a
    /// startup probe that never passed, an exec format error...
    pub fn error(&self) -> &StartError {
        &self.start.error
    }

    pub fn revision(&self) -> &str {
        &self.spec.revision
    }

    /// Cloud Run's line for a user's startup probe that never passed on an app that listens.
    pub fn startup_probe_failed(&self) -> Option<String> {
        self.start.startup_probe_failed(&self.spec)
    }

    /// The local diagnosis, if the failure has one.
    pub fn diagnosis(&self) -> Option<String> {
        self.start.diagnosis(&self.spec)
    }
}

impl std::fmt::Display for RevisionFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.start.report(&self.spec))
    }
}

impl std::error::Error for RevisionFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.start.error)
    }
}

/// An apply that lost a race: nothing of it was applied.
#[derive(Debug, thiserror::Error)]
pub enum Conflict {
    /// The emulator stopped before the apply's task ran to its end.
    #[error("The emulator is shutting down.")]
    Abandoned,
    /// The shutdown cancelled the apply.
    #[error("The emulator is shutting down; the change was not applied.")]
    ShuttingDown,
    /// A delete of the service cancelled the apply.
    #[error("Service [{service}] was deleted while this change was being applied; the change was not applied.")]
    ServiceDeleted { service: String },
    #[error("Revision named '{revision}' already exists. Revision names must be unique; choose another --revision-suffix or spec.template.metadata.name.")]
    RevisionExists { revision: String },
    /// The service vanished between the apply's commit and its status.
    #[error(transparent)]
    Lookup(#[from] LookupError),
}

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("Service [{0}] could not be found.")]
    NoService(String),
    #[error("Revision [{0}] could not be found.")]
    NoRevision(String),
    #[error("{0}")]
    Refused(String),
}

/// Settings of the platform as a whole.
#[derive(Clone, Debug)]
pub struct PlatformConfig {
    /// The port the front end listens on, for the URLs in status.
    pub port: u16,
    pub secrets: Secrets,
    /// The service plain `http://localhost:PORT` reaches when several exist.
    pub default_service: Option<String>,
    /// The metadata servers (one per service account), if they run.
    pub metadata: Option<metadata::Servers>,
    /// How containers reach the service URLs.
    pub reach: Reach,
}

/// How containers reach the emulator's service URLs (`http://SERVICE.localhost:PORT`).
#[derive(Clone, Debug, Default)]
pub struct Reach {
    /// The emulator's name server, which resolves every `*.localhost` name to the front end.
    pub dns: Option<std::net::IpAddr>,
    /// The front end's address as containers reach it (an IP, or the engine's
    /// `host-gateway`); `None` when they cannot.
    pub front_end: Option<String>,
}

#[derive(Clone)]
pub struct Platform {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: InstanceContext,
    config: PlatformConfig,
    /// Serializes applies, which may take as long as a startup probe.
    apply_lock: tokio::sync::Mutex<()>,
    /// The control plane's records; held only briefly, never across an await.
    state: Mutex<BTreeMap<String, ServiceState>>,
    /// Routes requests by the table `publish_routes` gives it.
    router: Router,
    /// Revisions being drained and stopped in the background.
    retiring: TaskTracker,
    /// Applies in progress, each in a task of its own (see [`Platform::apply`]).
    applies: TaskTracker,
    /// Per service, the token its delete cancels (children of the shutdown token).
    service_tokens: Mutex<HashMap<String, CancellationToken>>,
}

struct ServiceState {
    /// The Service as applied (metadata, spec), without status.
    doc: knative::Service,
    revisions: Vec<RevisionState>,
    /// The traffic as applied, in normal form.
    traffic: Vec<TrafficTarget>,
    latest_created: Option<String>,
    latest_ready: Option<String>,
    /// Why the latest created revision is not ready, if it failed.
    failure: Option<RevisionFailure>,
}

struct RevisionState {
    name: String,
    generation: u32,
    template: RevisionTemplate,
    image_digest: String,
    created: String,
    pool: Pool,
    /// Some(true) ready, Some(false) failed to become ready, None not yet known.
    ready: Option<bool>,
    failure: Option<RevisionFailure>,
}

/// The outcome of an apply that succeeded.
#[derive(Debug)]
pub struct Applied {
    pub service: knative::Service,
    /// The revision this apply created, if any.
    pub created_revision: Option<String>,
    /// Settings accepted without local effect.
    pub notes: Vec<String>,
}

impl Platform {
    pub fn new(ctx: InstanceContext, config: PlatformConfig) -> Self {
        Platform {
            inner: Arc::new(Inner {
                router: Router::new(config.port),
                ctx,
                config,
                apply_lock: tokio::sync::Mutex::new(()),
                state: Mutex::new(BTreeMap::new()),
                retiring: TaskTracker::new(),
                applies: TaskTracker::new(),
                service_tokens: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, BTreeMap<String, ServiceState>> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn port(&self) -> u16 {
        self.inner.config.port
    }

    /// The service URL: `http://SERVICE.localhost:PORT` (`*.localhost` is loopback).
    pub fn service_url(&self, service: &str) -> String {
        router::service_url(service, self.port())
    }

    pub fn tag_url(&self, tag: &str, service: &str) -> String {
        router::tag_url(tag, service, self.port())
    }

    /// Creates or replaces a service, as `gcloud run services replace` (and deploy, which sends
    /// a whole Service too). The whole document (traffic included) is checked against the
    /// records before anything is created. A changed template makes a new revision, which must
    /// pass its startup probe before any traffic can reach it; the traffic asked for is applied
    /// only when every revision it names is ready. On any error records and routes stay as
    /// they were (but for a revision that failed its startup probe, recorded as failed, as
    /// Cloud Run records it).
    ///
    /// The apply runs in a task of its own, so it completes (or is cancelled by a delete or
    /// the shutdown, and cleaned up) even when its caller goes away, such as an HTTP client
    /// that gave up.
    pub async fn apply(&self, doc: knative::Service) -> Result<Applied, ApplyError> {
        let platform = self.clone();
        let task = self.inner.ctx.tasks.spawn(
            self.inner
                .applies
                .track_future(async move { platform.apply_now(doc).await }),
        );
        match task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(Conflict::Abandoned.into()),
        }
    }

    async fn apply_now(&self, doc: knative::Service) -> Result<Applied, ApplyError> {
        let name = knative::validate_names(&doc)?.to_string();
        cloudrun::validate_access_annotations(&doc.metadata.annotations)?;
        let mut notes: Vec<String> = knative::unmodelled_fields(&doc)
            .into_iter()
            .map(|path| format!("{path}: accepted; it is not emulated"))
            .collect();
        let config = template::resolve(&doc.spec.template, &self.inner.config.secrets, &mut notes)?;
        let wanted = knative::traffic_from_doc(&doc.spec.traffic)?;
        if let Some(targets) = &wanted {
            traffic::validate_spec(targets)?;
        }
        let wanted = wanted.map(|t| traffic::normalize(&t));

        // A delete of this service cancels this token: the apply gives up, whether it waits
        // for its turn or starts an instance.
        let deleted = self.service_token(&name);
        let _serialized = tokio::select! {
            guard = self.inner.apply_lock.lock() => guard,
            _ = deleted.cancelled() => return Err(self.interrupted(&name)),
        };
        if deleted.is_cancelled() {
            return Err(self.interrupted(&name));
        }

        // The plan, checked against the records before anything is created.
        let new_revision = {
            let state = self.state();
            let needs_revision = state
                .get(&name)
                .is_none_or(|service| service.doc.spec.template != doc.spec.template);
            match needs_revision {
                true => Some(new_revision_name(&state, &name, &doc.spec.template)?),
                false => None,
            }
        };
        // A service whose first revision failed has nothing to route to; it is still recorded,
        // as Cloud Run records it, so describe shows why.
        let traffic = match wanted {
            Some(targets) => targets,
            None => self
                .state()
                .get(&name)
                .map(|s| s.traffic.clone())
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| {
                    vec![TrafficTarget {
                        key: TargetKey::Latest,
                        percent: 100,
                        tag: None,
                    }]
                }),
        };
        self.check_traffic(
            &name,
            &traffic,
            new_revision.as_ref().map(|(_, n)| n.as_str()),
        )?;

        let before = Before::of(self.state().get(&name));
        let mut created_revision = None;
        if let Some((generation, revision)) = new_revision {
            let created = self
                .create_revision(
                    &name,
                    generation,
                    revision.clone(),
                    &doc.spec.template,
                    config,
                    &deleted,
                )
                .await;
            match created {
                Ok(()) => created_revision = Some(revision),
                // Cloud Run records a revision that failed its startup probe.
                Err(e @ ApplyError::NotReady(_)) => return Err(e),
                Err(e) => {
                    let taken_back = before.restore(&mut self.state(), &name, Some(&revision));
                    if let Some(pool) = taken_back {
                        self.retire(pool);
                    }
                    return Err(e);
                }
            }
        }
        let ready = self
            .ensure_traffic_ready(&name, &traffic, created_revision.as_deref())
            .await;

        let mut state = self.state();
        // Checked under the records' lock: a delete cancels before it takes the records, so it
        // finds either nothing of this apply committed or all of it.
        let ready = ready.and_then(|()| match deleted.is_cancelled() {
            true => Err(self.interrupted(&name)),
            false => Ok(()),
        });
        if let Err(error) = ready {
            let taken_back = before.restore(&mut state, &name, created_revision.as_deref());
            drop(state);
            if let Some(pool) = taken_back {
                self.retire(pool);
            }
            return Err(error);
        }
        let service = state
            .get_mut(&name)
            .expect("the service was recorded by create_revision or exists");
        if let Some(revision) = &created_revision {
            service.latest_ready = Some(revision.clone());
        }
        let mut stored = doc.clone();
        stored.status = None;
        // Like Kubernetes, the generation counts changes of the spec only.
        let changed = service.doc.spec != stored.spec || service.doc.metadata.generation.is_none();
        let generation = service.doc.metadata.generation.unwrap_or(0) + i64::from(changed);
        stored.metadata.generation = Some(generation);
        stored.metadata.creation_timestamp = service.doc.metadata.creation_timestamp.clone();
        stored.metadata.namespace = None;
        service.doc = stored;
        service.traffic = traffic;
        let retired = unrouted_revisions(service);
        self.publish_routes(&state);
        drop(state);
        for pool in retired {
            self.retire(pool);
        }
        let service = self
            .describe_service(&name)
            .map_err(|e| ApplyError::from(Conflict::from(e)))?;
        Ok(Applied {
            service,
            created_revision,
            notes,
        })
    }

    /// Why an apply gave up: the service was deleted, or the emulator is shutting down.
    fn interrupted(&self, service: &str) -> ApplyError {
        let conflict = match self.inner.ctx.shutdown.is_cancelled() {
            true => Conflict::ShuttingDown,
            false => Conflict::ServiceDeleted {
                service: service.to_string(),
            },
        };
        conflict.into()
    }

    /// The token a delete of `service` cancels; a child of the emulator's shutdown.
    fn service_token(&self, service: &str) -> CancellationToken {
        let mut tokens = self
            .inner
            .service_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        tokens
            .entry(service.to_string())
            .or_insert_with(|| self.inner.ctx.shutdown.child_token())
            .clone()
    }

    /// Checks that every revision the traffic names exists and has not failed (or is the one
    /// this apply creates), and that LATEST has a revision to resolve to.
    fn check_traffic(
        &self,
        service: &str,
        targets: &[TrafficTarget],
        creating: Option<&str>,
    ) -> Result<(), ApplyError> {
        let state = self.state();
        let record = state.get(service);
        for (i, target) in targets.iter().enumerate() {
            let name = match &target.key {
                TargetKey::Latest if creating.is_some() => continue,
                TargetKey::Latest => match record.and_then(|r| r.latest_ready.as_ref()) {
                    Some(name) => name,
                    None => {
                        return Err(match record.and_then(|r| r.failure.clone()) {
                            Some(failure) => NotReady::Failed(failure),
                            None => NotReady::NoLatestRevision,
                        }
                        .into())
                    }
                },
                TargetKey::Revision(name) if Some(name.as_str()) == creating => continue,
                TargetKey::Revision(name) => name,
            };
            traffic_revision(record, i, name)?;
        }
        Ok(())
    }

    /// The env that points a revision's containers at the metadata server of its service
    /// account (`serviceAccountName`, else the emulator's default one).
    async fn metadata_env(&self, template: &RevisionTemplate) -> Vec<(String, String)> {
        let Some(servers) = &self.inner.config.metadata else {
            return Vec::new();
        };
        let account = template.spec.service_account_name.as_deref();
        match servers.endpoint(account).await {
            Ok(endpoint) => metadata::container_env(&endpoint),
            Err(e) => {
                self.inner.ctx.events.publish(Event::warning(format!(
                    "no metadata server for service account {}: {e}",
                    account.unwrap_or("default")
                )));
                Vec::new()
            }
        }
    }

    /// How a new revision's containers find the service URLs and the host: the emulator's
    /// name server, or, without one, `/etc/hosts` lines for the services and tags known now
    /// (`service` included).
    fn container_network(&self, service: &str) -> ContainerNetwork {
        let reach = &self.inner.config.reach;
        // The host, by the name Docker Desktop gives it everywhere (for Google's emulators
        // running there: PUBSUB_EMULATOR_HOST=host.docker.internal:8085).
        let mut hosts = vec!["host.docker.internal:host-gateway".to_string()];
        let mut dns = Vec::new();
        match (reach.dns, &reach.front_end) {
            (Some(server), Some(_)) => dns.push(server),
            (None, Some(address)) => {
                let mut names = BTreeSet::from([router::service_host(service)]);
                for (name, record) in self.state().iter() {
                    names.insert(router::service_host(name));
                    for tag in record.traffic.iter().filter_map(|t| t.tag.as_deref()) {
                        names.insert(router::tag_host(tag, name));
                    }
                }
                hosts.extend(names.iter().map(|name| format!("{name}:{address}")));
            }
            (_, None) => {}
        }
        ContainerNetwork { dns, hosts }
    }

    /// Makes a revision from a template, starts its first instance and waits for its startup
    /// probe. The revision is recorded (as latest created) even when it fails, with the reason;
    /// it becomes latest ready only when the apply commits.
    async fn create_revision(
        &self,
        service: &str,
        generation: u32,
        name: String,
        template: &RevisionTemplate,
        config: RevisionConfig,
        deleted: &CancellationToken,
    ) -> Result<(), ApplyError> {
        let runtime = &self.inner.ctx.runtime;
        let image = resolve_image(runtime, &self.inner.ctx.events, &config.container.image).await?;
        let spec = RevisionSpec {
            service: service.to_string(),
            revision: name.clone(),
            image_id: image.id.clone(),
            config,
            emulator_env: self.metadata_env(template).await,
            network: self.container_network(service),
        };
        // The pool's starts give up when the service is deleted or the emulator stops.
        let ctx = InstanceContext {
            shutdown: deleted.child_token(),
            ..self.inner.ctx.clone()
        };
        let pool = Pool::new(spec.clone(), ctx);
        let mut frozen = template.clone();
        frozen.metadata.name = Some(name.clone());
        {
            let mut state = self.state();
            let record = state
                .entry(service.to_string())
                .or_insert_with(|| ServiceState {
                    doc: knative::Service {
                        api_version: knative::API_VERSION.to_string(),
                        kind: "Service".to_string(),
                        metadata: ObjectMeta {
                            name: Some(service.to_string()),
                            creation_timestamp: Some(timestamp(SystemTime::now())),
                            ..ObjectMeta::default()
                        },
                        spec: knative::ServiceSpec::default(),
                        status: None,
                    },
                    revisions: Vec::new(),
                    traffic: Vec::new(),
                    latest_created: None,
                    latest_ready: None,
                    failure: None,
                });
            record.revisions.push(RevisionState {
                name: name.clone(),
                generation,
                template: frozen,
                image_digest: image.digest,
                created: timestamp(SystemTime::now()),
                pool: pool.clone(),
                ready: None,
                failure: None,
            });
            record.latest_created = Some(name.clone());
            record.failure = None;
        }
        self.inner.ctx.events.publish(Event::CreatingRevision {
            service: service.to_string(),
            revision: name.clone(),
            image: spec.config.container.image.clone(),
        });
        let result = pool.ensure_ready().await;
        let mut state = self.state();
        let record = state.get_mut(service).expect("recorded above");
        let revision = record
            .revisions
            .iter_mut()
            .find(|r| r.name == name)
            .expect("recorded above");
        match result {
            Ok(()) => {
                revision.ready = Some(true);
                Ok(())
            }
            // Cancelled (a delete, the shutdown): the caller takes the revision back.
            Err(failure) if matches!(failure.error, StartError::Cancelled) => {
                drop(state);
                Err(self.interrupted(service))
            }
            Err(failure) => {
                let failure = RevisionFailure::new(failure, &spec);
                revision.ready = Some(false);
                revision.failure = Some(failure.clone());
                record.failure = Some(failure.clone());
                // A failed first revision leaves a service with nothing to serve; it stays
                // recorded so describe can say why, but it routes nowhere.
                Err(NotReady::Failed(failure).into())
            }
        }
    }

    /// Starts (if stopped) every revision the traffic would send requests to, so a traffic
    /// change never routes to a revision that cannot serve. LATEST is `creating` when this
    /// apply made a revision.
    async fn ensure_traffic_ready(
        &self,
        service: &str,
        targets: &[TrafficTarget],
        creating: Option<&str>,
    ) -> Result<(), ApplyError> {
        let pools = {
            let state = self.state();
            let record = state
                .get(service)
                .ok_or_else(|| self.interrupted(service))?;
            let mut pools = Vec::new();
            for (i, target) in targets.iter().enumerate() {
                let name = match (&target.key, creating) {
                    (TargetKey::Latest, Some(created)) => created.to_string(),
                    (TargetKey::Latest, None) => record
                        .latest_ready
                        .clone()
                        .ok_or(NotReady::NoLatestRevision)?,
                    (TargetKey::Revision(name), _) => name.clone(),
                };
                pools.push(traffic_revision(Some(record), i, &name)?.pool.clone());
            }
            pools
        };
        for pool in pools {
            match pool.ensure_ready().await {
                Ok(()) => {}
                Err(failure) if matches!(failure.error, StartError::Cancelled) => {
                    return Err(self.interrupted(service))
                }
                Err(failure) => {
                    return Err(NotReady::Failed(RevisionFailure::new(failure, pool.spec())).into())
                }
            }
        }
        Ok(())
    }

    /// Drains a revision that lost its traffic, then stops its instances, in the background.
    fn retire(&self, pool: Pool) {
        let retire = async move {
            pool.retire("revision no longer receives traffic").await;
        };
        self.inner
            .ctx
            .tasks
            .spawn(self.inner.retiring.track_future(retire));
    }

    /// Rebuilds the routing table from the records and publishes it to the router.
    fn publish_routes(&self, state: &BTreeMap<String, ServiceState>) {
        let mut table = RoutingTable::new(self.inner.config.default_service.clone());
        for (name, service) in state {
            let route_of = |revision: &str| {
                service
                    .revisions
                    .iter()
                    .find(|r| r.name == revision)
                    .map(|r| {
                        let config = &r.pool.spec().config;
                        RevisionRoute {
                            revision: r.name.clone(),
                            pool: r.pool.clone(),
                            http2: config.container.http2,
                            timeout: config.request_timeout,
                        }
                    })
            };
            let mut routes = ServiceRoutes::default();
            for target in &service.traffic {
                let latest = service.latest_ready.as_deref();
                let Some(revision) = target.key.resolve(latest).and_then(route_of) else {
                    continue;
                };
                let follows_latest = target.key == TargetKey::Latest;
                routes.add(revision, follows_latest, target.percent, target.tag.clone());
            }
            routes.invoker = self.invoker(name, service);
            table.insert(name.clone(), routes);
        }
        self.inner.router.publish(table);
    }

    /// A private service's invoker check (audiences: its URL, its tag URLs, its custom
    /// audiences); `None` for a public one.
    fn invoker(&self, name: &str, service: &ServiceState) -> Option<Invoker> {
        let annotations = &service.doc.metadata.annotations;
        if cloudrun::is_public(annotations) {
            return None;
        }
        let mut audiences = vec![
            self.service_url(name),
            metadata::identity::GCLOUD_AUDIENCE.to_string(),
        ];
        audiences.extend(
            service
                .traffic
                .iter()
                .filter_map(|t| t.tag.as_deref())
                .map(|tag| self.tag_url(tag, name)),
        );
        audiences.extend(cloudrun::custom_audiences(annotations));
        let key = self.inner.config.metadata.as_ref().map(|m| m.key().clone());
        Some(Invoker::new(key, audiences))
    }

    pub fn list_services(&self) -> Vec<knative::Service> {
        let names: Vec<String> = self.state().keys().cloned().collect();
        names
            .iter()
            .filter_map(|n| self.describe_service(n).ok())
            .collect()
    }

    /// The Service as Cloud Run's API returns it: the spec as applied plus status.
    pub fn describe_service(&self, name: &str) -> Result<knative::Service, LookupError> {
        let state = self.state();
        let service = state
            .get(name)
            .ok_or_else(|| LookupError::NoService(name.to_string()))?;
        let mut doc = service.doc.clone();
        if doc.spec.template.spec.containers.is_empty() {
            // A service whose first revision failed: show the template that failed.
            if let Some(latest) = service.revisions.last() {
                doc.spec.template = latest.template.clone();
                doc.spec.template.metadata.name = None;
            }
        }
        // Status says where requests go: the published routing table, not the spec.
        let table = self.routes();
        let routed = table.routed(name);
        let latest_routed = routed.iter().find(|t| t.latest).map(|t| t.revision.clone());
        let resolved: Vec<TrafficTarget> = routed
            .iter()
            .map(|t| TrafficTarget {
                key: match t.latest {
                    true => TargetKey::Latest,
                    false => TargetKey::Revision(t.revision.clone()),
                },
                percent: t.percent,
                tag: t.tag.clone(),
            })
            .collect();
        let status_traffic = traffic::merged(&resolved)
            .into_iter()
            .map(|t| {
                let (revision_name, latest) = match &t.key {
                    TargetKey::Latest => (latest_routed.clone(), Some(true)),
                    TargetKey::Revision(r) => (Some(r.clone()), None),
                };
                knative::TrafficTarget {
                    url: t.tag.as_ref().map(|tag| self.tag_url(tag, name)),
                    revision_name,
                    latest_revision: latest,
                    percent: Some(t.percent),
                    tag: t.tag,
                }
            })
            .collect();
        doc.spec.traffic = knative::traffic_to_doc(&service.traffic);
        // Every target asked for is routed, and the routed percents cover all requests.
        let routes_ok = routed.len() == service.traffic.len()
            && routed.iter().map(|t| t.percent).sum::<u32>() == 100;
        let config_ok = match &service.failure {
            Some(_) => Some(false),
            None if service.latest_ready.is_some() => Some(true),
            None => None,
        };
        let failure_reason = service.failure.as_ref().map(|_| "RevisionFailed");
        let conditions = vec![
            Condition::new(
                "Ready",
                config_ok.map(|ok| ok && routes_ok),
                failure_reason,
                service.failure.as_ref().map(ToString::to_string),
            ),
            Condition::new(
                "ConfigurationsReady",
                config_ok,
                failure_reason,
                service.failure.as_ref().map(ToString::to_string),
            ),
            Condition::new(
                "RoutesReady",
                Some(routes_ok),
                (!routes_ok).then_some("RevisionMissing"),
                None,
            ),
        ];
        let url = self.service_url(name);
        doc.status = Some(knative::ServiceStatus {
            observed_generation: doc.metadata.generation,
            conditions,
            latest_created_revision_name: service.latest_created.clone(),
            latest_ready_revision_name: service.latest_ready.clone(),
            traffic: status_traffic,
            url: Some(url.clone()),
            address: Some(knative::Address { url }),
        });
        Ok(doc)
    }

    pub fn list_revisions(&self, service: Option<&str>) -> Vec<knative::Revision> {
        let state = self.state();
        let table = self.routes();
        let table = &*table;
        state
            .iter()
            .filter(|(name, _)| service.is_none_or(|s| s == name.as_str()))
            .flat_map(|(name, s)| {
                s.revisions
                    .iter()
                    .rev()
                    .map(move |r| revision_doc(name, table, r))
            })
            .collect()
    }

    pub fn describe_revision(&self, revision: &str) -> Result<knative::Revision, LookupError> {
        let state = self.state();
        let table = self.routes();
        state
            .iter()
            .find_map(|(name, s)| {
                s.revisions
                    .iter()
                    .find(|r| r.name == revision)
                    .map(|r| revision_doc(name, &table, r))
            })
            .ok_or_else(|| LookupError::NoRevision(revision.to_string()))
    }

    /// The routing table requests are routed by now.
    fn routes(&self) -> Arc<RoutingTable> {
        self.inner.router.table()
    }

    /// Deletes a service: its revisions are drained and stopped. An apply of it in progress
    /// (or waiting for its turn) is cancelled first; it answers that the service was deleted,
    /// and what it started is stopped.
    pub async fn delete_service(&self, name: &str) -> Result<(), LookupError> {
        if !self.state().contains_key(name) {
            return Err(LookupError::NoService(name.to_string()));
        }
        if let Some(token) = self
            .inner
            .service_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
        {
            token.cancel();
        }
        let _serialized = self.inner.apply_lock.lock().await;
        let removed = {
            let mut state = self.state();
            let removed = state
                .remove(name)
                .ok_or_else(|| LookupError::NoService(name.to_string()))?;
            self.publish_routes(&state);
            removed
        };
        for revision in removed.revisions {
            self.retire(revision.pool);
        }
        Ok(())
    }

    /// Deletes a revision that no traffic (and no tag) refers to, neither in the routing
    /// table requests go by nor in the service's spec.
    pub async fn delete_revision(&self, revision: &str) -> Result<(), LookupError> {
        let _serialized = self.inner.apply_lock.lock().await;
        let mut state = self.state();
        let table = self.routes();
        let (service_name, service) = state
            .iter_mut()
            .find(|(_, s)| s.revisions.iter().any(|r| r.name == revision))
            .ok_or_else(|| LookupError::NoRevision(revision.to_string()))?;
        let routed = table
            .targets_of(service_name, revision)
            .next()
            .map(|t| (t.tag.clone(), t.percent));
        let latest = service.latest_ready.as_deref();
        let asked = service
            .traffic
            .iter()
            .find(|t| t.key.resolve(latest) == Some(revision))
            .map(|t| (t.tag.clone(), t.percent));
        if let Some((tag, percent)) = routed.or(asked) {
            let how = match (tag, percent) {
                (Some(tag), _) => format!("it is tagged '{tag}'"),
                (None, p) => format!("it receives {p}% of the traffic"),
            };
            return Err(LookupError::Refused(format!(
                "Revision [{revision}] cannot be deleted because {how}. Move its traffic and tags first (emulate services update-traffic)."
            )));
        }
        let index = service
            .revisions
            .iter()
            .position(|r| r.name == revision)
            .expect("found above");
        let removed = service.revisions.remove(index);
        if service.latest_created.as_deref() == Some(revision) {
            service.latest_created = service.revisions.last().map(|r| r.name.clone());
        }
        if service.latest_ready.as_deref() == Some(revision) {
            // LATEST must keep naming a revision that exists.
            service.latest_ready = service
                .revisions
                .iter()
                .rev()
                .find(|r| r.ready == Some(true))
                .map(|r| r.name.clone());
        }
        drop(state);
        self.retire(removed.pool);
        Ok(())
    }

    /// Stops everything: applies in progress are cancelled (their instances removed), then
    /// every instance of every revision is stopped, gracefully (SIGTERM, 10 s, SIGKILL) or at
    /// once, starting ones included; returns when nothing the platform started runs.
    pub async fn shutdown(&self, immediate: bool) {
        for token in self
            .inner
            .service_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            token.cancel();
        }
        self.inner.applies.close();
        self.inner.applies.wait().await;
        let pools: Vec<Pool> = self
            .state()
            .values()
            .flat_map(|s| s.revisions.iter().map(|r| r.pool.clone()))
            .collect();
        self.inner.router.publish(RoutingTable::default());
        let stops = pools.iter().map(|pool| async move {
            if immediate {
                pool.kill_all().await;
            } else {
                pool.stop_all(cloudrun::SHUTDOWN_GRACE, "the emulator is shutting down")
                    .await;
            }
        });
        futures_util::future::join_all(stops).await;
        self.inner.retiring.close();
        self.inner.retiring.wait().await;
    }

    /// The pools of a service's revisions that receive traffic (by percent or tag) in the
    /// published routing table.
    pub fn serving_pools(&self, service: &str) -> Vec<Pool> {
        let state = self.state();
        let table = self.routes();
        let Some(record) = state.get(service) else {
            return Vec::new();
        };
        record
            .revisions
            .iter()
            .filter(|r| table.targets_of(service, &r.name).next().is_some())
            .map(|r| r.pool.clone())
            .collect()
    }

    /// Every pool, for totals at the end of a run.
    pub fn all_pools(&self) -> Vec<Pool> {
        self.state()
            .values()
            .flat_map(|s| s.revisions.iter().map(|r| r.pool.clone()))
            .collect()
    }

    /// The front end's view: a cheap handle that routes requests.
    pub fn router(&self) -> Router {
        self.inner.router.clone()
    }
}

/// What an apply may have to put back: the service's record as it was before the apply
/// created a revision.
struct Before {
    existed: bool,
    latest_created: Option<String>,
    failure: Option<RevisionFailure>,
}

impl Before {
    fn of(service: Option<&ServiceState>) -> Before {
        Before {
            existed: service.is_some(),
            latest_created: service.and_then(|s| s.latest_created.clone()),
            failure: service.and_then(|s| s.failure.clone()),
        }
    }

    /// Takes back the revision an apply created (if it was recorded), and the service if the
    /// apply created it; returns the revision's pool, to be stopped.
    fn restore(
        &self,
        state: &mut BTreeMap<String, ServiceState>,
        service: &str,
        created: Option<&str>,
    ) -> Option<Pool> {
        let record = state.get_mut(service)?;
        let index = record
            .revisions
            .iter()
            .position(|r| Some(r.name.as_str()) == created)?;
        let removed = record.revisions.remove(index);
        record.latest_created = self.latest_created.clone();
        record.failure = self.failure.clone();
        if !self.existed && record.revisions.is_empty() {
            state.remove(service);
        }
        Some(removed.pool)
    }
}

/// The generation and name of the revision an apply would create, checked before anything
/// is created: a name given in the template must start with the service's name, fit in 63
/// characters and be unused.
fn new_revision_name(
    state: &BTreeMap<String, ServiceState>,
    service: &str,
    template: &RevisionTemplate,
) -> Result<(u32, String), ApplyError> {
    let generation = state
        .get(service)
        .and_then(|s| s.revisions.iter().map(|r| r.generation).max())
        .unwrap_or(0)
        + 1;
    let name = match &template.metadata.name {
        Some(name) if !name.is_empty() => {
            if !name.starts_with(&format!("{service}-")) || name.len() > 63 {
                return Err(FieldError::new(
                    "spec.template.metadata.name",
                    format!("revision name '{name}' must start with '{service}-' and be at most 63 characters"),
                )
                .into());
            }
            name.clone()
        }
        _ => cloudrun::revision_name(service, generation, &mut rand::rng()),
    };
    if state
        .values()
        .flat_map(|s| &s.revisions)
        .any(|r| r.name == name)
    {
        return Err(Conflict::RevisionExists { revision: name }.into());
    }
    Ok((generation, name))
}

/// Revisions no traffic entry resolves to (neither a percent nor a tag): they are drained.
fn unrouted_revisions(service: &ServiceState) -> Vec<Pool> {
    let latest = service.latest_ready.as_deref();
    let routed = |name: &str| {
        service
            .traffic
            .iter()
            .any(|t| t.key.resolve(latest) == Some(name))
    };
    service
        .revisions
        .iter()
        .filter(|r| !routed(&r.name))
        .map(|r| r.pool.clone())
        .collect()
}

/// A revision's document; its traffic percent is what the published routing table sends it.
fn revision_doc(
    service_name: &str,
    table: &RoutingTable,
    revision: &RevisionState,
) -> knative::Revision {
    let mut labels = BTreeMap::from([
        (knative::LABEL_SERVICE.to_string(), service_name.to_string()),
        (
            knative::LABEL_CONFIGURATION.to_string(),
            service_name.to_string(),
        ),
        (
            "serving.knative.dev/configurationGeneration".to_string(),
            revision.generation.to_string(),
        ),
    ]);
    labels.extend(revision.template.metadata.labels.clone());
    let serving = table.percent_of(service_name, &revision.name);
    let pool = revision.pool.status();
    let ready = Condition::new(
        "Ready",
        revision.ready,
        revision
            .failure
            .as_ref()
            .map(|_| "HealthCheckContainerError"),
        revision.failure.as_ref().map(ToString::to_string),
    );
    knative::Revision {
        api_version: knative::API_VERSION.to_string(),
        kind: "Revision".to_string(),
        metadata: ObjectMeta {
            name: Some(revision.name.clone()),
            labels,
            annotations: revision.template.metadata.annotations.clone(),
            generation: Some(1),
            creation_timestamp: Some(revision.created.clone()),
            ..ObjectMeta::default()
        },
        spec: revision.template.spec.clone(),
        status: Some(knative::RevisionStatus {
            observed_generation: Some(1),
            conditions: vec![ready],
            image_digest: Some(revision.image_digest.clone()),
            instances: Some({
                let mut view = serde_json::to_value(&pool).unwrap_or_default();
                view["trafficPercent"] = serving.into();
                view
            }),
        }),
    }
}

/// The revision traffic target `i` names, which must exist in the service's record and not
/// have failed its start (Cloud Run keeps a failed revision, but sends it no traffic).
fn traffic_revision<'a>(
    record: Option<&'a ServiceState>,
    i: usize,
    name: &str,
) -> Result<&'a RevisionState, ApplyError> {
    let revision = record
        .and_then(|r| r.revisions.iter().find(|r| r.name == name))
        .ok_or_else(|| {
            FieldError::new(
                format!("spec.traffic[{i}].revisionName"),
                format!("Revision [{name}] could not be found."),
            )
        })?;
    if let (Some(false), Some(failure)) = (revision.ready, &revision.failure) {
        return Err(NotReady::Failed(failure.clone()).into());
    }
    Ok(revision)
}

/// The image a revision runs: found locally or pulled for linux/amd64, then checked.
struct ResolvedImage {
    id: String,
    /// `repo@sha256:...` when the engine knows a registry digest, else the local image id.
    digest: String,
}

async fn resolve_image(
    runtime: &runtime::Runtime,
    events: &Events,
    image: &str,
) -> Result<ResolvedImage, ApplyError> {
    let info = match runtime.inspect_image(image).await? {
        Some(info) => info,
        None => {
            events.publish(Event::PullingImage {
                image: image.to_string(),
                platform: runtime::PLATFORM.to_string(),
            });
            let mut last = String::new();
            runtime
                .pull_image(image, |line| {
                    if line != last {
                        events.publish(Event::PullProgress {
                            image: image.to_string(),
                            line: line.to_string(),
                        });
                        last = line.to_string();
                    }
                })
                .await
                .map_err(|source| ImageError::NotPullable {
                    image: image.to_string(),
                    source,
                })?;
            runtime
                .inspect_image(image)
                .await?
                .ok_or_else(|| ImageError::GoneAfterPull {
                    image: image.to_string(),
                })?
        }
    };
    if !info.is_amd64_linux() {
        // A local image is a single-platform manifest as `docker push` would upload it.
        return Err(ApplyError::Unsupported {
            image: image.to_string(),
            platform: info.platform(),
        });
    }
    let digest = info
        .repo_digests
        .first()
        .cloned()
        .unwrap_or_else(|| info.id.clone());
    Ok(ResolvedImage {
        id: info.id,
        digest,
    })
}

/// RFC 3339 UTC time, as Kubernetes writes `creationTimestamp`.
pub fn timestamp(time: SystemTime) -> String {
    crate::config::rfc3339(time, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn apply_errors_carry_their_data_and_render_cloud_runs_texts() {
        let unsupported = ApplyError::Unsupported {
            image: "arm".into(),
            platform: "linux/arm64/v8".into(),
        };
        assert_eq!(
            unsupported.to_string(),
            format!(
                "{}\n(the local image is linux/arm64/v8.)\n\n{}",
                cloudrun::unsupported_platform(
                    "arm",
                    "application/vnd.docker.distribution.manifest.v2+json"
                ),
                cloudrun::AMD64_HINT.replace("IMAGE", "arm")
            )
        );
        assert_eq!(
            ApplyError::from(Conflict::RevisionExists {
                revision: "app-v1".into()
            })
            .to_string(),
            "Revision named 'app-v1' already exists. Revision names must be unique; choose another --revision-suffix or spec.template.metadata.name."
        );
        assert_eq!(
            ApplyError::from(Conflict::ServiceDeleted {
                service: "app".into()
            })
            .to_string(),
            "Service [app] was deleted while this change was being applied; the change was not applied."
        );
        assert_eq!(
            ApplyError::from(NotReady::NoLatestRevision).to_string(),
            "The service has no ready revision for LATEST to send traffic to."
        );
        assert_eq!(
            ApplyError::from(ImageError::GoneAfterPull { image: "x".into() }).to_string(),
            "image 'x' was pulled but cannot be found"
        );
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(timestamp(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_867_200);
        assert_eq!(timestamp(t), "2026-11-28T12:00:00Z");
    }
}
