//! The documents of Cloud Run's v1 API, which is Knative Serving's `serving.knative.dev/v1`:
//! Service and Revision with metadata, spec and status. The same types read a service.yaml,
//! carry the admin API's JSON and print `describe --format yaml`, so one document describes a
//! service here, in `gcloud run services describe` and in Knative.
//!
//! Fields Cloud Run accepts but the emulator does not model are kept (flattened `extra`) so
//! they survive a round trip, and reported as notes.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::config::{serde_errors, FieldError};
use crate::control::traffic::{self, TargetKey};

pub const API_VERSION: &str = "serving.knative.dev/v1";
pub const LABEL_SERVICE: &str = "serving.knative.dev/service";
pub const LABEL_CONFIGURATION: &str = "serving.knative.dev/configuration";
pub const ANNOTATION_MIN_SCALE: &str = "autoscaling.knative.dev/minScale";
pub const ANNOTATION_MAX_SCALE: &str = "autoscaling.knative.dev/maxScale";
/// Request-based billing (`"true"`, the default) or instance-based (`"false"`).
pub const ANNOTATION_CPU_THROTTLING: &str = "run.googleapis.com/cpu-throttling";
/// More CPU during startup (`"true"`).
pub const ANNOTATION_STARTUP_CPU_BOOST: &str = "run.googleapis.com/startup-cpu-boost";
/// How long an idle instance is kept (Knative's name for keeping the last pod; here it applies
/// to every idle instance). Cloud Run's own value is up to 15 minutes and cannot be set.
pub const ANNOTATION_IDLE_TIMEOUT: &str =
    "autoscaling.knative.dev/scale-to-zero-pod-retention-period";

type Extra = BTreeMap<String, serde_json::Value>;

fn is_empty<T>(v: &[T]) -> bool {
    v.is_empty()
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    /// uid, resourceVersion, selfLink...: server-side bookkeeping of the real API, ignored.
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    #[serde(default = "api_version")]
    pub api_version: String,
    #[serde(default = "kind_service")]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ServiceStatus>,
}

fn api_version() -> String {
    API_VERSION.to_string()
}

fn kind_service() -> String {
    "Service".to_string()
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default)]
    pub template: RevisionTemplate,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub traffic: Vec<TrafficTarget>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionTemplate {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: RevisionSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_concurrency: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    #[serde(default)]
    pub containers: Vec<Container>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub ports: Vec<ContainerPort>,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    pub container_port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvVarSource>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVarSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeySelector>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    pub name: String,
    pub key: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "quantities"
    )]
    pub limits: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Quantities may be written as strings (`512Mi`, `'1'`) or bare numbers (`cpu: 1`).
fn quantities<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Quantity {
        Text(String),
        Integer(u64),
        Float(f64),
    }
    let map = BTreeMap::<String, Quantity>::deserialize(d)?;
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                Quantity::Text(s) => s,
                Quantity::Integer(n) => n.to_string(),
                Quantity::Float(f) => f.to_string(),
            };
            (k, text)
        })
        .collect())
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<ProbePort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<ProbePort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<ProbePort>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_revision: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Status only: the tag's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

