//! A ContractPolicy as a ValidatingAdmissionPolicy: the CEL that the API server evaluates in-process with
//! the same verdicts and the same messages as the webhook ([`crate::evaluate`]), for a policy whose rule
//! CEL can express (everything but `requireContract`). Pure: policy in, the objects to apply out.
//!
//! Per policy and matched kind, one ValidatingAdmissionPolicy and its binding (`csp-<policy>-service`,
//! `csp-<policy>-contract`); a Deny policy also gets a Warn pair (`…-tolerated`) for the UPDATEs the
//! webhook tolerates ([`crate::evaluate::tolerate_existing`]). A Service's regions may come from the
//! ChannelContracts that govern it, which CEL cannot look up: the generated policy carries them as
//! constant map literals ([`declarations`]: `<namespace>.<service>` → `<contract>=<r>,<r>;…`), which the
//! API server builds once when it compiles the policy, so a request costs one map lookup. (Parameters
//! would cost more: the API server converts a parameter object through JSON on every request, and once
//! more for match conditions, so the generated policies have neither.)

use std::collections::BTreeMap;

use crds::{
    CONTRACT_ANNOTATION, ContractPolicy, ContractPolicySpec, Enforcement, EnforcementAction,
    FAILOVER_REGIONS_ANNOTATION, MatchKind, WEBHOOK_OPT_OUT_LABEL, WEBHOOK_OPT_OUT_VALUE,
};
use k8s_openapi::api::admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use serde_json::{Value, json};

use crate::evaluate::{self, ALWAYS_EXEMPT, ContractRef};

/// The status condition that says what judges a policy's admission requests.
pub const CONDITION: &str = "Enforced";
/// Its reason when a ValidatingAdmissionPolicy does.
pub const BY_VAP: &str = "ValidatingAdmissionPolicy";
/// Its reason when the webhook does.
pub const BY_WEBHOOK: &str = "Webhook";
/// The label on every generated object: the ContractPolicy it enforces.
pub const POLICY_LABEL: &str = "csp.contracts.dev/policy";
/// `app.kubernetes.io/managed-by` of every generated object.
pub const MANAGED_BY: &str = "channel-contracts-webhook";
/// The label of what is generated for the UPDATEs a Deny policy tolerates.
const ROLE_LABEL: &str = "csp.contracts.dev/role";
/// The Kubernetes label every namespace carries with its name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// How a region list is split, as [`crate::subject::parse_regions`] splits it: commas, semicolons and
/// any white space (RE2; `\s` lacks the vertical tab and U+0085, `\p{Z}` holds the Unicode spaces).
const REGION_TOKEN: &str = r"[^,;\s\x{0B}\x{85}\p{Z}]+";

/// CEL parses an expression of at most 100,000 code points (cel-go's limit, which the API server keeps):
/// what ChannelContracts declare is split into map literals of at most this many bytes each.
pub const CHUNK_BYTES: usize = 90_000;
/// Above this, what ChannelContracts declare does not go into ValidatingAdmissionPolicies (every Service
/// policy carries it twice, in its two generated objects, and an object stays under etcd's 1.5 MiB): the
/// webhook keeps Service policies.
pub const MAX_DECLARATIONS_BYTES: usize = 600 * 1024;

/// What the generator needs besides the policy.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The webhook's namespace: never matched.
    pub namespace: String,
    /// More namespaces never matched.
    pub exempt_namespaces: Vec<String>,
}

/// Which path a policy takes, and why (the condition's message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Path {
    /// The webhook judges it.
    Webhook(String),
    /// Generated ValidatingAdmissionPolicies judge it.
    Vap,
}

/// The path a policy asks for and can take.
pub fn path(spec: &ContractPolicySpec) -> Path {
    match spec.enforcement {
        Enforcement::Webhook => {
            Path::Webhook("spec.enforcement is Webhook: the webhook judges admission requests".into())
        }
        asked => {
            let mode = if asked == Enforcement::Auto { "Auto" } else { "ValidatingAdmissionPolicy" };
            if let Some(why) = evaluate::unreadable(&spec.clone()) {
                Path::Webhook(format!("spec.enforcement is {mode}, but {why}"))
            } else if spec.require_contract {
                Path::Webhook(format!(
                    "spec.enforcement is {mode}, but requireContract needs the ChannelContracts of the namespace, which CEL cannot see: the webhook judges admission requests"
                ))
            } else {
                Path::Vap
            }
        }
    }
}

