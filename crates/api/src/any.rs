//! Decoding an untyped document into a typed resource of any kind.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{FieldError, Reason, ValidationErrors};
use crate::kind::Kind;
use crate::meta::{API_VERSION, DEFAULT_NAMESPACE, ObjectMeta};
use crate::resources::*;
use crate::validate;

macro_rules! any_resource {
    ($($kind:ident),* $(,)?) => {
        /// A typed resource of any kind. Short-lived (decode, validate, serialise), so the size
        /// difference between variants is not worth a box.
        #[derive(Debug, Clone, PartialEq)]
        #[allow(clippy::large_enum_variant)]
        pub enum AnyResource {
            $($kind($kind),)*
        }

        impl AnyResource {
            pub fn kind(&self) -> Kind {
                match self { $(AnyResource::$kind(_) => Kind::$kind,)* }
            }
            pub fn meta(&self) -> &ObjectMeta {
                match self { $(AnyResource::$kind(r) => &r.metadata,)* }
            }
            pub fn meta_mut(&mut self) -> &mut ObjectMeta {
                match self { $(AnyResource::$kind(r) => &mut r.metadata,)* }
            }
            /// The resource as JSON (camelCase, defaults included).
            pub fn to_value(&self) -> Value {
                match self { $(AnyResource::$kind(r) => to_value(r),)* }
            }
            /// The `spec` alone, as JSON.
            pub fn spec_value(&self) -> Value {
                match self { $(AnyResource::$kind(r) => to_value(&r.spec),)* }
            }
            /// The `status` alone, as JSON (`null` when absent).
            pub fn status_value(&self) -> Value {
                match self { $(AnyResource::$kind(r) => to_value(&r.status),)* }
            }
            /// Drops any client-written status.
            pub fn clear_status(&mut self) {
                match self { $(AnyResource::$kind(r) => r.status = None,)* }
            }
            fn decode_kind(kind: Kind, value: Value) -> Result<AnyResource, ValidationErrors> {
                match kind { $(Kind::$kind => Ok(AnyResource::$kind(decode_typed(value)?)),)* }
            }
            fn spec_defaults(&mut self) {
                match self { $(AnyResource::$kind(r) => validate::Defaults::apply(&mut r.spec),)* }
            }
            fn spec_errors(&self, out: &mut Vec<FieldError>) {
                match self { $(AnyResource::$kind(r) => validate::Validate::validate(&r.spec, "spec", out),)* }
            }
        }
    };
}

any_resource!(
    AgentProvider,
    Agent,
    ImplementationSpec,
    ImplementationSource,
    AgentRun,
    Memory,
    Environment,
    Tool,
    Approval,
    Policy,
);

fn to_value<T: Serialize>(v: &T) -> Value {
    // Our types serialise to JSON infallibly: string keys only, no non-finite floats.
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn decode_typed<T: DeserializeOwned>(value: Value) -> Result<T, ValidationErrors> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let (reason, field) = if let Some(rest) = inner.strip_prefix("unknown field `") {
            let name = rest.split('`').next().unwrap_or_default();
            // serde_path_to_error reports the path of the unknown key itself.
            let field = if path.ends_with(name) { path.clone() } else { join(&path, name) };
            (Reason::UnknownField, field)
        } else if inner.starts_with("missing field `") {
            let name = inner.trim_start_matches("missing field `").split('`').next().unwrap_or_default();
            (Reason::Required, join(&path, name))
        } else {
            (Reason::InvalidType, path)
        };
        let field = if field == "." { String::new() } else { field };
        ValidationErrors::one(FieldError::new(field, reason, inner))
    })
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() || path == "." { name.to_string() } else { format!("{path}.{name}") }
}

/// Decode one document (already parsed from YAML or JSON) into a typed resource. Checks
/// `apiVersion` and `kind` first, then every field's type; unknown fields are errors. Does not
/// apply defaults or check limits: call [`AnyResource::default_and_validate`] for that.
pub fn decode(value: Value) -> Result<AnyResource, ValidationErrors> {
    let Value::Object(map) = &value else {
        return Err(ValidationErrors::one(FieldError::new(
            "",
            Reason::InvalidType,
            "a resource must be a mapping with apiVersion, kind, metadata and spec",
        )));
    };
    let mut errs = Vec::new();
    match map.get("apiVersion") {
        Some(Value::String(v)) if v == API_VERSION => {}
        Some(Value::String(v)) => errs.push(FieldError::new(
            "apiVersion",
            Reason::UnknownApiVersion,
            format!("unknown apiVersion {v:?}; use {API_VERSION:?}"),
        )),
        _ => errs.push(FieldError::new(
            "apiVersion",
            Reason::Required,
            format!("apiVersion is required; use {API_VERSION:?}"),
        )),
    }
    let kind = match map.get("kind") {
        Some(Value::String(k)) => match Kind::from_manifest(k) {
            Some(k) => Some(k),
            None => {
                errs.push(FieldError::new(
                    "kind",
                    Reason::UnknownKind,
                    format!(
                        "unknown kind {k:?}; known kinds: {}",
                        Kind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                ));
                None
            }
        },
        _ => {
            errs.push(FieldError::new("kind", Reason::Required, "kind is required"));
            None
        }
    };
    if !errs.is_empty() {
        return Err(ValidationErrors(errs));
    }
    let Some(kind) = kind else { return Err(ValidationErrors(errs)) };
    AnyResource::decode_kind(kind, value)
}

impl AnyResource {
    /// Apply defaults, then check every rule and limit. Returns every error at once.
    pub fn default_and_validate(mut self) -> Result<AnyResource, ValidationErrors> {
        self.apply_defaults();
        let errs = self.validate();
        if errs.is_empty() { Ok(self) } else { Err(ValidationErrors(errs)) }
    }

    /// Fill in server-side defaults (namespace, class levels, `maxInFlight`, …).
    pub fn apply_defaults(&mut self) {
        let meta = self.meta_mut();
        if meta.namespace.as_deref().is_none_or(str::is_empty) {
            meta.namespace = Some(DEFAULT_NAMESPACE.to_string());
        }
        self.spec_defaults();
    }

    /// Every validation error of this resource (empty when valid).
    pub fn validate(&self) -> Vec<FieldError> {
        let mut out = Vec::new();
        validate::validate_meta(self.meta(), &mut out);
        self.spec_errors(&mut out);
        out
    }

    /// `namespace/name` of the resource.
    pub fn key(&self) -> (String, String) {
        let m = self.meta();
        (m.namespace_or_default().to_string(), m.name.clone())
    }
}
