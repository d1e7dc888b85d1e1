//! Validation rules and defaults of every kind. Each rule pushes a [`FieldError`] naming the
//! field path, a stable [`Reason`], and for size limits the limit and the actual size.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{FieldError, Reason};
use crate::limits::*;
use crate::meta::{ObjectMeta, Reference};
use crate::resources::*;

pub(crate) trait Validate {
    fn validate(&self, path: &str, out: &mut Vec<FieldError>);
}

pub(crate) trait Defaults {
    fn apply(&mut self) {}
}

/// Whether `s` is a DNS-1123 label: 1–63 characters of `[a-z0-9-]`, starting and ending with an
/// alphanumeric character.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Validate a name or namespace as a DNS-1123 label, returning the error if any.
pub fn validate_name(field: &str, s: &str) -> Option<FieldError> {
    if s.is_empty() {
        return Some(FieldError::new(field, Reason::Required, format!("{field} is required")));
    }
    if s.len() > MAX_NAME_LEN {
        return Some(FieldError::size(field, Reason::NameTooLong, "characters", MAX_NAME_LEN, s.len()));
    }
    if !is_dns1123_label(s) {
        return Some(FieldError::new(
            field,
            Reason::InvalidName,
            format!(
                "{s:?} is not a DNS-1123 label: use lowercase letters, digits and '-', starting and ending with a letter or digit"
            ),
        ));
    }
    None
}

fn push(out: &mut Vec<FieldError>, e: Option<FieldError>) {
    if let Some(e) = e {
        out.push(e);
    }
}

fn p(path: &str, field: &str) -> String {
    format!("{path}.{field}")
}

fn max_bytes(out: &mut Vec<FieldError>, field: String, reason: Reason, s: &str, limit: usize) {
    if s.len() > limit {
        out.push(FieldError::size(field, reason, "bytes", limit, s.len()));
    }
}

fn opt_bytes(out: &mut Vec<FieldError>, field: String, s: &Option<String>, limit: usize) {
    if let Some(s) = s {
        max_bytes(out, field, Reason::ValueTooLarge, s, limit);
    }
}

fn required(out: &mut Vec<FieldError>, field: String, s: &str) {
    if s.trim().is_empty() {
        out.push(FieldError::new(
            field.clone(),
            Reason::Required,
            format!("{field} is required and must not be empty"),
        ));
    }
}

fn max_entries<T>(out: &mut Vec<FieldError>, field: String, v: &[T], limit: usize) {
    if v.len() > limit {
        out.push(FieldError::size(field, Reason::TooManyEntries, "entries", limit, v.len()));
    }
}

fn string_list(out: &mut Vec<FieldError>, field: String, v: &[String]) {
    max_entries(out, field.clone(), v, MAX_LIST_ENTRIES);
    for (i, s) in v.iter().enumerate() {
        max_bytes(out, format!("{field}[{i}]"), Reason::ValueTooLarge, s, MAX_SHORT_TEXT_BYTES);
    }
}

fn reference(out: &mut Vec<FieldError>, field: String, r: &Reference) {
    push(out, validate_name(&format!("{field}.name"), &r.name));
}

fn opt_reference(out: &mut Vec<FieldError>, field: String, r: &Option<Reference>) {
    if let Some(r) = r {
        reference(out, field, r);
    }
}

fn level(out: &mut Vec<FieldError>, field: String, l: Option<u8>) {
    if let Some(l) = l
        && !(MIN_TAKEOVER_LEVEL..=MAX_TAKEOVER_LEVEL).contains(&l)
    {
        {
            out.push(FieldError {
                message: format!("{field} is {l}; takeover levels run from {MIN_TAKEOVER_LEVEL} (observe) to {MAX_TAKEOVER_LEVEL} (autonomous)"),
                field,
                reason: Reason::OutOfRange,
                limit: Some(u64::from(MAX_TAKEOVER_LEVEL)),
                actual: Some(u64::from(l)),
            });
        }
    }
}