impl Condition {
    pub fn new(
        kind: &str,
        ok: Option<bool>,
        reason: Option<&str>,
        message: Option<String>,
    ) -> Self {
        Condition {
            kind: kind.to_string(),
            status: match ok {
                Some(true) => "True",
                Some(false) => "False",
                None => "Unknown",
            }
            .to_string(),
            reason: reason.map(str::to_string),
            message,
            last_transition_time: None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Address {
    pub url: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_created_revision_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_ready_revision_name: Option<String>,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub traffic: Vec<TrafficTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    #[serde(default = "api_version")]
    pub api_version: String,
    #[serde(default = "kind_revision")]
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: RevisionSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RevisionStatus>,
}

fn kind_revision() -> String {
    "Revision".to_string()
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// The emulator's own view of the revision's instances (not in Cloud Run's API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct List<T> {
    #[serde(rename = "apiVersion", default = "api_version")]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    pub items: Vec<T>,
}

/// Parses a Service from YAML (JSON is YAML too), naming the field of any error. The
/// document's size and nesting are checked first, then every field name (Cloud Run's API
/// rejects unknown fields), then the values.
pub fn parse_service_yaml(text: &str) -> Result<Service, FieldError> {
    crate::config::check_document(text).map_err(|m| FieldError::new("(document)", m))?;
    let value: serde_json::Value = serde_yaml_ng::from_str(text)
        .map_err(|e| serde_errors::field_error(".", &e.to_string()))?;
    service_from_value(value)
}

/// Parses a Service from the admin API's JSON body, naming the field of any error.
pub fn parse_service_json(body: &[u8]) -> Result<Service, FieldError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| serde_errors::field_error(".", &e.to_string()))?;
    service_from_value(value)
}

fn service_from_value(value: serde_json::Value) -> Result<Service, FieldError> {
    let Some(root) = value.as_object() else {
        return Err(FieldError::new(
            "(document)",
            "expected a Service: a mapping with apiVersion, kind, metadata and spec",
        ));
    };
    match root.get("kind") {
        None => return Err(FieldError::new("kind", "required: set kind: Service")),
        Some(serde_json::Value::String(kind)) if kind == "Service" => {}
        Some(other) => {
            return Err(FieldError::new(
                "kind",
                format!("expected Service, found {}", short(other)),
            ))
        }
    }
    match root.get("apiVersion") {
        None => {
            return Err(FieldError::new(
                "apiVersion",
                format!("required: set apiVersion: {API_VERSION}"),
            ))
        }
        Some(serde_json::Value::String(v)) if v == API_VERSION => {}
        Some(other) => {
            return Err(FieldError::new(
                "apiVersion",
                format!("expected {API_VERSION}, found {}", short(other)),
            ))
        }
    }
    check_fields(&value, Shape::Service, "")?;
    serde_path_to_error::deserialize(value)
        .map_err(|e| serde_errors::field_error(&e.path().to_string(), &e.inner().to_string()))
}

/// A value quoted in a message, cut short.
fn short(value: &serde_json::Value) -> String {
    crate::cloudrun::printable(&value.to_string())
}

/// The objects of a Service document whose field names are checked.
#[derive(Clone, Copy, Debug)]
enum Shape {
    Service,
    Meta,
    ServiceSpec,
    Template,
    RevisionSpec,
    Container,
    Port,
    Env,
    EnvSource,
    SecretRef,
    Resources,
    Probe,
    ProbePort,
    Traffic,
    /// Anything: maps of labels, status written by the server, fields not modelled.
    Any,
}

/// A field: its name, the shape of its value, and whether it is a list of that shape.
type Field = (&'static str, Shape, bool);

/// Every field Cloud Run's v1 API knows for a shape; None for free-form values. Fields
/// kept but not emulated (volumes, readinessProbe...) are listed so they are accepted.
fn known_fields(shape: Shape) -> Option<&'static [Field]> {
    use Shape::*;
    Some(match shape {
        Service => &[
            ("apiVersion", Any, false),
            ("kind", Any, false),
            ("metadata", Meta, false),
            ("spec", ServiceSpec, false),
            ("status", Any, false),
        ],
        Meta => &[
            ("name", Any, false),
            ("namespace", Any, false),
            ("labels", Any, false),
            ("annotations", Any, false),
            ("generation", Any, false),
            ("creationTimestamp", Any, false),
            ("uid", Any, false),
            ("resourceVersion", Any, false),
            ("selfLink", Any, false),
            ("generateName", Any, false),
            ("deletionTimestamp", Any, false),
            ("deletionGracePeriodSeconds", Any, false),
            ("ownerReferences", Any, false),
            ("finalizers", Any, false),
            ("clusterName", Any, false),
            ("managedFields", Any, false),
        ],
        ServiceSpec => &[("template", Template, false), ("traffic", Traffic, true)],
        Template => &[("metadata", Meta, false), ("spec", RevisionSpec, false)],
        RevisionSpec => &[
            ("containerConcurrency", Any, false),
            ("timeoutSeconds", Any, false),
            ("serviceAccountName", Any, false),
            ("containers", Container, true),
            ("volumes", Any, false),
            ("imagePullSecrets", Any, false),
            ("enableServiceLinks", Any, false),
            ("runtimeClassName", Any, false),
            ("nodeSelector", Any, false),
        ],
        Container => &[
            ("name", Any, false),
            ("image", Any, false),
            ("command", Any, false),
            ("args", Any, false),
            ("ports", Port, true),
            ("env", Env, true),
            ("envFrom", Any, false),
            ("resources", Resources, false),
            ("startupProbe", Probe, false),
            ("livenessProbe", Probe, false),
            ("readinessProbe", Any, false),
            ("workingDir", Any, false),
            ("volumeMounts", Any, false),
            ("imagePullPolicy", Any, false),
            ("securityContext", Any, false),
            ("terminationMessagePath", Any, false),
            ("terminationMessagePolicy", Any, false),
        ],
        Port => &[
            ("containerPort", Any, false),
            ("name", Any, false),
            ("protocol", Any, false),
        ],
        Env => &[
            ("name", Any, false),
            ("value", Any, false),
            ("valueFrom", EnvSource, false),
        ],
        EnvSource => &[
            ("secretKeyRef", SecretRef, false),
            ("configMapKeyRef", Any, false),
        ],
        SecretRef => &[
            ("name", Any, false),
            ("key", Any, false),
            ("optional", Any, false),
        ],
        Resources => &[("limits", Any, false), ("requests", Any, false)],
        Probe => &[
            ("initialDelaySeconds", Any, false),
            ("periodSeconds", Any, false),
            ("timeoutSeconds", Any, false),
            ("failureThreshold", Any, false),
            ("successThreshold", Any, false),
            ("tcpSocket", ProbePort, false),
            ("httpGet", ProbePort, false),
            ("grpc", ProbePort, false),
            ("exec", Any, false),
        ],
        ProbePort => &[
            ("port", Any, false),
            ("path", Any, false),
            ("service", Any, false),
            ("host", Any, false),
            ("scheme", Any, false),
            ("httpHeaders", Any, false),
        ],
        Traffic => &[
            ("revisionName", Any, false),
            ("latestRevision", Any, false),
            ("percent", Any, false),
            ("tag", Any, false),
            ("url", Any, false),
            ("configurationName", Any, false),
        ],
        Any => return None,
    })
}

/// Refuses a field name Cloud Run's API does not know, as the API does, with the closest
/// known name as a hint. Values of the wrong type are left to the typed parse.
fn check_fields(value: &serde_json::Value, shape: Shape, path: &str) -> Result<(), FieldError> {
    let (Some(fields), Some(object)) = (known_fields(shape), value.as_object()) else {
        return Ok(());
    };
    for (key, child) in object {
        // An empty key still needs a visible name in the path.
        let shown = if key.is_empty() { "\"\"" } else { key.as_str() };
        let at = if path.is_empty() {
            shown.to_string()
        } else {
            format!("{path}.{shown}")
        };
        let Some((_, child_shape, list)) = fields.iter().find(|(name, ..)| name == key) else {
            let hint = serde_errors::closest(key, fields.iter().map(|(name, ..)| *name))
                .map(|name| format!("; did you mean {name}?"))
                .unwrap_or_default();
            return Err(FieldError::new(
                crate::cloudrun::printable(&at),
                format!("unknown field: Cloud Run's API does not know it{hint}"),
            ));
        };
        match (list, child.as_array()) {
            (true, Some(items)) => {
                for (i, item) in items.iter().enumerate() {
                    check_fields(item, *child_shape, &format!("{at}[{i}]"))?;
                }
            }
            _ => check_fields(child, *child_shape, &at)?,
        }
    }
    Ok(())
}

/// Checks the names a document gives: the service, the revision, and the revisions and tags
/// its traffic names, with Cloud Run's texts. Returns the service's name.
pub fn validate_names(service: &Service) -> Result<&str, FieldError> {
    use crate::cloudrun;
    let name = service
        .metadata
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| FieldError::new("metadata.name", "a service name is required"))?;
    cloudrun::validate_service_name(name).map_err(|m| FieldError::new("metadata.name", m))?;
    if let Some(revision) = service
        .spec
        .template
        .metadata
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
    {
        cloudrun::validate_revision_name(name, revision)
            .map_err(|m| FieldError::new("spec.template.metadata.name", m))?;
    }
    for (i, target) in service.spec.traffic.iter().enumerate() {
        if let Some(revision) = target.revision_name.as_deref().filter(|n| !n.is_empty()) {
            cloudrun::validate_revision_name(name, revision)
                .map_err(|m| FieldError::new(format!("spec.traffic[{i}].revisionName"), m))?;
        }
        if let Some(tag) = &target.tag {
            let at = format!("spec.traffic[{i}].tag");
            traffic::validate_tag(tag).map_err(|e| FieldError::new(&at, e.to_string()))?;
            cloudrun::validate_tag_for_service(tag, name).map_err(|m| FieldError::new(at, m))?;
        }
    }
    Ok(name)
}

