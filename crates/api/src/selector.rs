//! Label selectors (`app=web,tier!=db,env in (dev,test),!legacy,owner`) and field selectors
//! (`status.phase=Running,metadata.name!=x`), parsed once and matched against JSON objects.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector: every requirement must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<LabelRequirement>);

/// A selector that does not parse. The message says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {input:?}: {message}")]
pub struct SelectorError {
    pub input: String,
    pub message: String,
}

fn split_top(s: &str) -> Vec<&str> {
    // Split on commas that are not inside parentheses.
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn key_ok(k: &str) -> bool {
    !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
}

impl LabelSelector {
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let err = |m: &str| SelectorError { input: input.to_string(), message: m.to_string() };
        let mut reqs = Vec::new();
        if input.trim().is_empty() {
            return Ok(LabelSelector(reqs));
        }
        for part in split_top(input) {
            let part = part.trim();
            if part.is_empty() {
                return Err(err("empty requirement"));
            }
            let req = if let Some(k) = part.strip_prefix('!') {
                LabelRequirement::NotExists(k.trim().to_string())
            } else if let Some((k, v)) = part.split_once("!=") {
                LabelRequirement::NotEquals(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = part.split_once("==") {
                LabelRequirement::Equals(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = part.split_once('=') {
                LabelRequirement::Equals(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, rest)) = split_set_op(part, " notin ") {
                LabelRequirement::NotIn(k, parse_set(rest).ok_or_else(|| err("expected (v1,v2) after notin"))?)
            } else if let Some((k, rest)) = split_set_op(part, " in ") {
                LabelRequirement::In(k, parse_set(rest).ok_or_else(|| err("expected (v1,v2) after in"))?)
            } else {
                LabelRequirement::Exists(part.to_string())
            };
            let key = match &req {
                LabelRequirement::Equals(k, _)
                | LabelRequirement::NotEquals(k, _)
                | LabelRequirement::In(k, _)
                | LabelRequirement::NotIn(k, _)
                | LabelRequirement::Exists(k)
                | LabelRequirement::NotExists(k) => k,
            };
            if !key_ok(key) {
                return Err(err(&format!("{key:?} is not a label key")));
            }
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            LabelRequirement::Equals(k, v) => labels.get(k) == Some(v),
            LabelRequirement::NotEquals(k, v) => labels.get(k) != Some(v),
            LabelRequirement::In(k, set) => labels.get(k).is_some_and(|v| set.contains(v)),
            LabelRequirement::NotIn(k, set) => labels.get(k).is_none_or(|v| !set.contains(v)),
            LabelRequirement::Exists(k) => labels.contains_key(k),
            LabelRequirement::NotExists(k) => !labels.contains_key(k),
        })
    }

    /// Match against the `metadata.labels` of a JSON object.
    pub fn matches_object(&self, obj: &Value) -> bool {
        if self.is_empty() {
            return true;
        }
        let labels: BTreeMap<String, String> = obj
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))).collect())
            .unwrap_or_default();
        self.matches(&labels)
    }
}

fn split_set_op(part: &str, op: &str) -> Option<(String, String)> {
    let (k, rest) = part.split_once(op)?;
    Some((k.trim().to_string(), rest.trim().to_string()))
}

fn parse_set(s: String) -> Option<BTreeSet<String>> {
    let inner = s.strip_prefix('(')?.strip_suffix(')')?;
    Some(inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect())
}

/// One requirement of a field selector: a dotted path compared with a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    pub path: String,
    pub value: String,
    pub negate: bool,
}

/// A parsed field selector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(pub Vec<FieldRequirement>);

/// Fields that may be selected on. Anything else is an error, so a typo never silently matches
/// everything.
pub const SELECTABLE_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "status.phase",
    "spec.agentRef.name",
    "spec.providerRef.name",
    "spec.environment",
    "spec.class",
    "spec.idempotencyKey",
];

impl FieldSelector {
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        if input.trim().is_empty() {
            return Ok(FieldSelector(reqs));
        }
        for part in input.split(',') {
            let part = part.trim();
            let (path, value, negate) = if let Some((k, v)) = part.split_once("!=") {
                (k, v, true)
            } else if let Some((k, v)) = part.split_once("==") {
                (k, v, false)
            } else if let Some((k, v)) = part.split_once('=') {
                (k, v, false)
            } else {
                return Err(SelectorError {
                    input: input.to_string(),
                    message: format!("{part:?} must be FIELD=VALUE or FIELD!=VALUE"),
                });
            };
            let path = path.trim();
            if !SELECTABLE_FIELDS.contains(&path) {
                return Err(SelectorError {
                    input: input.to_string(),
                    message: format!(
                        "field {path:?} cannot be selected on; selectable fields: {}",
                        SELECTABLE_FIELDS.join(", ")
                    ),
                });
            }
            reqs.push(FieldRequirement { path: path.to_string(), value: value.trim().to_string(), negate });
        }
        Ok(FieldSelector(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value required for `status.phase`, if the selector pins it (used to push the filter
    /// down into a store's index).
    pub fn phase(&self) -> Option<&str> {
        self.0.iter().find(|r| r.path == "status.phase" && !r.negate).map(|r| r.value.as_str())
    }

    pub fn matches_object(&self, obj: &Value) -> bool {
        self.0.iter().all(|r| {
            let ptr = format!("/{}", r.path.replace('.', "/"));
            let actual = match obj.pointer(&ptr) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(v) => v.to_string(),
            };
            (actual == r.value) != r.negate
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect()
    }

    #[test]
    fn label_selector_semantics() {
        let l = labels(&[("app", "web"), ("env", "dev")]);
        let cases = [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app=db", false),
            ("app!=db", true),
            ("app!=web", false),
            ("env in (dev,test)", true),
            ("env in (prod)", false),
            ("env notin (prod)", true),
            ("env notin (dev)", false),
            ("tier notin (x)", true),
            ("app", true),
            ("tier", false),
            ("!tier", true),
            ("!app", false),
            ("app=web,env in (dev, test),!tier", true),
            ("app=web,env=prod", false),
        ];
        for (sel, want) in cases {
            let s = LabelSelector::parse(sel).unwrap();
            assert_eq!(s.matches(&l), want, "{sel}");
        }
    }

    #[test]
    fn bad_selectors_are_errors() {
        assert!(LabelSelector::parse("app=web,,x").is_err());
        assert!(LabelSelector::parse("a b").is_err());
        assert!(LabelSelector::parse("env in dev").is_err());
        assert!(FieldSelector::parse("status.phase").is_err());
        assert!(FieldSelector::parse("spec.secret=x").is_err());
    }

    #[test]
    fn field_selector_semantics() {
        let o = json!({"metadata": {"name": "a"}, "status": {"phase": "Running"}});
        assert!(FieldSelector::parse("status.phase=Running").unwrap().matches_object(&o));
        assert!(!FieldSelector::parse("status.phase!=Running").unwrap().matches_object(&o));
        assert!(FieldSelector::parse("metadata.name=a,status.phase==Running").unwrap().matches_object(&o));
        assert!(!FieldSelector::parse("spec.environment=prod").unwrap().matches_object(&o));
        assert_eq!(FieldSelector::parse("status.phase=Pending").unwrap().phase(), Some("Pending"));
    }
}