fn range_u64(out: &mut Vec<FieldError>, field: String, v: Option<u64>, min: u64, max: u64) {
    if let Some(v) = v
        && (v < min || v > max)
    {
        {
            out.push(FieldError {
                message: format!("{field} is {v}; it must be between {min} and {max}"),
                field,
                reason: Reason::OutOfRange,
                limit: Some(max),
                actual: Some(v),
            });
        }
    }
}

fn relative_path(out: &mut Vec<FieldError>, field: String, path: &str) {
    required(out, field.clone(), path);
    if path.starts_with('/') || path.split('/').any(|c| c == "..") {
        out.push(FieldError::new(
            field.clone(),
            Reason::InvalidValue,
            format!("{field} must be a relative path inside the run folder without '..', got {path:?}"),
        ));
    }
}

fn env_name(out: &mut Vec<FieldError>, field: String, name: &str) {
    let ok = !name.is_empty()
        && !name.as_bytes()[0].is_ascii_digit()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok {
        out.push(FieldError::new(
            field,
            Reason::InvalidValue,
            format!("{name:?} is not a valid environment variable name: use letters, digits and '_', not starting with a digit"),
        ));
    }
}

fn label_key_ok(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let name_ok = !name.is_empty()
        && name.len() <= MAX_LABEL_VALUE_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    let prefix_ok =
        prefix.is_none_or(|p| !p.is_empty() && p.len() <= MAX_LABEL_PREFIX_LEN && p.split('.').all(is_dns1123_label));
    name_ok && prefix_ok
}

fn label_value_ok(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= MAX_LABEL_VALUE_LEN
            && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && v.as_bytes()[0].is_ascii_alphanumeric()
            && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric())
}

/// Validate `metadata`: name (or generateName), namespace, labels and annotations.
pub(crate) fn validate_meta(m: &ObjectMeta, out: &mut Vec<FieldError>) {
    if m.name.is_empty() {
        match &m.generate_name {
            Some(g) if !g.is_empty() => {
                if g.len() > MAX_GENERATE_NAME_LEN {
                    out.push(FieldError::size(
                        "metadata.generateName",
                        Reason::NameTooLong,
                        "characters",
                        MAX_GENERATE_NAME_LEN,
                        g.len(),
                    ));
                } else if !g.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    || g.starts_with('-')
                {
                    out.push(FieldError::new(
                        "metadata.generateName",
                        Reason::InvalidName,
                        format!("{g:?} is not a valid name prefix: use lowercase letters, digits and '-'"),
                    ));
                }
            }
            _ => out.push(FieldError::new(
                "metadata.name",
                Reason::Required,
                "metadata.name is required (or metadata.generateName)",
            )),
        }
    } else {
        push(out, validate_name("metadata.name", &m.name));
    }
    if let Some(ns) = &m.namespace {
        push(out, validate_name("metadata.namespace", ns));
    }
    if m.labels.len() > MAX_LABELS {
        out.push(FieldError::size("metadata.labels", Reason::TooManyLabels, "entries", MAX_LABELS, m.labels.len()));
    }
    for (k, v) in &m.labels {
        if !label_key_ok(k) {
            out.push(FieldError::new(
                format!("metadata.labels.{k}"),
                Reason::InvalidLabel,
                format!("label key {k:?} is invalid: an optional DNS prefix and '/', then at most 63 characters of [A-Za-z0-9-_.] starting and ending alphanumeric"),
            ));
        }
        if !label_value_ok(v) {
            out.push(FieldError::new(
                format!("metadata.labels.{k}"),
                Reason::InvalidLabel,
                format!("label value {v:?} is invalid: at most 63 characters of [A-Za-z0-9-_.] starting and ending alphanumeric"),
            ));
        }
    }
    let ann: usize = m.annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if ann > MAX_ANNOTATIONS_BYTES {
        out.push(FieldError::size(
            "metadata.annotations",
            Reason::AnnotationsTooLarge,
            "bytes",
            MAX_ANNOTATIONS_BYTES,
            ann,
        ));
    }
}

