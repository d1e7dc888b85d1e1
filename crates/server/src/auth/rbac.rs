//! Roles, permissions and the route table: which permission, in which scope, each API call
//! needs. [`MATRIX`] is the single source of truth; `docs/rbac.md` shows it and a test checks
//! that the document and this table agree.

use std::fmt;

use axum::http::Method;
use serde::{Deserialize, Serialize};

/// A role. Granted cluster-wide or in one namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Submitter,
    Approver,
    Operator,
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Viewer, Role::Submitter, Role::Approver, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Submitter => "submitter",
            Role::Approver => "approver",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One role in one scope: `namespace: None` is cluster-wide (every namespace, and the
/// cluster-wide endpoints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub role: Role,
    pub namespace: Option<String>,
}

impl Grant {
    /// Parse a role claim: `admin` (cluster-wide) or `team-a:submitter` (in namespace team-a).
    pub fn parse(s: &str) -> Option<Grant> {
        match s.split_once(':') {
            Some((ns, role)) if !ns.is_empty() => {
                Some(Grant { role: Role::parse(role)?, namespace: Some(ns.to_string()) })
            }
            Some(_) => None,
            None => Some(Grant { role: Role::parse(s)?, namespace: None }),
        }
    }
}

/// A permission: a verb on a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Perm {
    /// get, list and watch objects of any kind.
    ResourcesRead,
    /// create, update (apply) and delete objects of every kind except AgentRun.
    ResourcesWrite,
    /// create (submit) an AgentRun, by POST or by PUT (apply).
    RunsCreate,
    /// cancel an AgentRun.
    RunsCancel,
    /// delete an AgentRun.
    RunsDelete,
    /// read a run's log.
    RunsLogs,
    /// read a run's events.
    RunsEvents,
    /// read the ledger: entries, checkpoints, summary, public key (what `ledger verify` needs
    /// besides export).
    LedgerRead,
    /// export the whole ledger.
    LedgerExport,
    /// create, list and revoke API tokens.
    TokensManage,
    /// approve or deny an Approval.
    ApprovalsDecide,
    /// set an agent's earned takeover level or an environment's cap.
    TakeoverSet,
    /// request an emergency elevation (granting it is deciding its approval).
    Elevation,
    /// the server version: any authenticated caller.
    VersionRead,
}

/// One row of the matrix: the permission, its stable id (as in `docs/rbac.md`), the resource
/// and verbs in words, and the roles that hold it.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub perm: Perm,
    pub id: &'static str,
    pub resource: &'static str,
    pub verbs: &'static str,
    pub roles: &'static [Role],
}

use Role::{Admin, Approver, Operator, Submitter, Viewer};

/// The RBAC matrix (role × verb × resource). The server enforces exactly this.
pub const MATRIX: &[Row] = &[
    Row {
        perm: Perm::ResourcesRead,
        id: "resources.read",
        resource: "every kind",
        verbs: "get, list, watch",
        roles: &[Viewer, Submitter, Approver, Operator, Admin],
    },
    Row {
        perm: Perm::ResourcesWrite,
        id: "resources.write",
        resource: "every kind but agentruns",
        verbs: "create, update (apply), delete",
        roles: &[Operator, Admin],
    },
    Row {
        perm: Perm::RunsCreate,
        id: "agentruns.create",
        resource: "agentruns",
        verbs: "create (submit), update (apply)",
        roles: &[Submitter, Operator, Admin],
    },
    Row {
        perm: Perm::RunsCancel,
        id: "agentruns.cancel",
        resource: "agentruns/cancel",
        verbs: "create",
        roles: &[Submitter, Operator, Admin],
    },
    Row {
        perm: Perm::RunsDelete,
        id: "agentruns.delete",
        resource: "agentruns",
        verbs: "delete",
        roles: &[Operator, Admin],
    },
    Row {
        perm: Perm::RunsLogs,
        id: "agentruns.logs",
        resource: "agentruns/logs",
        verbs: "get",
        roles: &[Viewer, Submitter, Approver, Operator, Admin],
    },
    Row {
        perm: Perm::RunsEvents,
        id: "agentruns.events",
        resource: "agentruns/events",
        verbs: "get",
        roles: &[Viewer, Submitter, Approver, Operator, Admin],
    },
    Row {
        perm: Perm::LedgerRead,
        id: "ledger.read",
        resource: "ledger (entries, checkpoints, summary, public-key)",
        verbs: "get",
        roles: &[Operator, Admin],
    },
    Row {
        perm: Perm::LedgerExport,
        id: "ledger.export",
        resource: "ledger/export",
        verbs: "get",
        roles: &[Operator, Admin],
    },
    Row {
        perm: Perm::TokensManage,
        id: "tokens.manage",
        resource: "tokens",
        verbs: "create, list, revoke",
        roles: &[Admin],
    },
    Row {
        perm: Perm::ApprovalsDecide,
        id: "approvals.decide",
        resource: "approvals",
        verbs: "approve, deny",
        roles: &[Approver, Admin],
    },
    Row { perm: Perm::TakeoverSet, id: "takeover.set", resource: "takeover", verbs: "set", roles: &[Operator, Admin] },
    Row {
        perm: Perm::Elevation,
        id: "elevation.manage",
        resource: "elevation",
        verbs: "request",
        roles: &[Operator, Admin],
    },
    Row {
        perm: Perm::VersionRead,
        id: "version.read",
        resource: "version",
        verbs: "get",
        roles: &[Viewer, Submitter, Approver, Operator, Admin],
    },
];