/// The traffic of a document as the traffic math's targets, each entry checked (revisionName
/// xor latestRevision, percent 0-100); None when the document has none. Sums are checked by
/// [`traffic::validate_spec`].
pub fn traffic_from_doc(
    targets: &[TrafficTarget],
) -> Result<Option<Vec<traffic::TrafficTarget>>, FieldError> {
    if targets.is_empty() {
        return Ok(None);
    }
    let mut parsed = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let key = match (&t.revision_name, t.latest_revision) {
            (Some(name), None | Some(false)) if !name.is_empty() => {
                TargetKey::Revision(name.clone())
            }
            (None, Some(true)) => TargetKey::Latest,
            (Some(_), Some(true)) => {
                return Err(FieldError::new(
                    format!("spec.traffic[{i}]"),
                    "set revisionName or latestRevision: true, not both",
                ))
            }
            _ => {
                return Err(FieldError::new(
                    format!("spec.traffic[{i}]"),
                    "set revisionName or latestRevision: true",
                ))
            }
        };
        let percent = t.percent.unwrap_or(0);
        if percent > 100 {
            return Err(FieldError::new(
                format!("spec.traffic[{i}].percent"),
                format!("{percent} is not between 0 and 100"),
            ));
        }
        parsed.push(traffic::TrafficTarget {
            key,
            percent,
            tag: t.tag.clone(),
        });
    }
    Ok(Some(parsed))
}