// ---------------------------------------------------------------------------------------------

impl Defaults for AgentProviderSpec {}
impl Validate for AgentProviderSpec {
    fn validate(&self, path: &str, out: &mut Vec<FieldError>) {
        required(out, p(path, "binary"), &self.binary);
        max_bytes(out, p(path, "binary"), Reason::ValueTooLarge, &self.binary, MAX_SHORT_TEXT_BYTES);
        opt_bytes(out, p(path, "description"), &self.description, MAX_SHORT_TEXT_BYTES);
        string_list(out, p(path, "argsTemplate"), &self.args_template);
        for (k, v) in &self.env_template {
            env_name(out, format!("{path}.envTemplate.{k}"), k);
            max_bytes(out, format!("{path}.envTemplate.{k}"), Reason::ValueTooLarge, v, MAX_SHORT_TEXT_BYTES);
        }
        max_entries(out, p(path, "inputFiles"), &self.input_files, MAX_LIST_ENTRIES);
        let mut seen = BTreeSet::new();
        for (i, f) in self.input_files.iter().enumerate() {
            let fp = format!("{path}.inputFiles[{i}]");
            relative_path(out, p(&fp, "path"), &f.path);
            max_bytes(out, p(&fp, "content"), Reason::ValueTooLarge, &f.content, MAX_SPEC_TEXT_BYTES);
            if !seen.insert(&f.path) {
                out.push(FieldError::new(
                    p(&fp, "path"),
                    Reason::Duplicate,
                    format!("input file {:?} is listed twice", f.path),
                ));
            }
        }
        max_entries(out, p(path, "outputArtifacts"), &self.output_artifacts, MAX_LIST_ENTRIES);
        let mut names = BTreeSet::new();
        for (i, a) in self.output_artifacts.iter().enumerate() {
            let ap = format!("{path}.outputArtifacts[{i}]");
            push(out, validate_name(&p(&ap, "name"), &a.name));
            relative_path(out, p(&ap, "path"), &a.path);
            if !names.insert(&a.name) {
                out.push(FieldError::new(
                    p(&ap, "name"),
                    Reason::Duplicate,
                    format!("artifact {:?} is listed twice", a.name),
                ));
            }
        }
    }
}