/// Whether the webhook leaves a policy's admission requests to its ValidatingAdmissionPolicies: the
/// webhook's leader said so (condition [`CONDITION`], reason [`BY_VAP`]) for the policy's current
/// generation, after the API server had them.
pub fn enforced_by_vap(policy: &ContractPolicy) -> bool {
    let Some(status) = &policy.status else { return false };
    status.conditions.iter().any(|c| {
        c.type_ == CONDITION
            && c.status == "True"
            && c.reason == BY_VAP
            && c.observed_generation.is_some()
            && c.observed_generation == policy.metadata.generation
            && path(&policy.spec) == Path::Vap
    })
}

/// One generated pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// The policy.
    pub policy: ValidatingAdmissionPolicy,
    /// Its binding (same name).
    pub binding: ValidatingAdmissionPolicyBinding,
}

/// A generated object's name: `csp-<policy>-<suffix>`, shortened with a hash beyond 253 characters.
pub fn object_name(policy: &str, suffix: &str) -> String {
    let name = format!("csp-{policy}-{suffix}");
    if name.len() <= 253 {
        return name;
    }
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let keep = 253 - suffix.len() - 18;
    format!("{}-{hash:016x}-{suffix}", &name[..keep].trim_end_matches(['-', '.']))
}

/// A CEL string literal.
fn lit(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// A CEL list of string literals.
pub(crate) fn list_lit(items: &[String]) -> String {
    format!("[{}]", items.iter().map(|i| lit(i)).collect::<Vec<_>>().join(", "))
}

/// A label selector as CEL over a labels map expression, with the API's meaning (NotIn and DoesNotExist
/// hold for an absent key).
pub fn selector_cel(labels: &str, selector: &LabelSelector) -> String {
    let mut terms = Vec::new();
    for (k, v) in selector.match_labels.iter().flatten() {
        terms.push(format!("{labels}[?{}] == optional.of({})", lit(k), lit(v)));
    }
    for LabelSelectorRequirement { key, operator, values } in selector.match_expressions.iter().flatten() {
        let values = list_lit(values.as_deref().unwrap_or_default());
        let key = lit(key);
        terms.push(match operator.as_str() {
            "In" => format!("({key} in {labels} && {labels}[{key}] in {values})"),
            "NotIn" => format!("!({key} in {labels} && {labels}[{key}] in {values})"),
            "Exists" => format!("({key} in {labels})"),
            // DoesNotExist; the API's validation refuses any other operator before this.
            _ => format!("!({key} in {labels})"),
        });
    }
    if terms.is_empty() { "true".into() } else { terms.join(" && ") }
}

/// The namespaces a generated policy applies to: the policy's own choice, minus those never matched.
fn namespace_selector(spec: &ContractPolicySpec, settings: &Settings) -> Value {
    let m = &spec.r#match;
    let mut never: Vec<String> = ALWAYS_EXEMPT.iter().map(|s| (*s).to_owned()).collect();
    for n in std::iter::once(&settings.namespace).chain(&settings.exempt_namespaces).chain(&m.excluded_namespaces) {
        if !never.contains(n) {
            never.push(n.clone());
        }
    }
    let mut expressions = vec![
        json!({"key": NAMESPACE_NAME_LABEL, "operator": "NotIn", "values": never}),
        json!({"key": WEBHOOK_OPT_OUT_LABEL, "operator": "NotIn", "values": [WEBHOOK_OPT_OUT_VALUE]}),
    ];
    if !m.namespaces.is_empty() {
        expressions.push(json!({"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": m.namespaces}));
    }
    let mut selector = json!({});
    if let Some(own) = &m.namespace_selector {
        if let Some(labels) = own.match_labels.as_ref().filter(|l| !l.is_empty()) {
            selector["matchLabels"] = json!(labels);
        }
        for e in own.match_expressions.iter().flatten() {
            expressions.push(serde_json::to_value(e).unwrap_or(Value::Null));
        }
    }
    selector["matchExpressions"] = Value::Array(expressions);
    selector
}

/// What ChannelContracts declare, as constant CEL map literals of at most `limit` bytes each (an entry
/// longer than that gets a literal of its own), each with its first key.
pub fn chunks(declarations: &BTreeMap<String, String>, limit: usize) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut current: Option<(String, String)> = None;
    for (key, value) in declarations {
        let entry = format!("{}: {}", lit(key), lit(value));
        match &mut current {
            Some((_, text)) if text.len() + entry.len() + 3 <= limit => {
                text.push_str(", ");
                text.push_str(&entry);
            }
            _ => {
                if let Some((first, text)) = current.take() {
                    out.push((first, format!("{text}}}")));
                }
                current = Some((key.clone(), format!("{{{entry}")));
            }
        }
    }
    if let Some((first, text)) = current {
        out.push((first, format!("{text}}}")));
    }
    out
}

