//! Reading an AdmissionReview and writing its answer, on kube's typed `admission` types from the body to
//! the answer. Pure over an [`Index`] of what the caches hold: malformed input gets a typed [`BadRequest`]
//! (HTTP 400) or a well-formed denial, never an allow.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use crds::{ChannelContractSpec, ContractPolicy};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::{ApiResource, DynamicObject, DynamicResourceScope, Resource, Status};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::evaluate::{self, ContractRef, Decision, Kind, Subject};

/// A review as it is answered.
pub type Review = AdmissionReview<DynamicObject>;
/// The request inside a review, with the objects as the webhook reads them.
pub type Request = AdmissionRequest<Judged>;

/// An object under review, as the webhook reads it: its metadata, and its spec kept as the JSON it came
/// as (read further only for a ChannelContract). Unlike [`DynamicObject`], whose flattened fields make
/// serde buffer the whole object a second time, it is read in one pass, so a review costs little more
/// memory than its body.
#[derive(Debug, Clone, Deserialize)]
pub struct Judged {
    /// The object's metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Its spec, unread.
    #[serde(default)]
    pub spec: Option<Box<RawValue>>,
}

impl Resource for Judged {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }

    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }

    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }

    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// An AdmissionReview as it arrives: kube's [`AdmissionRequest`] inside an envelope without
/// [`AdmissionReview`]'s flattened type fields (serde would buffer the whole request to read them).
#[derive(Debug, Deserialize)]
struct Incoming {
    #[serde(rename = "apiVersion", default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    request: Option<Request>,
}

/// The AdmissionReview version the webhook speaks.
pub const API_VERSION: &str = "admission.k8s.io/v1";

/// What the caches know, as the evaluation needs it.
pub trait Index {
    /// Every ContractPolicy that can be read, as shared handles (a request must not copy every policy). One
    /// that cannot ([`evaluate::unreadable`]) enforces nothing, so it is left out: the index judges each
    /// policy once when it changes, not on every review.
    fn policies(&self) -> Vec<Arc<ContractPolicy>>;
    /// The ChannelContracts of a namespace.
    fn contracts_in(&self, namespace: &str) -> Vec<ContractRef>;
    /// A namespace's labels; `None` when the namespace is unknown.
    fn namespace_labels(&self, namespace: &str) -> Option<BTreeMap<String, String>>;
}

/// A request that cannot be answered with an AdmissionReview at all (no uid to answer to).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadRequest {
    /// The body is not JSON.
    #[error("the request body is not JSON: {0}")]
    NotJson(String),
    /// Not an admission.k8s.io/v1 AdmissionReview.
    #[error(
        "expected apiVersion admission.k8s.io/v1 and kind AdmissionReview, got apiVersion {api_version:?} and kind {kind:?}"
    )]
    WrongType {
        /// What was sent as apiVersion.
        api_version: String,
        /// What was sent as kind.
        kind: String,
    },
    /// No `request`.
    #[error("the AdmissionReview has no request")]
    NoRequest,
    /// No `request.uid`.
    #[error("request.uid is missing or empty: the answer could not be matched to the request")]
    NoUid,
}

/// A body that is not a readable request: either nothing can be answered ([`BadRequest`]), or the review
/// names its request's uid and is answered with a denial that says what is wrong.
#[derive(Debug, PartialEq, Eq)]
pub enum Unreadable {
    /// Answered with HTTP 400.
    Bad(BadRequest),
    /// Answered with a denial.
    Malformed {
        /// The request's uid.
        uid: String,
        /// What is wrong.
        message: String,
    },
}

/// What happened to a request, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Service, ChannelContract or `other`.
    pub kind: &'static str,
    /// CREATE, UPDATE, DELETE, CONNECT or `unknown`.
    pub operation: &'static str,
    /// `allow`, `deny` or `warn`.
    pub decision: &'static str,
    /// Why, when it was not a policy evaluation (exempt, delete, malformed …).
    pub reason: &'static str,
    /// The policy evaluation, when there was one.
    pub evaluation: Option<Decision>,
}

/// Settings of the evaluation that come from the deployment.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Namespaces never matched besides kube-system, kube-public and kube-node-lease (the project's own).
    pub exempt_namespaces: Vec<String>,
}