impl Defaults for AgentSpec {
    fn apply(&mut self) {
        if self.max_in_flight.is_none() {
            self.max_in_flight = Some(DEFAULT_AGENT_MAX_IN_FLIGHT);
        }
    }
}
impl Validate for AgentSpec {
    fn validate(&self, path: &str, out: &mut Vec<FieldError>) {
        reference(out, p(path, "providerRef"), &self.provider_ref);
        opt_reference(out, p(path, "memoryRef"), &self.memory_ref);
        opt_bytes(out, p(path, "description"), &self.description, MAX_SHORT_TEXT_BYTES);
        max_entries(out, p(path, "env"), &self.env, MAX_LIST_ENTRIES);
        let mut seen = BTreeSet::new();
        for (i, e) in self.env.iter().enumerate() {
            let ep = format!("{path}.env[{i}]");
            env_name(out, p(&ep, "name"), &e.name);
            if !seen.insert(&e.name) {
                out.push(FieldError::new(
                    p(&ep, "name"),
                    Reason::Duplicate,
                    format!("environment variable {:?} is listed twice", e.name),
                ));
            }
            match (&e.value, &e.value_from) {
                (Some(_), Some(_)) => out.push(FieldError::new(
                    ep.clone(),
                    Reason::InvalidValue,
                    "set either value or valueFrom, not both",
                )),
                (None, None) => out.push(FieldError::new(ep.clone(), Reason::Required, "set value or valueFrom")),
                _ => {}
            }
            opt_bytes(out, p(&ep, "value"), &e.value, MAX_SHORT_TEXT_BYTES);
            if let Some(src) = &e.value_from {
                push(out, validate_name(&format!("{ep}.valueFrom.secretKeyRef.name"), &src.secret_key_ref.name));
                if !self.security.allowed_secrets.contains(&src.secret_key_ref.name) {
                    out.push(FieldError::new(
                        format!("{ep}.valueFrom.secretKeyRef.name"),
                        Reason::InvalidValue,
                        format!("secret {:?} is not in spec.security.allowedSecrets", src.secret_key_ref.name),
                    ));
                }
            }
        }
        range_u64(
            out,
            format!("{path}.defaults.timeoutSeconds"),
            self.defaults.timeout_seconds,
            1,
            MAX_TIMEOUT_SECONDS,
        );
        range_u64(
            out,
            format!("{path}.defaults.retryLimit"),
            self.defaults.retry_limit.map(u64::from),
            0,
            u64::from(MAX_RETRY_LIMIT),
        );
        string_list(out, format!("{path}.security.allowedSecrets"), &self.security.allowed_secrets);
        for (i, s) in self.security.allowed_secrets.iter().enumerate() {
            push(out, validate_name(&format!("{path}.security.allowedSecrets[{i}]"), s));
        }
        string_list(out, format!("{path}.security.allowedServiceAccounts"), &self.security.allowed_service_accounts);
        string_list(out, format!("{path}.tools.allow"), &self.tools.allow);
        string_list(out, format!("{path}.tools.servers"), &self.tools.servers);
        if let Some(r) = &self.role {
            required(out, format!("{path}.role.name"), &r.name);
            string_list(out, format!("{path}.role.allowedTools"), &r.allowed_tools);
            string_list(out, format!("{path}.role.requireApproval"), &r.require_approval);
        }
        range_u64(out, p(path, "maxInFlight"), self.max_in_flight.map(u64::from), 1, u64::from(MAX_IN_FLIGHT));
        validate_limits(&format!("{path}.limits"), &self.limits, out);
    }
}

/// Checks each field of `limits` against its range (`crate::limits::LIMIT_*`); `path` is the
/// field path of the limits object (`spec.limits`).
pub fn validate_limits(path: &str, l: &AgentLimits, out: &mut Vec<FieldError>) {
    {
        for (name, v, (min, max)) in [
            ("cpuSeconds", l.cpu_seconds, LIMIT_CPU_SECONDS),
            ("memoryBytes", l.memory_bytes, LIMIT_MEMORY_BYTES),
            ("addressSpaceBytes", l.address_space_bytes, LIMIT_MEMORY_BYTES),
            ("fileSizeBytes", l.file_size_bytes, LIMIT_FILE_SIZE_BYTES),
            ("openFiles", l.open_files, LIMIT_OPEN_FILES),
            ("processes", l.processes, LIMIT_PROCESSES),
            ("outputQuotaBytes", l.output_quota_bytes, LIMIT_OUTPUT_QUOTA_BYTES),
        ] {
            range_u64(out, format!("{path}.{name}"), v, min, max);
        }
    }
}