/// Why what ChannelContracts declare cannot go into generated policies, if it cannot: too large for an
/// object, or one Service's entry too long for a CEL expression.
pub fn declarations_unfit(declarations: &BTreeMap<String, String>) -> Option<String> {
    let chunks = chunks(declarations, CHUNK_BYTES);
    let total: usize = chunks.iter().map(|(_, c)| c.len()).sum();
    if total > MAX_DECLARATIONS_BYTES {
        return Some(format!(
            "what ChannelContracts declare for Services ({total} bytes of CEL) does not fit in a ValidatingAdmissionPolicy (at most {MAX_DECLARATIONS_BYTES})"
        ));
    }
    chunks.iter().find(|(_, c)| c.len() > CHUNK_BYTES).map(|(first, c)| {
        format!(
            "what ChannelContracts declare for Service {first} ({} bytes of CEL) does not fit in a CEL expression (at most {CHUNK_BYTES})",
            c.len()
        )
    })
}

/// The entries a policy can use: those of namespaces it may match.
fn reachable(
    declarations: &BTreeMap<String, String>,
    spec: &ContractPolicySpec,
    settings: &Settings,
) -> BTreeMap<String, String> {
    let m = &spec.r#match;
    let never = |ns: &str| {
        ALWAYS_EXEMPT.contains(&ns)
            || settings.namespace == ns
            || settings.exempt_namespaces.iter().chain(&m.excluded_namespaces).any(|n| n == ns)
    };
    declarations
        .iter()
        .filter(|(key, _)| {
            let ns = key.split_once('.').map_or(key.as_str(), |(ns, _)| ns);
            !never(ns) && (m.namespaces.is_empty() || m.namespaces.iter().any(|n| n == ns))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The variables that look a Service up in what ChannelContracts declare: `key` (`<namespace>.<name>`),
/// `contracts<i>` (the map literals) and `entries` (`[[contract, "r,r"], …]`, the webhook's order).
fn lookup_variables(declarations: &BTreeMap<String, String>) -> Vec<Value> {
    let var = |name: &str, expression: String| json!({"name": name, "expression": expression});
    let mut out = vec![var("key", "request.namespace + '.' + variables.subject".into())];
    let chunks = chunks(declarations, CHUNK_BYTES);
    let found = match chunks.len() {
        0 => "''".to_owned(),
        n => {
            // The literal whose keys start at or below the key: the last chunk whose first key is not above it.
            let mut table = format!("variables.contracts{}", n - 1);
            for i in (0..n - 1).rev() {
                table = format!("(variables.key < {} ? variables.contracts{i} : {table})", lit(&chunks[i + 1].0));
            }
            format!("{table}[?variables.key].orValue('')")
        }
    };
    for (i, (_, literal)) in chunks.into_iter().enumerate() {
        out.push(var(&format!("contracts{i}"), literal));
    }
    out.push(var("entries", format!("{found}.split(';').filter(e, e != '').map(e, e.split('='))")));
    out
}

/// The CEL variables that say what an object (`object` or `oldObject`, prefix `''` or `'old'`) of `kind`
/// declares: `<p>own` (the regions it declares itself: a Service's annotation, a contract's spec),
/// `<p>declared` (with those of the contracts that govern it: unique, in the webhook's order) and, for
/// Services, `<p>governed` (the contracts that count).
fn declaration_variables(kind: MatchKind, object: &str, p: &str) -> Vec<Value> {
    let var = |name: &str, expression: String| json!({"name": format!("{p}{name}"), "expression": expression});
    match kind {
        MatchKind::Service => vec![
            var("named", format!("{object}.metadata.?annotations[?{}].orValue('').trim()", lit(CONTRACT_ANNOTATION))),
            var(
                "chosen",
                format!(
                    "variables.entries.exists(e, e[0] == variables.{p}named) ? variables.entries.filter(e, e[0] == variables.{p}named) : variables.entries"
                ),
            ),
            var("governed", format!("variables.{p}chosen.map(e, e[0])")),
            var(
                "own",
                format!(
                    "{object}.metadata.?annotations[?{}].orValue('').findAll({}).distinct()",
                    lit(FAILOVER_REGIONS_ANNOTATION),
                    lit(REGION_TOKEN)
                ),
            ),
            var(
                "declared",
                format!(
                    "(variables.{p}own + variables.{p}chosen.map(e, e[1].split(',')).flatten().filter(r, r != '')).distinct()"
                ),
            ),
        ],
        MatchKind::ChannelContract => vec![
            var("governed", "[]".into()),
            var("own", format!("{object}.spec.?failover.?regions.orValue([]).map(r, string(r)).distinct()")),
            var("declared", format!("variables.{p}own")),
        ],
    }
}

/// The variables every generated policy has: the subject's name, what it declares, what it lacks, and
/// the message parts ([`evaluate::describe`] in CEL).
fn variables(spec: &ContractPolicySpec, kind: MatchKind, declarations: &BTreeMap<String, String>) -> Vec<Value> {
    let required = list_lit(&spec.failover.required_regions);
    let var = |name: &str, expression: String| json!({"name": name, "expression": expression});
    let mut out = vec![var(
        "subject",
        "object.metadata.?name.orValue('') != '' ? object.metadata.name : (request.name != '' ? request.name : (has(object.metadata.generateName) ? object.metadata.generateName + '*' : '<unnamed>'))".into(),
    )];
    if kind == MatchKind::Service {
        out.extend(lookup_variables(declarations));
    }
    out.extend(declaration_variables(kind, "object", ""));
    out.push(var("missing", format!("{required}.filter(r, !(r in variables.declared))")));
    out.push(var(
        "tooFew",
        match spec.failover.min_regions {
            Some(min) => format!("size(variables.declared) < {min}"),
            None => "false".into(),
        },
    ));
    // What the object declares itself (the annotation) often suffices: regions from contracts can only add,
    // so what contracts declare is then never looked up.
    let enough = match spec.failover.min_regions {
        Some(min) => format!("{required}.all(r, r in variables.own) && size(variables.own) >= {min}"),
        None => format!("{required}.all(r, r in variables.own)"),
    };
    out.push(var("ownSuffices", enough));
    out.push(var("fallsShort", "!variables.ownSuffices && (size(variables.missing) > 0 || variables.tooFew)".into()));
    let min_text = spec.failover.min_regions.map(|m| m.to_string()).unwrap_or_default();
    out.push(var(
        "what",
        format!(
            "[size(variables.missing) > 0 ? ['missing failover regions [' + variables.missing.join(', ') + ']; required [' + {required}.join(', ') + '], declared [' + variables.declared.join(', ') + ']'] : [], variables.tooFew ? ['declares ' + string(size(variables.declared)) + ' failover ' + (size(variables.declared) == 1 ? 'region' : 'regions') + ' [' + variables.declared.join(', ') + ']; at least {min_text} required'] : []].flatten().join('; ')"
        ),
    ));
    out.push(var("wanted", format!("({required} + variables.declared).distinct()")));
    let at_least = match spec.failover.min_regions {
        Some(min) => format!("(size(variables.wanted) < {min} ? ' (at least {min} regions)' : '')"),
        None => "''".into(),
    };
    out.push(var(
        "fix",
        match kind {
            MatchKind::Service => format!(
                "'Declare them with annotation {FAILOVER_REGIONS_ANNOTATION}=\"' + (size(variables.wanted) == 0 ? '<region>,<region>' : variables.wanted.join(',')) + '\"' + {at_least} + ' or in a ChannelContract\\'s spec.failover.regions.'"
            ),
            MatchKind::ChannelContract => format!(
                "'Declare them in spec.failover.regions, e.g. regions: [' + (size(variables.wanted) == 0 ? '<region>, <region>' : variables.wanted.join(', ')) + ']' + {at_least} + '.'"
            ),
        },
    ));
    out
}

/// `ContractPolicy "<policy>" <verb> <Kind> <ns>/<name>: ` as CEL.
fn statement(policy: &str, verb: &str, kind: MatchKind) -> String {
    let kind = match kind {
        MatchKind::Service => "Service",
        MatchKind::ChannelContract => "ChannelContract",
    };
    let head = lit(&format!("ContractPolicy {policy:?} {verb} {kind} "));
    format!("{head} + request.namespace + '/' + variables.subject + ': ' + variables.what + '. ' + variables.fix")
}

/// The requests a generated policy sees: CREATE and UPDATE, or (the tolerated pair) UPDATE only, so that
/// the API server does not even consider it for a CREATE.
fn resource_rule(kind: MatchKind, operations: &[&str]) -> Value {
    let (group, version, resource) = match kind {
        MatchKind::Service => ("", "v1", "services"),
        MatchKind::ChannelContract => (crds::GROUP, crds::VERSION, "channelcontracts"),
    };
    json!({"apiGroups": [group], "apiVersions": [version], "resources": [resource], "operations": operations, "scope": "Namespaced"})
}

fn suffix(kind: MatchKind) -> &'static str {
    match kind {
        MatchKind::Service => "service",
        MatchKind::ChannelContract => "contract",
    }
}

/// What a Service declares itself, as CEL: the tokens of its failover-regions annotation (as
/// [`crate::subject::parse_regions`] splits it), duplicates kept.
pub fn own_regions_cel() -> String {
    format!(
        "object.metadata.?annotations[?{}].orValue('').findAll({})",
        lit(FAILOVER_REGIONS_ANNOTATION),
        lit(REGION_TOKEN)
    )
}

/// The common case as one expression: what the object declares itself suffices. The API server evaluates
/// every variable a request touches as a program of its own, twice (for the validation and again for the
/// message): this check touches none, so an object whose annotation suffices costs two evaluations of it.
fn own_suffices_inline(spec: &ContractPolicySpec, kind: MatchKind) -> String {
    match kind {
        MatchKind::Service => {
            let own = own_regions_cel();
            let required = list_lit(&spec.failover.required_regions);
            match spec.failover.min_regions {
                Some(min) => format!("(sets.contains({own}, {required}) && size({own}.distinct()) >= {min})"),
                None => format!("sets.contains({own}, {required})"),
            }
        }
        MatchKind::ChannelContract => "variables.ownSuffices".into(),
    }
}

/// The ValidatingAdmissionPolicies and bindings that enforce a policy, or `None` when it takes the
/// webhook's [`path`]. `declarations`: what ChannelContracts declare for Services ([`declarations`]).
pub fn generate(
    policy: &ContractPolicy,
    settings: &Settings,
    declarations: &BTreeMap<String, String>,
) -> Option<Vec<Generated>> {
    if path(&policy.spec) != Path::Vap {
        return None;
    }
    let name = policy.metadata.name.clone().unwrap_or_default();
    let spec = &policy.spec;
    let declarations = reachable(declarations, spec, settings);
    let mut out = Vec::new();
    let mut kinds = spec.r#match.kinds.clone();
    kinds.sort();
    kinds.dedup();
    for kind in kinds {
        let verb = match spec.enforcement_action {
            EnforcementAction::Deny => "denied",
            EnforcementAction::Warn => "warns about",
            EnforcementAction::Audit => "audits",
        };
        let action = match spec.enforcement_action {
            EnforcementAction::Deny => "Deny",
            EnforcementAction::Warn => "Warn",
            EnforcementAction::Audit => "Audit",
        };
        // What match conditions would say, in the validation itself: each match condition costs the API
        // server the request's conversion to CEL once more.
        let mut applies = vec!["!has(object.metadata.deletionTimestamp)".to_owned()];
        if let Some(s) = &spec.r#match.label_selector {
            applies.push(format!("({})", selector_cel("object.metadata.?labels.orValue({})", s)));
        }
        let mut vars = variables(spec, kind, &declarations);
        let fast = own_suffices_inline(spec, kind);
        // The API server evaluates a messageExpression on every request, admitted or not: the message is
        // built only for an object that falls short (which every refused one does).
        let message = |text: String| format!("{fast} ? '' : (variables.fallsShort ? ({text}) : '')");
        let deny = spec.enforcement_action == EnforcementAction::Deny;
        let mut tolerated_pair = None;
        if deny {
            // The UPDATEs that leave what the object declares as it was, of an object that already fell
            // short of this policy (it matched the old object too): admitted with a warning.
            let old_selected = spec
                .r#match
                .label_selector
                .as_ref()
                .map_or_else(|| "true".to_owned(), |s| selector_cel("oldObject.metadata.?labels.orValue({})", s));
            vars.extend(declaration_variables(kind, "oldObject", "old"));
            vars.push(json!({"name": "tolerated", "expression": format!(
                "request.operation == 'UPDATE' && oldObject != null && ({old_selected}) && variables.olddeclared == variables.declared && variables.oldgoverned == variables.governed"
            )}));
            let mut warn_applies = applies.clone();
            warn_applies.push("oldObject != null".into());
            let would = statement(&name, "would deny", kind);
            let tolerated_message = format!(
                "{would} + ' Allowed because this update leaves the declared failover regions and contracts as they were (the object already fell short); the audit keeps reporting it.'"
            );
            tolerated_pair = Some(pair(
                &name,
                kind,
                &format!("{}-tolerated", suffix(kind)),
                spec,
                settings,
                &vars,
                &format!("{fast} || !({}) || !variables.fallsShort || !variables.tolerated", warn_applies.join(" && ")),
                &message(tolerated_message),
                "Warn",
            ));
        }
        let rule = if deny { "!variables.fallsShort || variables.tolerated" } else { "!variables.fallsShort" };
        out.push(pair(
            &name,
            kind,
            suffix(kind),
            spec,
            settings,
            &vars,
            &format!("{fast} || !({}) || {rule}", applies.join(" && ")),
            &message(statement(&name, verb, kind)),
            action,
        ));
        out.extend(tolerated_pair);
    }
    Some(out)
}

#[allow(clippy::too_many_arguments)]
fn pair(
    policy: &str,
    kind: MatchKind,
    suffix: &str,
    spec: &ContractPolicySpec,
    settings: &Settings,
    variables: &[Value],
    expression: &str,
    message: &str,
    action: &str,
) -> Generated {
    let name = object_name(policy, suffix);
    let tolerated = suffix.ends_with("-tolerated");
    let role = if tolerated { "tolerated" } else { "enforce" };
    let operations: &[&str] = if tolerated { &["UPDATE"] } else { &["CREATE", "UPDATE"] };
    let labels = json!({
        POLICY_LABEL: policy_label_value(policy),
        ROLE_LABEL: role,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    });
    let annotations = json!({POLICY_LABEL: policy});
    let vap_spec = json!({
        "failurePolicy": "Fail",
        "matchConstraints": {
            "matchPolicy": "Equivalent",
            "namespaceSelector": namespace_selector(spec, settings),
            "resourceRules": [resource_rule(kind, operations)],
        },
        "variables": variables,
        "validations": [{"expression": expression, "messageExpression": message, "reason": "Forbidden"}],
    });
    let binding_spec = json!({"policyName": name, "validationActions": [action]});
    let metadata = json!({"name": name, "labels": labels, "annotations": annotations});
    let vap = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy", "metadata": metadata, "spec": vap_spec});
    let binding = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding", "metadata": metadata, "spec": binding_spec});
    Generated {
        policy: serde_json::from_value(vap)
            .unwrap_or_else(|e| unreachable!("a generated ValidatingAdmissionPolicy: {e}")),
        binding: serde_json::from_value(binding)
            .unwrap_or_else(|e| unreachable!("a generated ValidatingAdmissionPolicyBinding: {e}")),
    }
}

/// A policy's name as a label value (names longer than 63 characters are shortened with a hash; the
/// annotation of the same key holds the whole name).
pub fn policy_label_value(policy: &str) -> String {
    if policy.len() <= 63 {
        return policy.to_owned();
    }
    let hash = policy.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("{}-{hash:016x}", policy[..46].trim_end_matches(['-', '.']))
}

/// What ChannelContracts declare for Services, for the generated policies: for every Service they govern,
/// `<namespace>.<service>` → `<contract>=<region>,…;…`, the contracts sorted by name (as
/// [`crate::subject::service_declaration`] takes them). Namespace and Service names are DNS labels (no
/// dots), contract names have no `=` or `;`, regions (label values) no `,`, `;` or `=`.
pub fn declarations<'a>(contracts: impl IntoIterator<Item = (&'a str, &'a ContractRef)>) -> BTreeMap<String, String> {
    let mut by_service: BTreeMap<String, Vec<&ContractRef>> = BTreeMap::new();
    for (namespace, c) in contracts {
        by_service.entry(format!("{namespace}.{}", c.service)).or_default().push(c);
    }
    by_service
        .into_iter()
        .map(|(key, mut cs)| {
            cs.sort_by(|a, b| a.name.cmp(&b.name));
            let value = cs.iter().map(|c| format!("{}={}", c.name, c.regions.join(","))).collect::<Vec<_>>().join(";");
            (key, value)
        })
        .collect()
}

#[cfg(test)]
mod tests;
