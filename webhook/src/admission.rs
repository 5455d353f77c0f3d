//! Reading an AdmissionReview and writing its answer. Pure over an [`Index`] of what the caches hold:
//! malformed input gets a typed [`BadRequest`] (HTTP 400) or a well-formed denial, never an allow.

use std::collections::BTreeMap;
use std::sync::Arc;

use crds::{ChannelContract, ContractPolicy};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, Operation};
use serde_json::Value;

use crate::evaluate::{self, ContractRef, Decision, Kind, Subject};

/// What the caches know, as the evaluation needs it.
pub trait Index {
    /// Every ContractPolicy, as shared handles (a request must not copy every policy).
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

/// Answers one AdmissionReview body.
pub fn review(body: &[u8], index: &impl Index, settings: &Settings) -> Result<(Value, Outcome), BadRequest> {
    review_value(&parse(body)?, index, settings)
}

/// Reads a request body as JSON (the first step of [`review`], for callers that look into the body
/// before answering it).
pub fn parse(body: &[u8]) -> Result<Value, BadRequest> {
    serde_json::from_slice(body).map_err(|e| BadRequest::NotJson(e.to_string()))
}

/// Answers one AdmissionReview already read as JSON.
pub fn review_value(value: &Value, index: &impl Index, settings: &Settings) -> Result<(Value, Outcome), BadRequest> {
    let api_version = value.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default();
    if api_version != "admission.k8s.io/v1" || kind != "AdmissionReview" {
        return Err(BadRequest::WrongType { api_version: api_version.to_owned(), kind: kind.to_owned() });
    }
    let request = value.get("request").filter(|r| r.is_object()).ok_or(BadRequest::NoRequest)?;
    let uid = request.get("uid").and_then(Value::as_str).filter(|u| !u.is_empty()).ok_or(BadRequest::NoUid)?;

    let deny = |reason: &'static str, message: String| {
        let outcome = Outcome { kind: "other", operation: "unknown", decision: "deny", reason, evaluation: None };
        (answer(uid, false, &message, &[]), outcome)
    };
    let req: AdmissionRequest<DynamicObject> = match serde_json::from_value(request.clone()) {
        Ok(r) => r,
        Err(e) => return Ok(deny("malformed", format!("the admission request is malformed: {e}"))),
    };
    Ok(decide(&req, index, settings))
}

/// The AdmissionReview v1 answer.
fn answer(uid: &str, allowed: bool, message: &str, warnings: &[String]) -> Value {
    let mut response = serde_json::json!({"uid": uid, "allowed": allowed});
    if !allowed {
        response["status"] = serde_json::json!({"code": 403, "reason": "Forbidden", "message": message});
    }
    if !warnings.is_empty() {
        response["warnings"] = serde_json::json!(warnings);
    }
    serde_json::json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}

fn decide(req: &AdmissionRequest<DynamicObject>, index: &impl Index, settings: &Settings) -> (Value, Outcome) {
    let operation = operation_name(&req.operation);
    let kind = match (req.kind.group.as_str(), req.kind.kind.as_str()) {
        ("", "Service") => Some(Kind::Service),
        (crds::GROUP, "ChannelContract") => Some(Kind::ChannelContract),
        _ => None,
    };
    let kind_name = kind.map_or("other", Kind::as_str);
    let outcome = |decision, reason, evaluation| Outcome { kind: kind_name, operation, decision, reason, evaluation };
    let allow = |reason| (answer(&req.uid, true, "", &[]), outcome("allow", reason, None));
    let deny = |reason, message: String| (answer(&req.uid, false, &message, &[]), outcome("deny", reason, None));

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
    let Some(object) = &req.object else {
        return deny("no-object", format!("the admission request for {operation} {kind} has no object"));
    };
    let Some(namespace) = req.namespace.clone().or_else(|| object.metadata.namespace.clone()) else {
        return deny("no-namespace", format!("the admission request for {kind} has no namespace"));
    };
    if evaluate::is_exempt(&namespace, &settings.exempt_namespaces) {
        return allow("exempt-namespace");
    }
    let name = object.metadata.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| req.name.clone());
    let name = if name.is_empty() {
        object.metadata.generate_name.as_ref().map_or_else(|| "<unnamed>".to_owned(), |g| format!("{g}*"))
    } else {
        name
    };
    let labels = object.metadata.labels.clone().unwrap_or_default();
    let declaration = match kind {
        Kind::Service => {
            let annotations = object.metadata.annotations.clone().unwrap_or_default();
            evaluate::service_declaration(&name, &annotations, &index.contracts_in(&namespace))
        }
        Kind::ChannelContract => {
            let contract: ChannelContract = match serde_json::to_value(object).and_then(serde_json::from_value) {
                Ok(c) => c,
                Err(e) => return deny("malformed", format!("ChannelContract {namespace}/{name} cannot be read: {e}")),
            };
            let regions = contract.spec.failover.map(|f| f.regions).unwrap_or_default();
            evaluate::contract_declaration(&regions)
        }
    };
    let subject = Subject { kind, namespace: namespace.clone(), name, labels, declaration };
    let labels = index.namespace_labels(&namespace);
    let decision = evaluate::evaluate(&subject, &index.policies(), labels.as_ref(), &settings.exempt_namespaces);
    let warnings = decision.warnings();
    if let Some(message) = decision.denial() {
        (answer(&req.uid, false, &message, &warnings), outcome("deny", "policy", Some(decision)))
    } else {
        let verdict = if warnings.is_empty() { "allow" } else { "warn" };
        (answer(&req.uid, true, "", &warnings), outcome(verdict, "policy", Some(decision)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::admission::{AdmissionResponse, AdmissionReview};
    use serde_json::json;

    /// The answer parses as kube's AdmissionReview type, with a uid.
    fn kube_shape_check(v: &Value) -> bool {
        serde_json::from_value::<AdmissionReview<DynamicObject>>(v.clone())
            .ok()
            .and_then(|r| r.response)
            .is_some_and(|r: AdmissionResponse| !r.uid.is_empty())
    }

    struct Fixed {
        policies: Vec<ContractPolicy>,
        contracts: Vec<ContractRef>,
    }

    impl Index for Fixed {
        fn policies(&self) -> Vec<Arc<ContractPolicy>> {
            self.policies.iter().cloned().map(Arc::new).collect()
        }
        fn contracts_in(&self, _: &str) -> Vec<ContractRef> {
            self.contracts.clone()
        }
        fn namespace_labels(&self, _: &str) -> Option<BTreeMap<String, String>> {
            Some(BTreeMap::new())
        }
    }

    fn index() -> Fixed {
        let spec = serde_json::from_value(json!({"failover": {"requiredRegions": ["gz", "sz", "hz"]}})).expect("spec");
        Fixed { policies: vec![ContractPolicy::new("national-baseline", spec)], contracts: vec![] }
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

    fn run(body: &Value) -> Result<(Value, Outcome), BadRequest> {
        review(&serde_json::to_vec(body).expect("json"), &index(), &Settings::default())
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