impl Defaults for ImplementationSpecSpec {}
impl Validate for ImplementationSpecSpec {
    fn validate(&self, path: &str, out: &mut Vec<FieldError>) {
        required(out, p(path, "text"), &self.text);
        max_bytes(out, p(path, "text"), Reason::TextTooLarge, &self.text, MAX_SPEC_TEXT_BYTES);
        if let Some(s) = &self.summary {
            max_bytes(out, p(path, "summary"), Reason::SummaryTooLarge, s, MAX_SUMMARY_BYTES);
        }
        if let Some(d) = &self.description {
            max_bytes(out, p(path, "description"), Reason::DescriptionTooLarge, d, MAX_SPEC_TEXT_BYTES);
        }
        if self.acceptance_criteria.len() > MAX_ACCEPTANCE_CRITERIA {
            out.push(FieldError::size(
                p(path, "acceptanceCriteria"),
                Reason::TooManyAcceptanceCriteria,
                "entries",
                MAX_ACCEPTANCE_CRITERIA,
                self.acceptance_criteria.len(),
            ));
        }
        for (i, c) in self.acceptance_criteria.iter().enumerate() {
            max_bytes(
                out,
                format!("{path}.acceptanceCriteria[{i}]"),
                Reason::AcceptanceCriterionTooLarge,
                c,
                MAX_ACCEPTANCE_CRITERION_BYTES,
            );
        }
        string_list(out, p(path, "labels"), &self.labels);
        if let Some(s) = &self.source {
            opt_bytes(out, format!("{path}.source.externalId"), &s.external_id, MAX_SHORT_TEXT_BYTES);
            opt_bytes(out, format!("{path}.source.url"), &s.url, MAX_SHORT_TEXT_BYTES);
        }
        range_u64(out, p(path, "riskTier"), self.risk_tier.map(u64::from), 1, 3);
        string_list(out, p(path, "invariants"), &self.invariants);
        if let Some(s) = &self.scope {
            string_list(out, format!("{path}.scope.in"), &s.in_);
            string_list(out, format!("{path}.scope.out"), &s.out);
        }
        if let Some(b) = &self.blast_radius {
            string_list(out, format!("{path}.blastRadius.modules"), &b.modules);
        }
    }
}

impl Defaults for ImplementationSourceSpec {}
impl Validate for ImplementationSourceSpec {
    fn validate(&self, path: &str, out: &mut Vec<FieldError>) {
        if let Some(a) = &self.auth {
            push(out, validate_name(&format!("{path}.auth.secretRef.name"), &a.secret_ref.name));
        }
        if self.webhook.enabled && self.webhook.secret_ref.is_none() {
            out.push(FieldError::new(
                format!("{path}.webhook.secretRef"),
                Reason::Required,
                "a webhook needs secretRef: deliveries are verified with HMAC-SHA256",
            ));
        }
        if let Some(s) = &self.webhook.secret_ref {
            push(out, validate_name(&format!("{path}.webhook.secretRef.name"), &s.name));
        }
        let s = &self.scope;
        if s.repository.is_none() && s.organization.is_none() && s.project.is_none() && s.team.is_none() {
            out.push(FieldError::new(
                p(path, "scope"),
                Reason::Required,
                "scope needs at least one of repository, organization, project or team",
            ));
        }
        string_list(out, format!("{path}.scope.labels"), &s.labels);
        if self.mapping.len() > MAX_LIST_ENTRIES {
            out.push(FieldError::size(
                p(path, "mapping"),
                Reason::TooManyEntries,
                "entries",
                MAX_LIST_ENTRIES,
                self.mapping.len(),
            ));
        }
    }
}

fn parameters(out: &mut Vec<FieldError>, field: String, params: &BTreeMap<String, String>) {
    if params.len() > MAX_PARAMETERS {
        out.push(FieldError::size(field.clone(), Reason::ParametersTooLarge, "entries", MAX_PARAMETERS, params.len()));
    }
    for (k, v) in params {
        let ok = !k.is_empty()
            && k.len() <= MAX_NAME_LEN
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            out.push(FieldError::new(
                format!("{field}.{k}"),
                Reason::InvalidParameterName,
                format!("parameter name {k:?} is invalid: 1-63 characters of [A-Za-z0-9-_.]"),
            ));
        }
        if v.len() > MAX_PARAMETER_VALUE_BYTES {
            out.push(FieldError::size(
                format!("{field}.{k}"),
                Reason::ParameterValueTooLarge,
                "bytes",
                MAX_PARAMETER_VALUE_BYTES,
                v.len(),
            ));
        }
    }
}