impl Perm {
    pub fn row(self) -> &'static Row {
        // Every Perm has a row (unit test); fall back to the last row rather than panic.
        MATRIX.iter().find(|r| r.perm == self).unwrap_or(&MATRIX[MATRIX.len() - 1])
    }
    pub fn id(self) -> &'static str {
        self.row().id
    }
}

/// Whether `role` holds `perm`.
pub fn allows(role: Role, perm: Perm) -> bool {
    perm.row().roles.contains(&role)
}

/// Where a permission must be granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// A grant in this namespace, or a cluster-wide grant.
    Namespace(String),
    /// A cluster-wide grant.
    Cluster,
}

/// What a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// No credentials needed.
    Public,
    /// An authenticated caller holding `perm` in `scope`. `run` names the AgentRun the call reads
    /// (a run token may read its own run, logs and events).
    Protected { perm: Perm, scope: Scope, run: Option<(String, String)> },
}

/// Whether a set of grants allows `perm` in `scope`.
pub fn granted(grants: &[Grant], perm: Perm, scope: &Scope) -> bool {
    grants.iter().any(|g| {
        allows(g.role, perm)
            && match (scope, &g.namespace) {
                (_, None) => true,
                (Scope::Namespace(ns), Some(gns)) => ns == gns,
                (Scope::Cluster, Some(_)) => false,
            }
    })
}

/// The access a request needs, from its method and path. Paths the API does not serve still
/// need an authenticated caller (they answer 404 only after authentication).
pub fn classify(method: &Method, path: &str, metrics_public: bool) -> Access {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let cluster = |perm| Access::Protected { perm, scope: Scope::Cluster, run: None };
    let in_ns = |perm, ns: &str| Access::Protected { perm, scope: Scope::Namespace(ns.to_string()), run: None };
    let write_perm = |plural: &str, delete: bool| match (plural, delete) {
        ("agentruns", true) => Perm::RunsDelete,
        ("agentruns", false) => Perm::RunsCreate,
        _ => Perm::ResourcesWrite,
    };
    let read = *method == Method::GET || *method == Method::HEAD;
    match segs.as_slice() {
        ["healthz"] | ["readyz"] => Access::Public,
        ["metrics"] if metrics_public => Access::Public,
        ["api", "openapi.json"] => Access::Public,
        ["api", "v1", "version"] => cluster(Perm::VersionRead),
        ["api", "v1", "ledger", "export"] => cluster(Perm::LedgerExport),
        ["api", "v1", "ledger", ..] => cluster(Perm::LedgerRead),
        ["api", "v1", "tokens", ..] => cluster(Perm::TokensManage),
        ["api", "v1", "namespaces", ns, plural] => {
            if read {
                in_ns(Perm::ResourcesRead, ns)
            } else {
                in_ns(write_perm(plural, false), ns)
            }
        }
        ["api", "v1", "namespaces", ns, plural, name] => {
            if read {
                let run = (*plural == "agentruns").then(|| (ns.to_string(), name.to_string()));
                Access::Protected { perm: Perm::ResourcesRead, scope: Scope::Namespace(ns.to_string()), run }
            } else {
                in_ns(write_perm(plural, *method == Method::DELETE), ns)
            }
        }
        ["api", "v1", "namespaces", ns, "approvals", _, _] => {
            in_ns(if read { Perm::ResourcesRead } else { Perm::ApprovalsDecide }, ns)
        }
        ["api", "v1", "namespaces", ns, "environments", _, "elevation"] => {
            in_ns(if read { Perm::ResourcesRead } else { Perm::Elevation }, ns)
        }
        ["api", "v1", "namespaces", ns, "agents" | "environments", _, "takeover"] => {
            in_ns(if read { Perm::ResourcesRead } else { Perm::TakeoverSet }, ns)
        }
        ["api", "v1", "namespaces", ns, "agentruns", name, sub] => {
            let perm = match *sub {
                "cancel" => Perm::RunsCancel,
                "logs" => Perm::RunsLogs,
                "events" => Perm::RunsEvents,
                _ => Perm::ResourcesRead,
            };
            let run = matches!(*sub, "logs" | "events").then(|| (ns.to_string(), name.to_string()));
            Access::Protected { perm, scope: Scope::Namespace(ns.to_string()), run }
        }
        ["api", "v1", _plural] => cluster(Perm::ResourcesRead),
        // Anything else: authenticated, then (most likely) 404.
        _ => cluster(Perm::VersionRead),
    }
}