/// Traffic targets as `spec.traffic` entries, tags folded in as Cloud Run prints them.
pub fn traffic_to_doc(targets: &[traffic::TrafficTarget]) -> Vec<TrafficTarget> {
    traffic::merged(targets)
        .into_iter()
        .map(|t| {
            let (revision_name, latest_revision) = match t.key {
                TargetKey::Latest => (None, Some(true)),
                TargetKey::Revision(r) => (Some(r), None),
            };
            TrafficTarget {
                revision_name,
                latest_revision,
                percent: Some(t.percent),
                tag: t.tag,
                url: None,
            }
        })
        .collect()
}

/// The paths of fields kept in `extra` (accepted, not emulated), for one-line notes.
pub fn unmodelled_fields(service: &Service) -> Vec<String> {
    let mut paths = Vec::new();
    let mut push = |prefix: &str, extra: &Extra| {
        paths.extend(extra.keys().map(|k| format!("{prefix}.{k}")));
    };
    push("spec", &service.spec.extra);
    push("spec.template.spec", &service.spec.template.spec.extra);
    for (i, c) in service.spec.template.spec.containers.iter().enumerate() {
        push(&format!("spec.template.spec.containers[{i}]"), &c.extra);
        if let Some(r) = &c.resources {
            push(
                &format!("spec.template.spec.containers[{i}].resources"),
                &r.extra,
            );
        }
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTRACT_EXAMPLE: &str = r#"
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
  annotations:
    run.googleapis.com/ingress: all
spec:
  template:
    metadata:
      name: hello-00003-abc
      annotations:
        autoscaling.knative.dev/minScale: '0'
        autoscaling.knative.dev/maxScale: '100'
    spec:
      containerConcurrency: 80
      timeoutSeconds: 300
      serviceAccountName: sa@project.iam.gserviceaccount.com
      containers:
      - image: us-docker.pkg.dev/cloudrun/container/hello
        ports:
        - containerPort: 8080
          name: http1
        env:
        - name: GREETING
          value: hi
        - name: DB_PASS
          valueFrom: {secretKeyRef: {name: db-pass, key: latest}}
        resources:
          limits: {cpu: 1000m, memory: 512Mi}
        startupProbe:
          tcpSocket: {port: 8080}
          timeoutSeconds: 240
          periodSeconds: 240
          failureThreshold: 1
  traffic:
  - latestRevision: true
    percent: 0
    tag: candidate
  - revisionName: hello-00001-abc
    percent: 100
"#;

    #[test]
    fn the_contract_example_parses() {
        let service = parse_service_yaml(CONTRACT_EXAMPLE).unwrap();
        assert_eq!(service.metadata.name.as_deref(), Some("hello"));
        let container = &service.spec.template.spec.containers[0];
        assert_eq!(container.ports[0].container_port, 8080);
        assert_eq!(container.resources.as_ref().unwrap().limits["cpu"], "1000m");
        assert_eq!(service.spec.traffic.len(), 2);
        assert_eq!(
            container.env[1]
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap()
                .name,
            "db-pass"
        );
    }

    #[test]
    fn bad_fields_are_reported_with_their_path() {
        let text = CONTRACT_EXAMPLE.replace("containerPort: 8080", "containerPort: eighty");
        let error = parse_service_yaml(&text).unwrap_err();
        assert_eq!(
            error.field,
            "spec.template.spec.containers[0].ports[0].containerPort"
        );
        assert!(error.message.starts_with("expected an integer"), "{error}");
        let error =
            parse_service_yaml("apiVersion: serving.knative.dev/v1\nkind: Service\nspec: [1]\n")
                .unwrap_err();
        assert_eq!(error.field, "spec");
        let error = parse_service_yaml("kind: Pod\n").unwrap_err();
        assert_eq!(error.field, "kind");
    }

    #[test]
    fn kind_and_api_version_are_required() {
        let missing_kind = CONTRACT_EXAMPLE.replace("kind: Service\n", "");
        let error = parse_service_yaml(&missing_kind).unwrap_err();
        assert_eq!(error.to_string(), "kind: required: set kind: Service");
        let wrong = CONTRACT_EXAMPLE.replace("serving.knative.dev/v1", "apps/v1");
        let error = parse_service_yaml(&wrong).unwrap_err();
        assert_eq!(error.field, "apiVersion");
        assert!(error.message.contains("found \"apps/v1\""), "{error}");
        let no_version = CONTRACT_EXAMPLE.replace("apiVersion: serving.knative.dev/v1\n", "");
        assert_eq!(
            parse_service_yaml(&no_version).unwrap_err().field,
            "apiVersion"
        );
        let json = br#"{"apiVersion":"serving.knative.dev/v1","metadata":{"name":"a"}}"#;
        assert_eq!(parse_service_json(json).unwrap_err().field, "kind");
    }

    #[test]
    fn unknown_fields_are_refused_with_a_suggestion() {
        let typo = CONTRACT_EXAMPLE.replace("containerConcurrency: 80", "containerConcurency: 1");
        let error = parse_service_yaml(&typo).unwrap_err();
        assert_eq!(error.field, "spec.template.spec.containerConcurency");
        assert!(
            error
                .message
                .ends_with("did you mean containerConcurrency?"),
            "{error}"
        );
        let deep = CONTRACT_EXAMPLE.replace(
            "containerPort: 8080",
            "containerPort: 8080\n          protocl: TCP",
        );
        let error = parse_service_yaml(&deep).unwrap_err();
        assert_eq!(
            error.field,
            "spec.template.spec.containers[0].ports[0].protocl"
        );
        assert!(error.message.contains("did you mean protocol?"), "{error}");
        let nothing_close = CONTRACT_EXAMPLE.replace("  traffic:", "  zzzzzzzzzz: 1\n  traffic:");
        let error = parse_service_yaml(&nothing_close).unwrap_err();
        assert_eq!(error.field, "spec.zzzzzzzzzz");
        assert!(!error.message.contains("did you mean"), "{error}");
        // Known fields the emulator does not model are still accepted.
        let known = CONTRACT_EXAMPLE.replace(
            "        startupProbe:",
            "        workingDir: /app\n        startupProbe:",
        );
        assert!(parse_service_yaml(&known).is_ok());
    }

    #[test]
    fn out_of_range_integers_say_so() {
        let negative =
            CONTRACT_EXAMPLE.replace("containerConcurrency: 80", "containerConcurrency: -1");
        let error = parse_service_yaml(&negative).unwrap_err();
        assert_eq!(error.field, "spec.template.spec.containerConcurrency");
        assert_eq!(error.message, "-1 is out of range: it must be 0 or more");
        let big = CONTRACT_EXAMPLE.replace("containerPort: 8080", "containerPort: 70000");
        let error = parse_service_yaml(&big).unwrap_err();
        assert_eq!(
            error.message,
            "70000 is out of range: it must be at most 65535"
        );
    }

    #[test]
    fn names_follow_cloud_runs_rules() {
        let service = |name: &str| {
            parse_service_yaml(
                &CONTRACT_EXAMPLE.replace("name: hello\n", &format!("name: '{name}'\n")),
            )
        };
        for bad in ["a---b", "a/b", "../x", "Hello"] {
            let error = validate_names(&service(bad).unwrap()).unwrap_err();
            assert_eq!(error.field, "metadata.name", "{bad}");
        }
        let ok = service("hello").unwrap();
        assert_eq!(validate_names(&ok), Ok("hello"));
        let mut bad_revision = ok.clone();
        bad_revision.spec.template.metadata.name = Some("hello-../x".into());
        assert_eq!(
            validate_names(&bad_revision).unwrap_err().field,
            "spec.template.metadata.name"
        );
        let mut bad_tag = ok.clone();
        bad_tag.spec.traffic[0].tag = Some("a".repeat(46));
        bad_tag.metadata.name = Some("s".repeat(20));
        bad_tag.spec.template.metadata.name = None;
        bad_tag.spec.traffic[1].revision_name = Some(format!("{}-1", "s".repeat(20)));
        assert_eq!(
            validate_names(&bad_tag).unwrap_err().field,
            "spec.traffic[0].tag"
        );
    }

    #[test]
    fn deep_documents_are_refused_quickly() {
        let deep = format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nspec: {}{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let started = tokio::time::Instant::now();
        let error = parse_service_yaml(&deep).unwrap_err();
        assert!(error.message.contains("nests more than"), "{error}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let big = format!("# {}\n", "x".repeat(5 << 20));
        assert!(parse_service_yaml(&big)
            .unwrap_err()
            .message
            .contains("limit is 4 MiB"));
    }

    #[test]
    fn unknown_fields_survive_a_round_trip_and_are_listed() {
        let text = CONTRACT_EXAMPLE.replace(
            "      containerConcurrency: 80",
            "      containerConcurrency: 80\n      volumes: [{name: v}]",
        );
        let service = parse_service_yaml(&text).unwrap();
        assert_eq!(unmodelled_fields(&service), ["spec.template.spec.volumes"]);
        let again = parse_service_yaml(&serde_yaml_ng::to_string(&service).unwrap()).unwrap();
        assert_eq!(again, service);
    }

    #[test]
    fn traffic_entries_are_checked_with_paths() {
        let bad = [TrafficTarget {
            percent: Some(100),
            ..Default::default()
        }];
        let error = traffic_from_doc(&bad).unwrap_err();
        assert_eq!(error.field, "spec.traffic[0]");
        let big = [TrafficTarget {
            latest_revision: Some(true),
            percent: Some(101),
            ..Default::default()
        }];
        assert_eq!(
            traffic_from_doc(&big).unwrap_err().field,
            "spec.traffic[0].percent"
        );
        assert_eq!(traffic_from_doc(&[]).unwrap(), None);
        let targets = traffic_from_doc(&[TrafficTarget {
            latest_revision: Some(true),
            percent: Some(100),
            tag: Some("a".into()),
            ..Default::default()
        }])
        .unwrap()
        .unwrap();
        assert_eq!(
            traffic_to_doc(&traffic::normalize(&targets))[0]
                .tag
                .as_deref(),
            Some("a")
        );
    }

    #[test]
    fn numbers_are_accepted_as_quantities() {
        let text = CONTRACT_EXAMPLE.replace("cpu: 1000m", "cpu: 2");
        let service = parse_service_yaml(&text).unwrap();
        let limits = &service.spec.template.spec.containers[0]
            .resources
            .as_ref()
            .unwrap()
            .limits;
        assert_eq!(limits["cpu"], "2");
    }
}