fn implementation(
    out: &mut Vec<FieldError>,
    path: &str,
    spec_ref: &Option<Reference>,
    inline: &Option<InlineImplementation>,
) {
    match (spec_ref, inline) {
        (None, None) => out.push(FieldError::new(
            p(path, "implementationSpecRef"),
            Reason::MissingImplementation,
            format!("set exactly one of {path}.implementationSpecRef and {path}.implementation.inline"),
        )),
        (Some(_), Some(_)) => out.push(FieldError::new(
            p(path, "implementation"),
            Reason::AmbiguousImplementation,
            format!("set exactly one of {path}.implementationSpecRef and {path}.implementation.inline, not both"),
        )),
        (Some(r), None) => reference(out, p(path, "implementationSpecRef"), r),
        (None, Some(i)) => i.inline.validate(&format!("{path}.implementation.inline"), out),
    }
}

impl Defaults for AgentRunSpec {}
impl Validate for AgentRunSpec {
    fn validate(&self, path: &str, out: &mut Vec<FieldError>) {
        reference(out, p(path, "agentRef"), &self.agent_ref);
        implementation(out, path, &self.implementation_spec_ref, &self.implementation);
        opt_reference(out, p(path, "memoryRef"), &self.memory_ref);
        parameters(out, p(path, "parameters"), &self.parameters);
        string_list(out, p(path, "secrets"), &self.secrets);
        for (i, s) in self.secrets.iter().enumerate() {
            push(out, validate_name(&format!("{path}.secrets[{i}]"), s));
        }
        if let Some(k) = &self.idempotency_key {
            required(out, p(path, "idempotencyKey"), k);
            max_bytes(out, p(path, "idempotencyKey"), Reason::ValueTooLarge, k, 256);
        }
        if let Some(e) = &self.environment {
            push(out, validate_name(&p(path, "environment"), e));
        }
        level(out, p(path, "takeoverLevel"), self.takeover_level);
        range_u64(out, p(path, "timeoutSeconds"), self.timeout_seconds, 1, MAX_TIMEOUT_SECONDS);
        range_u64(out, p(path, "retryLimit"), self.retry_limit.map(u64::from), 0, u64::from(MAX_RETRY_LIMIT));
        if let Some(w) = &self.workflow {
            let wp = format!("{path}.workflow.steps");
            if w.steps.is_empty() {
                out.push(FieldError::new(wp.clone(), Reason::Required, "a workflow needs at least one step"));
            }
            max_entries(out, wp.clone(), &w.steps, MAX_LIST_ENTRIES);
            let mut names = BTreeSet::new();
            for (i, s) in w.steps.iter().enumerate() {
                let sp = format!("{wp}[{i}]");
                push(out, validate_name(&p(&sp, "name"), &s.name));
                if !names.insert(&s.name) {
                    out.push(FieldError::new(
                        p(&sp, "name"),
                        Reason::Duplicate,
                        format!("step {:?} is listed twice", s.name),
                    ));
                }
                if s.implementation_spec_ref.is_some() || s.implementation.is_some() {
                    implementation(out, &sp, &s.implementation_spec_ref, &s.implementation);
                }
                parameters(out, p(&sp, "parameters"), &s.parameters);
                range_u64(out, p(&sp, "retries"), s.retries.map(u64::from), 0, u64::from(MAX_RETRY_LIMIT));
                range_u64(out, p(&sp, "retryBackoffSeconds"), s.retry_backoff_seconds, 0, 3600);
            }
        }
        if let Some(ws) = &self.workspace {
            required(out, format!("{path}.workspace.repository"), &ws.repository);
            max_bytes(
                out,
                format!("{path}.workspace.repository"),
                Reason::ValueTooLarge,
                &ws.repository,
                MAX_SHORT_TEXT_BYTES,
            );
            opt_bytes(out, format!("{path}.workspace.ref"), &ws.ref_, 256);
        }
        if let Some(w) = &self.workload {
            opt_bytes(out, format!("{path}.workload.image"), &w.image, MAX_SHORT_TEXT_BYTES);
            max_entries(out, format!("{path}.workload.volumes"), &w.volumes, MAX_LIST_ENTRIES);
        }
    }
}