/// Whether `grants` allow `access`; `VersionRead` (any authenticated caller) passes with any
/// grant in any namespace.
pub fn permits(grants: &[Grant], perm: Perm, scope: &Scope) -> bool {
    if perm == Perm::VersionRead {
        return grants.iter().any(|g| allows(g.role, perm));
    }
    granted(grants, perm, scope)
}

/// The endpoints the API serves, with the permission each needs: `{ns}` and `{name}` are
/// placeholders. The matrix test walks every one of them for every role.
pub const ENDPOINTS: &[(&str, &str, Perm)] = &[
    ("GET", "/api/v1/version", Perm::VersionRead),
    ("GET", "/api/v1/agents", Perm::ResourcesRead),
    ("GET", "/api/v1/agentruns", Perm::ResourcesRead),
    ("GET", "/api/v1/namespaces/{ns}/agents", Perm::ResourcesRead),
    ("GET", "/api/v1/namespaces/{ns}/agents/{name}", Perm::ResourcesRead),
    ("POST", "/api/v1/namespaces/{ns}/agents", Perm::ResourcesWrite),
    ("PUT", "/api/v1/namespaces/{ns}/agents/{name}", Perm::ResourcesWrite),
    ("DELETE", "/api/v1/namespaces/{ns}/agents/{name}", Perm::ResourcesWrite),
    ("GET", "/api/v1/namespaces/{ns}/agentruns", Perm::ResourcesRead),
    ("GET", "/api/v1/namespaces/{ns}/agentruns/{name}", Perm::ResourcesRead),
    ("POST", "/api/v1/namespaces/{ns}/agentruns", Perm::RunsCreate),
    ("PUT", "/api/v1/namespaces/{ns}/agentruns/{name}", Perm::RunsCreate),
    ("DELETE", "/api/v1/namespaces/{ns}/agentruns/{name}", Perm::RunsDelete),
    ("POST", "/api/v1/namespaces/{ns}/agentruns/{name}/cancel", Perm::RunsCancel),
    ("GET", "/api/v1/namespaces/{ns}/agentruns/{name}/logs", Perm::RunsLogs),
    ("GET", "/api/v1/namespaces/{ns}/agentruns/{name}/events", Perm::RunsEvents),
    ("GET", "/api/v1/namespaces/{ns}/takeover?agent={name}", Perm::ResourcesRead),
    ("POST", "/api/v1/namespaces/{ns}/approvals/{name}/approve", Perm::ApprovalsDecide),
    ("POST", "/api/v1/namespaces/{ns}/approvals/{name}/deny", Perm::ApprovalsDecide),
    ("POST", "/api/v1/namespaces/{ns}/environments/{name}/elevation", Perm::Elevation),
    ("POST", "/api/v1/namespaces/{ns}/agents/{name}/takeover", Perm::TakeoverSet),
    ("POST", "/api/v1/namespaces/{ns}/environments/{name}/takeover", Perm::TakeoverSet),
    ("GET", "/api/v1/ledger/public-key", Perm::LedgerRead),
    ("GET", "/api/v1/ledger/entries", Perm::LedgerRead),
    ("GET", "/api/v1/ledger/checkpoints", Perm::LedgerRead),
    ("GET", "/api/v1/ledger/summary", Perm::LedgerRead),
    ("GET", "/api/v1/ledger/export", Perm::LedgerExport),
    ("GET", "/api/v1/tokens", Perm::TokensManage),
    ("POST", "/api/v1/tokens", Perm::TokensManage),
    ("DELETE", "/api/v1/tokens/{name}", Perm::TokensManage),
];

/// Whether the scope of an endpoint is cluster-wide (a namespaced grant never allows it).
pub fn is_cluster_endpoint(path: &str) -> bool {
    !path.contains("/namespaces/") && path != "/api/v1/version"
}