fn operation_name(op: &Operation) -> &'static str {
    match op {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

/// Reads a request body: one typed parse. Only when that fails is the body looked at again, to say
/// precisely what is wrong (and to find the uid that a denial must carry).
pub fn read(body: &[u8]) -> Result<Request, Unreadable> {
    match serde_json::from_slice::<Incoming>(body) {
        Ok(Incoming { api_version, kind, request }) => {
            if api_version != API_VERSION || kind != "AdmissionReview" {
                return Err(Unreadable::Bad(BadRequest::WrongType { api_version, kind }));
            }
            let mut request = request.ok_or(Unreadable::Bad(BadRequest::NoRequest))?;
            if request.uid.is_empty() {
                return Err(Unreadable::Bad(BadRequest::NoUid));
            }
            // The answer's apiVersion and kind are the request's (AdmissionResponse::from copies them).
            request.types = kube::core::TypeMeta { api_version, kind };
            Ok(request)
        }
        Err(typed) => Err(diagnose(body, &typed)),
    }
}

/// What is wrong with a body that is not a readable AdmissionReview.
fn diagnose(body: &[u8], typed: &serde_json::Error) -> Unreadable {
    #[derive(Deserialize)]
    struct Envelope {
        #[serde(rename = "apiVersion", default)]
        api_version: serde_json::Value,
        #[serde(default)]
        kind: serde_json::Value,
        #[serde(default)]
        request: Option<serde_json::Value>,
    }
    let text = |v: &serde_json::Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    let envelope: Envelope = match serde_json::from_slice(body) {
        Ok(e) => e,
        Err(e) if e.is_data() => {
            // JSON, but not an object.
            return Unreadable::Bad(BadRequest::WrongType { api_version: String::new(), kind: String::new() });
        }
        Err(e) => return Unreadable::Bad(BadRequest::NotJson(e.to_string())),
    };
    let (api_version, kind) = (text(&envelope.api_version), text(&envelope.kind));
    if api_version != API_VERSION || kind != "AdmissionReview" {
        let api_version = if envelope.api_version.is_null() { String::new() } else { api_version };
        let kind = if envelope.kind.is_null() { String::new() } else { kind };
        return Unreadable::Bad(BadRequest::WrongType { api_version, kind });
    }
    let Some(request) = envelope.request.filter(serde_json::Value::is_object) else {
        return Unreadable::Bad(BadRequest::NoRequest);
    };
    match request.get("uid").and_then(serde_json::Value::as_str).filter(|u| !u.is_empty()) {
        Some(uid) => Unreadable::Malformed {
            uid: uid.to_owned(),
            message: format!("the admission request is malformed: {typed}"),
        },
        None => Unreadable::Bad(BadRequest::NoUid),
    }
}

/// Answers one AdmissionReview body: [`read`], then [`decide`].
pub fn review(body: &[u8], index: &impl Index, settings: &Settings) -> Result<(Review, Outcome), BadRequest> {
    match read(body) {
        Ok(request) => {
            let (response, outcome) = decide(request, index, settings);
            Ok((response.into_review(), outcome))
        }
        Err(unreadable) => answer_unreadable(unreadable),
    }
}

/// The answer to a body that [`read`] refused: a denial when it has a uid, else the [`BadRequest`].
pub fn answer_unreadable(unreadable: Unreadable) -> Result<(Review, Outcome), BadRequest> {
    match unreadable {
        Unreadable::Bad(bad) => Err(bad),
        Unreadable::Malformed { uid, message } => {
            let outcome = Outcome {
                kind: "other",
                operation: "unknown",
                decision: "deny",
                reason: "malformed",
                evaluation: None,
            };
            Ok((denial(uid, &message, Vec::new()).into_review(), outcome))
        }
    }
}

/// A denial: HTTP-style 403 Forbidden with the message, and any warnings.
fn denial(uid: String, message: &str, warnings: Vec<String>) -> AdmissionResponse {
    let mut response = AdmissionResponse::invalid(message);
    response.uid = uid;
    response.result = Status::failure(message, "Forbidden").with_code(403);
    response.warnings = (!warnings.is_empty()).then_some(warnings);
    response
}

/// Decides one request. It takes the request whole: the objects' labels move into what is judged
/// instead of being copied (a review's objects may be megabytes of labels).
pub fn decide(mut req: Request, index: &impl Index, settings: &Settings) -> (AdmissionResponse, Outcome) {
    let operation = operation_name(&req.operation);
    let kind = match (req.kind.group.as_str(), req.kind.kind.as_str()) {
        ("", "Service") => Some(Kind::Service),
        (crds::GROUP, "ChannelContract") => Some(Kind::ChannelContract),
        _ => None,
    };
    let kind_name = kind.map_or("other", Kind::as_str);
    let outcome = |decision, reason, evaluation| Outcome { kind: kind_name, operation, decision, reason, evaluation };
    let allowed = AdmissionResponse::from(&req);
    let uid = req.uid.clone();
    let allow = |reason| (allowed.clone(), outcome("allow", reason, None));
    let deny = |reason, message: String| (denial(uid.clone(), &message, Vec::new()), outcome("deny", reason, None));

    // DELETE, CONNECT and subresources (status, scale …) are never blocked.
    if matches!(req.operation, Operation::Delete | Operation::Connect) {
        return allow("operation-not-judged");
    }
    if req.sub_resource.as_deref().is_some_and(|s| !s.is_empty()) {
        return allow("subresource");
    }
    let Some(kind) = kind else {
        return deny(
            "unknown-kind",
            format!(
                "this webhook judges Services and ChannelContracts, not {}/{} {}; check the ValidatingWebhookConfiguration's rules",
                req.kind.group, req.kind.version, req.kind.kind
            ),
        );
    };
    let Some(mut object) = req.object.take() else {
        return deny("no-object", format!("the admission request for {operation} {kind} has no object"));
    };
    // An object being deleted only waits for its finalizers to go: removing them must always work.
    if object.metadata.deletion_timestamp.is_some() {
        return allow("being-deleted");
    }
    let Some(namespace) = req.namespace.clone().or_else(|| object.metadata.namespace.clone()) else {
        return deny("no-namespace", format!("the admission request for {kind} has no namespace"));
    };
    if evaluate::is_exempt(&namespace, &settings.exempt_namespaces) {
        return allow("exempt-namespace");
    }
    let namespace_labels = index.namespace_labels(&namespace);
    if evaluate::opted_out(namespace_labels.as_ref()) {
        return allow("opted-out");
    }
    let subject = match subject_of(kind, &namespace, &req.name, &mut object, index) {
        Ok(s) => s,
        Err(message) => return deny("malformed", message),
    };
    // Policies handed over to their generated ValidatingAdmissionPolicies are judged by the API server.
    let mut policies = index.policies();
    policies.retain(|p| !crate::vap::enforced_by_vap(p));
    let exempt = &settings.exempt_namespaces;
    let mut decision = evaluate::evaluate(&subject, &policies, namespace_labels.as_ref(), exempt);
    if req.operation == Operation::Update
        && !decision.allowed()
        && let Some(mut old) = req.old_object.take()
        // An old object that cannot be read tolerates nothing.
        && let Ok(old) = subject_of(kind, &namespace, &req.name, &mut old, index)
    {
        let before = evaluate::evaluate(&old, &policies, namespace_labels.as_ref(), exempt);
        evaluate::tolerate_existing(&mut decision, &subject, &old, &before);
    }
    let warnings = decision.warnings();
    if let Some(message) = decision.denial() {
        (denial(uid, &message, warnings), outcome("deny", "policy", Some(decision)))
    } else {
        let mut response = allowed;
        let verdict = if warnings.is_empty() { "allow" } else { "warn" };
        response.warnings = (!warnings.is_empty()).then_some(warnings);
        (response, outcome(verdict, "policy", Some(decision)))
    }
}

/// The object under judgement, as the evaluation sees it.
fn subject_of(
    kind: Kind,
    namespace: &str,
    request_name: &str,
    object: &mut Judged,
    index: &impl Index,
) -> Result<Subject, String> {
    let labels = object.metadata.labels.take().unwrap_or_default();
    let meta = &object.metadata;
    let name = meta.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| request_name.to_owned());
    let name = if name.is_empty() {
        meta.generate_name.as_ref().map_or_else(|| "<unnamed>".to_owned(), |g| format!("{g}*"))
    } else {
        name
    };
    let empty = BTreeMap::new();
    match kind {
        Kind::Service => {
            let annotations = meta.annotations.as_ref().unwrap_or(&empty);
            Ok(Subject::service(namespace, &name, labels, annotations, &index.contracts_in(namespace)))
        }
        Kind::ChannelContract => {
            let spec = object.spec.as_ref().ok_or_else(|| format!("ChannelContract {namespace}/{name} has no spec"))?;
            let spec: ChannelContractSpec = serde_json::from_str(spec.get())
                .map_err(|e| format!("ChannelContract {namespace}/{name} cannot be read: {e}"))?;
            let regions = spec.failover.map(|f| f.regions).unwrap_or_default();
            Ok(Subject::contract(namespace, &name, labels, &regions))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// The answer parses as kube's AdmissionReview type, says it is one, and has a uid.
    fn kube_shape_check(v: &Value) -> bool {
        if v["apiVersion"] != "admission.k8s.io/v1" || v["kind"] != "AdmissionReview" {
            return false;
        }
        serde_json::from_value::<Review>(v.clone())
            .ok()
            .and_then(|r| r.response)
            .is_some_and(|r: AdmissionResponse| !r.uid.is_empty())
    }

    struct Fixed {
        policies: Vec<ContractPolicy>,
        contracts: Vec<ContractRef>,
        labels: BTreeMap<String, String>,
    }

    impl Index for Fixed {
        fn policies(&self) -> Vec<Arc<ContractPolicy>> {
            // As the real index ([`crate::index::UnreadablePolicies`]): unreadable policies left out.
            self.policies.iter().filter(|p| evaluate::unreadable(&p.spec).is_none()).cloned().map(Arc::new).collect()
        }
        fn contracts_in(&self, _: &str) -> Vec<ContractRef> {
            self.contracts.clone()
        }
        fn namespace_labels(&self, _: &str) -> Option<BTreeMap<String, String>> {
            Some(self.labels.clone())
        }
    }

    fn index() -> Fixed {
        let spec = serde_json::from_value(json!({"failover": {"requiredRegions": ["gz", "sz", "hz"]}})).expect("spec");
        Fixed {
            policies: vec![ContractPolicy::new("national-baseline", spec)],
            contracts: vec![],
            labels: BTreeMap::new(),
        }
    }

    fn service_review(op: &str, annotation: Option<&str>, namespace: &str) -> Value {
        let mut annotations = serde_json::Map::new();
        if let Some(a) = annotation {
            annotations.insert("csp.contracts.dev/failover-regions".into(), json!(a));
        }
        json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Service"},
                "resource": {"group": "", "version": "v1", "resource": "services"},
                "name": "payment-verify", "namespace": namespace, "operation": op,
                "userInfo": {"username": "alice"},
                "object": {"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": "payment-verify", "namespace": namespace, "annotations": annotations},
                    "spec": {"ports": [{"port": 8080}]}},
                "oldObject": null, "dryRun": false
            }
        })
    }

    fn run_with(body: &Value, index: &Fixed) -> Result<(Value, Outcome), BadRequest> {
        let (review, outcome) = review(&serde_json::to_vec(body).expect("json"), index, &Settings::default())?;
        Ok((serde_json::to_value(review).expect("answer"), outcome))
    }

    fn run(body: &Value) -> Result<(Value, Outcome), BadRequest> {
        run_with(body, &index())
    }

    /// An UPDATE of the Service from `old` to `new` failover-regions annotations (and labels).
    fn update(old: Option<&str>, new: Option<&str>) -> Value {
        let mut r = service_review("UPDATE", new, "payments");
        let mut old_object = r["request"]["object"].clone();
        match old {
            Some(a) => old_object["metadata"]["annotations"] = json!({"csp.contracts.dev/failover-regions": a}),
            None => old_object["metadata"]["annotations"] = json!({}),
        }
        r["request"]["oldObject"] = old_object;
        r
    }

    fn message_of(v: &Value) -> String {
        v["response"]["status"]["message"].as_str().unwrap_or_default().to_owned()
    }

    fn warnings_of(v: &Value) -> Vec<String> {
        serde_json::from_value(v["response"]["warnings"].clone()).unwrap_or_default()
    }

    #[test]
    fn an_update_of_an_object_being_deleted_is_allowed_even_when_it_falls_short() {
        let mut r = update(None, None);
        r["request"]["object"]["metadata"]["deletionTimestamp"] = json!("2026-11-27T10:00:00Z");
        r["request"]["object"]["metadata"]["finalizers"] = json!([]);
        let (v, o) = run(&r).expect("answered");
        assert!(kube_shape_check(&v), "{v}");
        assert_eq!((v["response"]["allowed"].clone(), o.reason), (json!(true), "being-deleted"));
    }

    #[test]
    fn an_update_that_leaves_the_declaration_alone_is_allowed_with_a_warning_naming_the_violation() {
        let mut r = update(Some("gz,sz"), Some("gz,sz"));
        r["request"]["object"]["metadata"]["labels"] = json!({"team": "pay"});
        r["request"]["object"]["spec"]["ports"] = json!([{"port": 8080}, {"port": 9090}]);
        let (v, o) = run(&r).expect("answered");
        assert!(kube_shape_check(&v), "{v}");
        assert_eq!(v["response"]["allowed"], true, "{v}");
        assert_eq!(o.decision, "warn");
        let warnings = warnings_of(&v);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("ContractPolicy \"national-baseline\" would deny Service payments/payment-verify: missing failover regions [hz]; required [gz, sz, hz], declared [gz, sz]."),
            "{}",
            warnings[0]
        );
        assert!(warnings[0].contains("the audit keeps reporting it"), "{}", warnings[0]);
    }

    #[test]
    fn an_update_that_makes_the_object_fall_short_or_touches_a_short_declaration_is_denied() {
        for (old, new) in [(Some("gz,sz,hz"), Some("gz,sz")), (Some("gz"), Some("gz,sz")), (None, Some("gz"))] {
            let (v, o) = run(&update(old, new)).expect("answered");
            assert_eq!(v["response"]["allowed"], false, "{old:?} -> {new:?}: {v}");
            assert_eq!(o.decision, "deny");
            assert!(message_of(&v).starts_with("ContractPolicy \"national-baseline\" denied Service"), "{v}");
        }
        // An update whose old object was not matched (a label brings it under a policy) makes it fall short.
        let spec = serde_json::from_value(json!({
            "failover": {"requiredRegions": ["gz"]},
            "match": {"labelSelector": {"matchLabels": {"tier": "gold"}}},
        }))
        .expect("spec");
        let idx =
            Fixed { policies: vec![ContractPolicy::new("gold", spec)], contracts: vec![], labels: BTreeMap::new() };
        let mut r = update(None, None);
        r["request"]["object"]["metadata"]["labels"] = json!({"tier": "gold"});
        let (v, _) = run_with(&r, &idx).expect("answered");
        assert_eq!(v["response"]["allowed"], false, "{v}");
    }

    #[test]
    fn a_namespace_that_opted_out_is_not_judged() {
        let mut idx = index();
        idx.labels.insert("csp.contracts.dev/webhook".into(), "disabled".into());
        let (v, o) = run_with(&service_review("CREATE", None, "payments"), &idx).expect("answered");
        assert_eq!((v["response"]["allowed"].clone(), o.reason), (json!(true), "opted-out"));
        idx.labels.insert("csp.contracts.dev/webhook".into(), "enabled".into());
        let (v, _) = run_with(&service_review("CREATE", None, "payments"), &idx).expect("answered");
        assert_eq!(v["response"]["allowed"], false);
    }

    #[test]
    fn a_policy_that_cannot_be_read_never_denies() {
        for selector in [
            json!({"namespaceSelector": {"matchExpressions": [{"key": "tier", "operator": "in", "values": ["x"]}]}}),
            json!({"labelSelector": {"matchExpressions": [{"key": "tier", "operator": "In"}]}}),
            json!({"labelSelector": {"matchExpressions": [{"key": "tier", "operator": "Exists", "values": ["x"]}]}}),
        ] {
            let spec = serde_json::from_value(json!({"failover": {"requiredRegions": ["gz"]}, "match": selector}))
                .expect("spec");
            let idx =
                Fixed { policies: vec![ContractPolicy::new("typo", spec)], contracts: vec![], labels: BTreeMap::new() };
            let (v, o) = run_with(&service_review("CREATE", None, "payments"), &idx).expect("answered");
            assert_eq!(v["response"]["allowed"], true, "{selector}: {v}");
            assert_eq!(o.evaluation.map(|d| d.matched), Some(vec![]), "{selector}");
        }
    }

    #[test]
    fn a_service_missing_a_region_is_denied_with_the_full_message() {
        let (v, o) = run(&service_review("CREATE", Some("gz,sz"), "payments")).expect("answered");
        assert!(kube_shape_check(&v));
        assert_eq!(v["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(v["response"]["allowed"], false);
        let msg = v["response"]["status"]["message"].as_str().expect("message");
        assert!(msg.starts_with("ContractPolicy \"national-baseline\" denied Service payments/payment-verify: missing failover regions [hz]"), "{msg}");
        assert_eq!(o.decision, "deny");
    }

    #[test]
    fn compliant_delete_exempt_and_subresource_requests_are_allowed() {
        let (v, _) = run(&service_review("CREATE", Some("gz, sz ,hz"), "payments")).expect("answered");
        assert_eq!(v["response"]["allowed"], true);
        let (v, o) = run(&service_review("DELETE", None, "payments")).expect("answered");
        assert_eq!((v["response"]["allowed"].clone(), o.reason), (json!(true), "operation-not-judged"));
        let (v, _) = run(&service_review("CREATE", None, "kube-system")).expect("answered");
        assert_eq!(v["response"]["allowed"], true);
        let mut r = service_review("UPDATE", None, "payments");
        r["request"]["subResource"] = json!("status");
        let (v, _) = run(&r).expect("answered");
        assert_eq!(v["response"]["allowed"], true);
    }

    #[test]
    fn bad_input_is_a_400_or_a_denial_never_an_allow() {
        assert!(matches!(review(b"{not json", &index(), &Settings::default()), Err(BadRequest::NotJson(_))));
        assert!(matches!(review(b"[]", &index(), &Settings::default()), Err(BadRequest::WrongType { .. })));
        let mut r = service_review("CREATE", None, "payments");
        r["apiVersion"] = json!("admission.k8s.io/v1beta1");
        assert!(matches!(run(&r), Err(BadRequest::WrongType { .. })));
        let mut r = service_review("CREATE", None, "payments");
        r.as_object_mut().expect("object").remove("request");
        assert_eq!(run(&r).err(), Some(BadRequest::NoRequest));
        let mut r = service_review("CREATE", None, "payments");
        r["request"]["uid"] = json!("");
        assert_eq!(run(&r).err(), Some(BadRequest::NoUid));

        let mut r = service_review("CREATE", None, "payments");
        r["request"].as_object_mut().expect("object").remove("object");
        let (v, _) = run(&r).expect("answered");
        assert_eq!(v["response"]["allowed"], false);
        assert!(v["response"]["status"]["message"].as_str().expect("msg").contains("has no object"));

        let mut r = service_review("CREATE", None, "payments");
        r["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
        let (v, _) = run(&r).expect("answered");
        assert_eq!(v["response"]["allowed"], false);
        assert!(v["response"]["status"]["message"].as_str().expect("msg").contains("not apps/v1 Deployment"));

        let mut r = service_review("CREATE", None, "payments");
        r["request"]["operation"] = json!("EXPLODE");
        let (v, _) = run(&r).expect("answered");
        assert_eq!(v["response"]["allowed"], false);
    }

    #[test]
    fn a_malformed_contract_is_denied_with_a_reason() {
        let r = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u1",
                "kind": {"group": "csp.contracts.dev", "version": "v1alpha1", "kind": "ChannelContract"},
                "resource": {"group": "csp.contracts.dev", "version": "v1alpha1", "resource": "channelcontracts"},
                "name": "c", "namespace": "ns", "operation": "CREATE", "userInfo": {},
                "object": {"apiVersion": "csp.contracts.dev/v1alpha1", "kind": "ChannelContract",
                    "metadata": {"name": "c", "namespace": "ns"}, "spec": {"port": "eighty"}}
            }
        });
        let (v, o) = run(&r).expect("answered");
        assert_eq!(v["response"]["allowed"], false);
        assert_eq!(o.reason, "malformed");
    }
}
