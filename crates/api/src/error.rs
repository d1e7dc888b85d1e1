//! Validation errors: every error carries its field path, a stable reason, and, for size limits,
//! the limit and the actual size.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Stable, CamelCase reason strings. They are part of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    /// The document is not valid YAML/JSON or a field has the wrong type.
    InvalidSyntax,
    UnknownApiVersion,
    UnknownKind,
    UnknownField,
    InvalidType,
    Required,
    InvalidName,
    NameTooLong,
    InvalidLabel,
    TooManyLabels,
    AnnotationsTooLarge,
    TextTooLarge,
    SummaryTooLarge,
    DescriptionTooLarge,
    TooManyAcceptanceCriteria,
    AcceptanceCriterionTooLarge,
    ParametersTooLarge,
    ParameterValueTooLarge,
    InvalidParameterName,
    MissingImplementation,
    AmbiguousImplementation,
    OutOfRange,
    InvalidValue,
    TooManyEntries,
    ValueTooLarge,
    Duplicate,
    NamespaceMismatch,
    MissingAgent,
    MissingProvider,
    MissingMemory,
    MissingEnvironment,
    SecretNotAllowed,
    /// A Policy's Rego module does not parse, does not compile, or fails on the sample input.
    InvalidPolicy,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidSyntax => "InvalidSyntax",
            Reason::UnknownApiVersion => "UnknownApiVersion",
            Reason::UnknownKind => "UnknownKind",
            Reason::UnknownField => "UnknownField",
            Reason::InvalidType => "InvalidType",
            Reason::Required => "Required",
            Reason::InvalidName => "InvalidName",
            Reason::NameTooLong => "NameTooLong",
            Reason::InvalidLabel => "InvalidLabel",
            Reason::TooManyLabels => "TooManyLabels",
            Reason::AnnotationsTooLarge => "AnnotationsTooLarge",
            Reason::TextTooLarge => "TextTooLarge",
            Reason::SummaryTooLarge => "SummaryTooLarge",
            Reason::DescriptionTooLarge => "DescriptionTooLarge",
            Reason::TooManyAcceptanceCriteria => "TooManyAcceptanceCriteria",
            Reason::AcceptanceCriterionTooLarge => "AcceptanceCriterionTooLarge",
            Reason::ParametersTooLarge => "ParametersTooLarge",
            Reason::ParameterValueTooLarge => "ParameterValueTooLarge",
            Reason::InvalidParameterName => "InvalidParameterName",
            Reason::MissingImplementation => "MissingImplementation",
            Reason::AmbiguousImplementation => "AmbiguousImplementation",
            Reason::OutOfRange => "OutOfRange",
            Reason::InvalidValue => "InvalidValue",
            Reason::TooManyEntries => "TooManyEntries",
            Reason::ValueTooLarge => "ValueTooLarge",
            Reason::Duplicate => "Duplicate",
            Reason::NamespaceMismatch => "NamespaceMismatch",
            Reason::MissingAgent => "MissingAgent",
            Reason::MissingProvider => "MissingProvider",
            Reason::MissingMemory => "MissingMemory",
            Reason::MissingEnvironment => "MissingEnvironment",
            Reason::SecretNotAllowed => "SecretNotAllowed",
            Reason::InvalidPolicy => "InvalidPolicy",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldError {
    /// Dotted path, e.g. `spec.parameters.foo` or `spec.acceptanceCriteria[3]`.
    pub field: String,
    pub reason: Reason,
    pub message: String,
    /// The limit that was exceeded (bytes, entries or characters, as the message says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// The actual size that exceeded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual: Option<u64>,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: Reason, message: impl Into<String>) -> Self {
        FieldError { field: field.into(), reason, message: message.into(), limit: None, actual: None }
    }

    pub fn size(field: impl Into<String>, reason: Reason, unit: &str, limit: usize, actual: usize) -> Self {
        let field = field.into();
        FieldError {
            message: format!("{field} is {actual} {unit}; the limit is {limit} {unit}"),
            field,
            reason,
            limit: Some(limit as u64),
            actual: Some(actual as u64),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} ({})", self.field, self.message, self.reason)
    }
}

/// All the errors found in one document. Never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    pub fn one(e: FieldError) -> Self {
        ValidationErrors(vec![e])
    }
    pub fn first(&self) -> Option<&FieldError> {
        self.0.first()
    }
    pub fn has(&self, reason: Reason) -> bool {
        self.0.iter().any(|e| e.reason == reason)
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