impl Defaults for MemorySpec {}
impl Validate for MemorySpec {
    fn validate(&self, path: &str, out: &mut Vec<FieldError>) {
        if let Some(c) = &self.connection {
            if let Some(s) = &c.secret_ref {
                push(out, validate_name(&format!("{path}.connection.secretRef.name"), &s.name));
            }
            if let Some(pth) = &c.path {
                relative_path(out, format!("{path}.connection.path"), pth);
            }
        }
        if matches!(self.type_, MemoryType::Postgres | MemoryType::Custom)
            && self.connection.as_ref().and_then(|c| c.secret_ref.as_ref()).is_none()
        {
            out.push(FieldError::new(
                format!("{path}.connection.secretRef"),
                Reason::Required,
                "postgres and custom memories need connection.secretRef",
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, c) in self.capabilities.iter().enumerate() {
            if !seen.insert(*c as u8) {
                out.push(FieldError::new(
                    format!("{path}.capabilities[{i}]"),
                    Reason::Duplicate,
                    "capability listed twice",
                ));
            }
        }
    }
}

impl Defaults for EnvironmentSpec {
    fn apply(&mut self) {
        let (max, def) = self.class.default_levels();
        if self.max_takeover_level.is_none() {
            self.max_takeover_level = Some(max);
        }
        if self.default_takeover_level.is_none() {
            self.default_takeover_level = Some(def.min(self.max_takeover_level.unwrap_or(def)));
        }
    }
}
impl Validate for EnvironmentSpec {
    fn validate(&self, path: &str, out: &mut Vec<FieldError>) {
        opt_bytes(out, p(path, "description"), &self.description, MAX_SHORT_TEXT_BYTES);
        level(out, p(path, "maxTakeoverLevel"), self.max_takeover_level);
        level(out, p(path, "defaultTakeoverLevel"), self.default_takeover_level);
        if let (Some(max), Some(def)) = (self.max_takeover_level, self.default_takeover_level)
            && def > max
        {
            {
                out.push(FieldError {
                    field: p(path, "defaultTakeoverLevel"),
                    reason: Reason::OutOfRange,
                    message: format!("defaultTakeoverLevel {def} is above maxTakeoverLevel {max}"),
                    limit: Some(u64::from(max)),
                    actual: Some(u64::from(def)),
                });
            }
        }
        string_list(out, p(path, "approvers"), &self.approvers);
        if let Some(e) = &self.emergency {
            range_u64(out, format!("{path}.emergency.maxMinutes"), e.max_minutes.map(u64::from), 1, 24 * 60);
            range_u64(out, format!("{path}.emergency.maxLevel"), e.max_level.map(u64::from), 1, 5);
            string_list(out, format!("{path}.emergency.authorizers"), &e.authorizers);
            if e.allowed && e.authorizers.is_empty() {
                out.push(FieldError::new(
                    format!("{path}.emergency.authorizers"),
                    Reason::Required,
                    "emergency elevation is allowed but no authorizers are listed",
                ));
            }
        }
    }
}

impl Defaults for ToolSpec {}
impl Validate for ToolSpec {
    fn validate(&self, path: &str, out: &mut Vec<FieldError>) {
        opt_bytes(out, p(path, "description"), &self.description, MAX_SHORT_TEXT_BYTES);
        if let Some(m) = &self.mcp {
            match (&m.url, m.command.is_empty()) {
                (Some(_), false) => out.push(FieldError::new(
                    format!("{path}.mcp"),
                    Reason::InvalidValue,
                    "set either mcp.url or mcp.command, not both",
                )),
                (None, true) => {
                    out.push(FieldError::new(format!("{path}.mcp"), Reason::Required, "set mcp.url or mcp.command"))
                }
                _ => {}
            }
            if let Some(u) = &m.url
                && !(u.starts_with("http://") || u.starts_with("https://"))
            {
                {
                    out.push(FieldError::new(
                        format!("{path}.mcp.url"),
                        Reason::InvalidValue,
                        format!("{u:?} must be an http:// or https:// URL"),
                    ));
                }
            }
            string_list(out, format!("{path}.mcp.command"), &m.command);
        }
        max_entries(out, p(path, "operations"), &self.operations, MAX_LIST_ENTRIES);
        let mut seen = BTreeSet::new();
        for (i, o) in self.operations.iter().enumerate() {
            required(out, format!("{path}.operations[{i}].name"), &o.name);
            if !seen.insert(&o.name) {
                out.push(FieldError::new(
                    format!("{path}.operations[{i}].name"),
                    Reason::Duplicate,
                    format!("operation {:?} is listed twice", o.name),
                ));
            }
        }
        if let Some(r) = &self.rate_limit {
            range_u64(
                out,
                format!("{path}.rateLimit.requestsPerMinute"),
                Some(u64::from(r.requests_per_minute)),
                1,
                1_000_000,
            );
        }
        if let Some(r) = &self.redact {
            string_list(out, format!("{path}.redact.fields"), &r.fields);
            string_list(out, format!("{path}.redact.patterns"), &r.patterns);
        }
    }
}

impl Defaults for ApprovalSpec {}
impl Validate for ApprovalSpec {
    fn validate(&self, path: &str, out: &mut Vec<FieldError>) {
        required(out, p(path, "subject"), &self.subject);
        max_bytes(out, p(path, "subject"), Reason::ValueTooLarge, &self.subject, 256);
        opt_reference(out, p(path, "run"), &self.run);
        required(out, format!("{path}.operation.tool"), &self.operation.tool);
        opt_bytes(
            out,
            format!("{path}.operation.argumentsSummary"),
            &self.operation.arguments_summary,
            MAX_SHORT_TEXT_BYTES,
        );
        required(out, p(path, "reason"), &self.reason);
        max_bytes(out, p(path, "reason"), Reason::ValueTooLarge, &self.reason, MAX_SHORT_TEXT_BYTES);
        if let Some(e) = &self.environment {
            push(out, validate_name(&p(path, "environment"), e));
        }
        string_list(out, p(path, "approvers"), &self.approvers);
    }
}

impl Defaults for PolicySpec {}
impl Validate for PolicySpec {
    fn validate(&self, path: &str, out: &mut Vec<FieldError>) {
        opt_bytes(out, p(path, "description"), &self.description, MAX_SHORT_TEXT_BYTES);
        if self.modules.is_empty() {
            out.push(FieldError::new(p(path, "modules"), Reason::Required, "a Policy needs at least one Rego module"));
        }
        max_entries(out, p(path, "modules"), &self.modules, 64);
        let mut seen = BTreeSet::new();
        for (i, m) in self.modules.iter().enumerate() {
            let mp = format!("{path}.modules[{i}]");
            required(out, p(&mp, "name"), &m.name);
            if !seen.insert(&m.name) {
                out.push(FieldError::new(
                    p(&mp, "name"),
                    Reason::Duplicate,
                    format!("module {:?} is listed twice", m.name),
                ));
            }
            required(out, p(&mp, "rego"), &m.rego);
            max_bytes(out, p(&mp, "rego"), Reason::ValueTooLarge, &m.rego, MAX_REGO_BYTES);
            if !m.rego.trim().is_empty() && !m.rego.lines().any(|l| l.trim_start().starts_with("package ")) {
                out.push(FieldError::new(
                    p(&mp, "rego"),
                    Reason::InvalidValue,
                    "a Rego module must start with a package declaration",
                ));
            }
        }
    }
}