/// Separation of duties: who submitted a run may not decide an approval raised by that run.
/// `approver` and `submitted_by` are actor labels (`user:alice`); a run with no recorded
/// submitter cannot be approved by anyone who might be it, so it is refused too (fail closed).
pub fn may_decide_approval(approver: &str, submitted_by: Option<&str>) -> Result<(), String> {
    match submitted_by {
        None => Err("the run has no recorded submitter; refusing to approve (separation of duties)".into()),
        Some(s) if s == approver => {
            Err(format!("{approver} submitted this run and cannot approve its own approval (separation of duties)"))
        }
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_perm_has_one_row() {
        for r in MATRIX {
            assert_eq!(MATRIX.iter().filter(|o| o.perm == r.perm).count(), 1, "{}", r.id);
            assert_eq!(r.perm.id(), r.id);
        }
    }

    #[test]
    fn classify_agrees_with_the_endpoint_table() {
        for (method, path, perm) in ENDPOINTS {
            let path = path.replace("{ns}", "team-a").replace("{name}", "x");
            let m = Method::from_bytes(method.as_bytes()).unwrap();
            match classify(&m, &path, false) {
                Access::Protected { perm: p, scope, .. } => {
                    assert_eq!(p, *perm, "{method} {path}");
                    if *perm != Perm::VersionRead {
                        assert_eq!(scope == Scope::Cluster, is_cluster_endpoint(&path), "{method} {path}");
                    }
                }
                Access::Public => panic!("{method} {path} is public"),
            }
        }
        assert_eq!(classify(&Method::GET, "/healthz", false), Access::Public);
        assert_eq!(classify(&Method::GET, "/readyz", false), Access::Public);
        assert_eq!(classify(&Method::GET, "/metrics", true), Access::Public);
        assert_ne!(classify(&Method::GET, "/metrics", false), Access::Public);
        assert_ne!(classify(&Method::GET, "/nothing", false), Access::Public);
    }

    #[test]
    fn encoded_or_odd_paths_never_widen_a_grant() {
        // The scope is the raw path segment: an encoded namespace never equals a granted one.
        let g = [Grant { role: Role::Operator, namespace: Some("a".into()) }];
        for path in ["/api/v1/namespaces/%61/agents", "/api/v1/namespaces/a%2Fb/agents", "/api/v1/namespaces//agents"] {
            let Access::Protected { perm, scope, .. } = classify(&Method::POST, path, false) else { panic!("{path}") };
            assert!(!permits(&g, perm, &scope), "{path}");
        }
        let Access::Protected { perm, .. } = classify(&Method::GET, "/api/v1/tokens/", false) else { panic!() };
        assert_eq!(perm, Perm::TokensManage);
        let Access::Protected { perm, .. } = classify(&Method::HEAD, "/api/v1/namespaces/a/agents", false) else {
            panic!()
        };
        assert_eq!(perm, Perm::ResourcesRead);
    }

    #[test]
    fn least_privilege() {
        assert!(!allows(Role::Submitter, Perm::ApprovalsDecide));
        assert!(!allows(Role::Approver, Perm::RunsCreate));
        assert!(!allows(Role::Viewer, Perm::RunsCreate));
        assert!(!allows(Role::Operator, Perm::TokensManage));
        assert!(MATRIX.iter().all(|r| r.roles.contains(&Role::Admin)));
    }

    #[test]
    fn namespaced_grants_stay_in_their_namespace() {
        let g = [Grant { role: Role::Operator, namespace: Some("a".into()) }];
        assert!(granted(&g, Perm::ResourcesWrite, &Scope::Namespace("a".into())));
        assert!(!granted(&g, Perm::ResourcesWrite, &Scope::Namespace("b".into())));
        assert!(!granted(&g, Perm::LedgerRead, &Scope::Cluster));
        let g = [Grant { role: Role::Operator, namespace: None }];
        assert!(granted(&g, Perm::LedgerRead, &Scope::Cluster));
        assert!(granted(&g, Perm::ResourcesWrite, &Scope::Namespace("b".into())));
    }

    #[test]
    fn role_claims_parse() {
        assert_eq!(Grant::parse("admin"), Some(Grant { role: Role::Admin, namespace: None }));
        assert_eq!(Grant::parse("team-a:viewer"), Some(Grant { role: Role::Viewer, namespace: Some("team-a".into()) }));
        assert_eq!(Grant::parse("root"), None);
        assert_eq!(Grant::parse(":admin"), None);
    }

    #[test]
    fn an_approver_cannot_approve_their_own_run() {
        assert!(may_decide_approval("user:alice", Some("user:alice")).is_err());
        assert!(may_decide_approval("user:bob", Some("user:alice")).is_ok());
        assert!(may_decide_approval("user:bob", None).is_err());
    }
}
