//! agentplane's resource model.
//!
//! This crate owns every resource kind (AgentProvider, Agent, ImplementationSpec,
//! ImplementationSource, AgentRun, Memory, Environment, Tool, Approval, Policy), their
//! Kubernetes-shaped envelope, defaults, size limits and validation, and the JSON Schema of each
//! kind. It is pure: no I/O, no async, no clocks. Callers (the server, the CLI, the controller)
//! decode documents with [`decode`], then [`AnyResource::default_and_validate`] to get either a
//! normalised resource or every validation error at once.

pub mod condition;
pub mod error;
pub mod kind;
pub mod limits;
pub mod meta;
pub mod resources;
pub mod schema;
pub mod selector;
mod validate;
pub mod wire;

pub use error::{FieldError, Reason, ValidationErrors};
pub use kind::{Kind, UnknownKind};
pub use meta::{API_GROUP, API_VERSION, DEFAULT_NAMESPACE, ObjectMeta, Reference};
pub use resources::*;
pub use validate::{is_dns1123_label, validate_limits, validate_name};

mod any;
pub use any::{AnyResource, decode};
