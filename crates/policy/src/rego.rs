//! Rego Policies, evaluated in-process with `regorus`, with a time limit, bounded inputs and
//! bounded builtins. Any failure is a `deny` (the caller turns `Err` into one).
//!
//! The contract for policy authors is in `docs/governance.md` ("Rego policies").

use std::borrow::Cow;
use std::io;
use std::num::NonZeroU32;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use agentplane_api::OperationType;
use agentplane_api::RegoModule;
use agentplane_api::limits::MAX_REGO_BYTES;
use regorus::utils::limits::{ExecutionTimerConfig, PolicyLengthConfig};
use regorus::{Engine, LimitError, Value};
use serde::{Deserialize, Serialize};

use crate::decision::{Decision, Obligation, ReasonSource, Verdict};
use crate::error::PolicyError;
use crate::input::{DecisionInput, Emergency, EnvironmentContext, RecentCalls, RunUsage, Subject};
use crate::level::TakeoverLevel;

/// The rule every Policy must define.
pub const ENTRYPOINT: &str = "data.agentplane.decision";

/// How many work units regorus does between two looks at the clock.
const TIMER_CHECK_INTERVAL: u32 = 16;
/// At most this many reasons of one answer are kept, each message cut to this many bytes.
const MAX_ANSWER_REASONS: usize = 16;
const MAX_ANSWER_TEXT_BYTES: usize = 1024;

/// The limits on Rego evaluation. What they do and do not enforce is listed in
/// `docs/governance.md` ("Limits").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegoLimits {
    /// Wall-clock budget of one evaluation of one Policy (regorus's cooperative execution timer,
    /// read from a monotonic clock). Exceeding it is an error, so the decision is `deny`.
    pub timeout: Duration,
    /// Largest array `numbers.range` / `numbers.range_step` may build (they are replaced by
    /// bounded versions; the stock ones allocate their whole result in one step, unchecked).
    pub max_range_elements: u64,
    /// Largest `input` document given to policies, as JSON bytes; a larger one is `deny`.
    pub max_input_bytes: usize,
    /// Strings in `input.action.arguments` longer than this are cut to it (at a character
    /// boundary) and `input.action.argumentsTruncated` is `true`.
    pub max_string_bytes: usize,
    /// Largest module source, in bytes (the Policy resource's own limit).
    pub max_module_bytes: usize,
}

impl Default for RegoLimits {
    fn default() -> Self {
        RegoLimits {
            timeout: Duration::from_millis(100),
            max_range_elements: 100_000,
            max_input_bytes: 256 * 1024,
            max_string_bytes: 4096,
            max_module_bytes: MAX_REGO_BYTES,
        }
    }
}

/// A compiled Policy: its modules parsed and prepared once, cloned per evaluation.
#[derive(Clone)]
pub struct RegoPolicy {
    name: String,
    modules: Vec<String>,
    timeout: Duration,
    engine: Engine,
}

impl std::fmt::Debug for RegoPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The engine's own Debug prints every parsed module; the names are enough.
        f.debug_struct("RegoPolicy").field("name", &self.name).field("modules", &self.modules).finish_non_exhaustive()
    }
}

/// What a Policy's `data.agentplane.decision` must evaluate to (or be undefined: no opinion).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyAnswer {
    pub verdict: Verdict,
    #[serde(default)]
    pub reasons: Vec<AnswerReason>,
    #[serde(default)]
    pub obligations: Vec<Obligation>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum AnswerReason {
    Text(String),
    Coded(CodedReason),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CodedReason {
    pub code: String,
    pub message: String,
}

impl AnswerReason {
    /// `(code, message)`, both cut to a bounded length.
    pub(crate) fn parts(&self) -> (Option<String>, String) {
        match self {
            AnswerReason::Text(m) => (None, cut(m, MAX_ANSWER_TEXT_BYTES)),
            AnswerReason::Coded(c) => (Some(cut(&c.code, 64)), cut(&c.message, MAX_ANSWER_TEXT_BYTES)),
        }
    }
}

impl PolicyAnswer {
    pub(crate) fn bounded_reasons(&self) -> impl Iterator<Item = &AnswerReason> {
        self.reasons.iter().take(MAX_ANSWER_REASONS)
    }
}

/// `s` cut to at most `max` bytes at a character boundary.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// `(file, line, column, first error line)` of a regorus error message, which reads
/// `"\n--> file:line:col\n  |\n3 | source\n  |   ^\nerror: message"`.
fn locate(message: &str) -> (Option<String>, Option<u32>, Option<u32>, String) {
    let text = match message.find("error: ") {
        Some(i) => message[i + "error: ".len()..].lines().next().unwrap_or("").trim().to_owned(),
        None => message.trim().lines().next().unwrap_or("").trim().to_owned(),
    };
    let Some(i) = message.find("--> ") else {
        return (None, None, None, text);
    };
    let loc = message[i + 4..].lines().next().unwrap_or("");
    let mut parts = loc.rsplitn(3, ':');
    let col = parts.next().and_then(|c| c.trim().parse().ok());
    let line = parts.next().and_then(|l| l.trim().parse().ok());
    let file = parts.next().map(str::to_owned);
    (file, line, col, text)
}

fn is_time_limit(e: &anyhow::Error) -> bool {
    e.chain().any(|c| matches!(c.downcast_ref::<LimitError>(), Some(LimitError::TimeLimitExceeded { .. })))
        || e.to_string().contains("exceeded time limit")
}

/// Bounded `numbers.range(a, b)` and `numbers.range_step(a, b, step)`.
fn bounded_range(args: &[Value], with_step: bool, max: u64) -> anyhow::Result<Value> {
    let name = if with_step { "numbers.range_step" } else { "numbers.range" };
    let (Some(a), Some(b)) = (args.first(), args.get(1)) else {
        anyhow::bail!("{name}: missing arguments");
    };
    // Non-integers give undefined, as the stock builtin does when not in strict mode.
    let (Ok(a), Ok(b)) = (a.as_i64(), b.as_i64()) else {
        return Ok(Value::Undefined);
    };
    let step = if with_step {
        match args.get(2).map(Value::as_i64) {
            Some(Ok(s)) if s > 0 => s,
            _ => anyhow::bail!("{name}: step must be a positive integer"),
        }
    } else {
        1
    };
    let span = (i128::from(b) - i128::from(a)).unsigned_abs();
    let count = span / step.unsigned_abs() as u128 + 1;
    if count > u128::from(max) {
        anyhow::bail!("{name}: {count} elements exceed the limit of {max}");
    }
    let down = b < a;
    let mut out = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let mut v = i128::from(a);
    for _ in 0..count {
        let n = i64::try_from(v).map_err(|_| anyhow::anyhow!("{name}: out of range"))?;
        out.push(Value::from(n));
        v = if down { v - i128::from(step) } else { v + i128::from(step) };
    }
    Ok(Value::from(out))
}

impl RegoPolicy {
    /// Compile one Policy with the default [`RegoLimits`].
    pub fn compile(name: &str, modules: &[RegoModule]) -> Result<Self, PolicyError> {
        Self::compile_with_limits(name, modules, &RegoLimits::default())
    }

    /// Compile a Policy that has a single module named `main`.
    pub fn compile_source(name: &str, rego: &str) -> Result<Self, PolicyError> {
        Self::compile(name, &[RegoModule { name: "main".to_owned(), rego: rego.to_owned() }])
    }

    /// Compile one Policy: parse every module (an error names the module, the line and the
    /// column), check that `data.agentplane.decision` is defined, then evaluate it once against a
    /// sample input ([`sample_input`]) so that an error the parser cannot see (an unknown
    /// function, an unsafe variable, recursion, an answer of the wrong shape) is reported on apply
    /// rather than on the first call. Running out of time on the sample is not an error here: a
    /// policy that loops is accepted and denies at decision time.
    pub fn compile_with_limits(name: &str, modules: &[RegoModule], limits: &RegoLimits) -> Result<Self, PolicyError> {
        let err = |module: Option<usize>, line, column, message: String| PolicyError::Rego {
            policy: name.to_owned(),
            module: module.and_then(|i| modules.get(i)).map(|m: &RegoModule| m.name.clone()),
            module_index: module,
            line,
            column,
            message,
        };
        if modules.is_empty() {
            return Err(err(None, None, None, "a Policy needs at least one Rego module".to_owned()));
        }
        let mut engine = Engine::new();
        let length = PolicyLengthConfig {
            max_file_bytes: std::num::NonZeroUsize::new(limits.max_module_bytes.max(1))
                .unwrap_or(std::num::NonZeroUsize::MIN),
            ..PolicyLengthConfig::default()
        };
        engine.set_policy_length_config(length);
        engine.set_execution_timer_config(ExecutionTimerConfig {
            limit: limits.timeout,
            check_interval: NonZeroU32::new(TIMER_CHECK_INTERVAL).unwrap_or(NonZeroU32::MIN),
        });
        // `print` would otherwise write to the server's stderr.
        engine.set_gather_prints(true);
        let max = limits.max_range_elements;
        let add = |engine: &mut Engine, path: &str, nargs: u8, with_step: bool| {
            engine
                .add_extension(
                    path.to_owned(),
                    nargs,
                    Box::new(move |args: Vec<Value>| bounded_range(&args, with_step, max)),
                )
                .map_err(|e| err(None, None, None, format!("cannot install bounded {path}: {e}")))
        };
        add(&mut engine, "numbers.range", 2, false)?;
        add(&mut engine, "numbers.range_step", 3, true)?;

        for (i, m) in modules.iter().enumerate() {
            if m.rego.len() > limits.max_module_bytes {
                return Err(err(
                    Some(i),
                    None,
                    None,
                    format!("module is {} bytes; the limit is {}", m.rego.len(), limits.max_module_bytes),
                ));
            }
            let added = catch_unwind(AssertUnwindSafe(|| engine.add_policy(m.name.clone(), m.rego.clone())));
            match added {
                Ok(Ok(_package)) => {}
                Ok(Err(e)) => {
                    let (_, line, column, text) = locate(&format!("{e:#}"));
                    return Err(err(Some(i), line, column, text));
                }
                Err(_) => return Err(err(Some(i), None, None, "the Rego parser failed on this module".to_owned())),
            }
        }

        let prepared = catch_unwind(AssertUnwindSafe(|| engine.compile_with_entrypoint(&ENTRYPOINT.into())));
        match prepared {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                let text = format!("{e:#}");
                if text.contains("not a valid rule path") {
                    return Err(err(
                        None,
                        None,
                        None,
                        format!("no module defines {ENTRYPOINT} (declare `package agentplane` and a rule `decision`)"),
                    ));
                }
                let (file, line, column, text) = locate(&text);
                let module = file.and_then(|f| modules.iter().position(|m| m.name == f));
                return Err(err(module, line, column, text));
            }
            Err(_) => return Err(err(None, None, None, "the Rego compiler failed on this Policy".to_owned())),
        }

        let policy = RegoPolicy {
            name: name.to_owned(),
            modules: modules.iter().map(|m| m.name.clone()).collect(),
            timeout: limits.timeout,
            engine,
        };
        // A dry run: errors the parser cannot see, and answers of the wrong shape.
        let sample = sample_input();
        let doc = rego_input(&sample, &crate::builtin::builtin_decision(&sample), limits)
            .map_err(|e| err(None, None, None, format!("cannot build the sample input: {e}")))?;
        match policy.eval_raw(&doc) {
            Ok(v) => {
                if let Err(e) = parse_answer(v) {
                    return Err(err(None, None, None, format!("on the sample input: {e}")));
                }
            }
            Err(EvalError::Timeout) => {}
            Err(EvalError::Failed { file, line, column, message }) => {
                let module = file.and_then(|f| modules.iter().position(|m| m.name == f));
                return Err(err(module, line, column, format!("on the sample input: {message}")));
            }
            Err(EvalError::Panicked) => {
                return Err(err(None, None, None, "the policy engine failed on the sample input".to_owned()));
            }
        }
        Ok(policy)
    }

    /// Compile a Policy resource (its `metadata.name` names it in reasons).
    pub fn from_resource(policy: &agentplane_api::Policy) -> Result<Self, PolicyError> {
        Self::compile(&policy.metadata.name, &policy.spec.modules)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn eval_raw(&self, input: &Value) -> Result<Value, EvalError> {
        let mut engine = self.engine.clone();
        engine.set_input(input.clone());
        match catch_unwind(AssertUnwindSafe(move || engine.eval_rule(ENTRYPOINT.to_owned()))) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if is_time_limit(&e) => Err(EvalError::Timeout),
            Ok(Err(e)) => {
                let (file, line, column, message) = locate(&format!("{e:#}"));
                Err(EvalError::Failed { file, line, column, message })
            }
            Err(_) => Err(EvalError::Panicked),
        }
    }

    /// Evaluate against a prepared `input` document: `Ok(None)` when the rule is undefined (no
    /// opinion), `Err(message)` on any failure (the caller denies).
    pub(crate) fn evaluate(&self, input: &Value) -> Result<Option<PolicyAnswer>, String> {
        match self.eval_raw(input) {
            Ok(v) => parse_answer(v),
            Err(EvalError::Timeout) => {
                Err(format!("evaluation stopped by the time limit of {} ms", self.timeout.as_millis()))
            }
            Err(EvalError::Failed { file, line, column, message }) => Err(match (file, line, column) {
                (Some(f), Some(l), Some(c)) => format!("module {f:?} line {l} column {c}: {message}"),
                _ => message,
            }),
            Err(EvalError::Panicked) => Err("the policy engine failed (panicked) evaluating this policy".to_owned()),
        }
    }
}

#[derive(Debug)]
enum EvalError {
    Timeout,
    Failed { file: Option<String>, line: Option<u32>, column: Option<u32>, message: String },
    Panicked,
}

fn parse_answer(v: Value) -> Result<Option<PolicyAnswer>, String> {
    if matches!(v, Value::Undefined) {
        return Ok(None);
    }
    let json = serde_json::to_value(&v).map_err(|e| format!("{ENTRYPOINT} is not JSON: {e}"))?;
    serde_json::from_value::<PolicyAnswer>(json).map(Some).map_err(|e| {
        format!(
            "{ENTRYPOINT} must be an object {{\"verdict\": \"allow\"|\"require_approval\"|\"suggest_only\"|\"deny\", \
             \"reasons\": [...], \"obligations\": [...]}}: {e}"
        )
    })
}

/// The input the dry run of [`RegoPolicy::compile_with_limits`] uses: an agent of role
/// `developer` writing a file in a development environment at L3.
pub fn sample_input() -> DecisionInput {
    use crate::input::{Action, EnvironmentContext, RecentCalls, RunUsage, Subject, SubjectKind};
    DecisionInput {
        subject: Subject {
            kind: SubjectKind::Agent,
            id: "default/sample".to_owned(),
            roles: vec!["developer".to_owned()],
        },
        action: Action {
            tool: "workspace.write".to_owned(),
            operation: None,
            operation_type: agentplane_api::OperationType::Write,
            critical: false,
            arguments: serde_json::json!({"path": "README.md", "content": "hello"}),
            rate_limit_per_minute: None,
            redact_fields: Vec::new(),
        },
        resource: Some("file:README.md".to_owned()),
        environment: EnvironmentContext::of_class("dev", agentplane_api::EnvironmentClass::Development),
        level: crate::level::TakeoverLevel::L3,
        emergency: None,
        recent_calls: RecentCalls::default(),
        run_usage: RunUsage::default(),
    }
}

/// Cut long strings in `v` to `max` bytes; returns whether anything was cut.
fn summarize(v: &mut serde_json::Value, max: usize) -> bool {
    match v {
        serde_json::Value::String(s) if s.len() > max => {
            *s = cut(s, max);
            true
        }
        serde_json::Value::Array(a) => a.iter_mut().fold(false, |t, x| summarize(x, max) | t),
        serde_json::Value::Object(o) => o.values_mut().fold(false, |t, x| summarize(x, max) | t),
        _ => false,
    }
}

/// Whether any string in `v` is longer than `max` bytes.
fn has_long_string(v: &serde_json::Value, max: usize) -> bool {
    match v {
        serde_json::Value::String(s) => s.len() > max,
        serde_json::Value::Array(a) => a.iter().any(|x| has_long_string(x, max)),
        serde_json::Value::Object(o) => o.values().any(|x| has_long_string(x, max)),
        _ => false,
    }
}

/// Collects bytes and refuses to go past a limit (so an oversized input is never fully encoded).
struct Capped {
    buf: Vec<u8>,
    max: usize,
}

impl io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.buf.len() + buf.len() > self.max {
            return Err(io::Error::other("too large"));
        }
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The input document, borrowed from the [`DecisionInput`] (field names as documented).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InputDoc<'a> {
    subject: &'a Subject,
    action: ActionDoc<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<&'a str>,
    environment: &'a EnvironmentContext,
    level: TakeoverLevel,
    #[serde(skip_serializing_if = "Option::is_none")]
    emergency: Option<&'a Emergency>,
    recent_calls: &'a RecentCalls,
    run_usage: &'a RunUsage,
    baseline: BaselineDoc<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ActionDoc<'a> {
    tool: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    operation: Option<&'a str>,
    operation_type: OperationType,
    critical: bool,
    arguments: Cow<'a, serde_json::Value>,
    arguments_truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit_per_minute: Option<u32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    redact_fields: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BaselineDoc<'a> {
    verdict: Verdict,
    level: TakeoverLevel,
    reasons: Vec<BaselineReason<'a>>,
    obligations: &'a [Obligation],
}

#[derive(Serialize)]
struct BaselineReason<'a> {
    code: &'a str,
    source: &'a ReasonSource,
    verdict: Verdict,
}

/// The `input` document of policies: the [`DecisionInput`] as JSON (camelCase), with long
/// argument strings cut, plus `baseline`, the decision of the built-in rules and role contracts.
/// Encoded to JSON text (stopping at the size limit) and parsed into a regorus value.
pub(crate) fn rego_input(input: &DecisionInput, baseline: &Decision, limits: &RegoLimits) -> Result<Value, String> {
    let a = &input.action;
    let (arguments, arguments_truncated) = if has_long_string(&a.arguments, limits.max_string_bytes) {
        let mut cut_args = a.arguments.clone();
        summarize(&mut cut_args, limits.max_string_bytes);
        (Cow::Owned(cut_args), true)
    } else {
        (Cow::Borrowed(&a.arguments), false)
    };
    let doc = InputDoc {
        subject: &input.subject,
        action: ActionDoc {
            tool: &a.tool,
            operation: a.operation.as_deref(),
            operation_type: a.operation_type,
            critical: a.critical,
            arguments,
            arguments_truncated,
            rate_limit_per_minute: a.rate_limit_per_minute,
            redact_fields: &a.redact_fields,
        },
        resource: input.resource.as_deref(),
        environment: &input.environment,
        level: input.level,
        emergency: input.emergency.as_ref(),
        recent_calls: &input.recent_calls,
        run_usage: &input.run_usage,
        baseline: BaselineDoc {
            verdict: baseline.verdict,
            level: baseline.level,
            reasons: baseline
                .reasons
                .iter()
                .map(|r| BaselineReason { code: &r.code, source: &r.source, verdict: r.verdict })
                .collect(),
            obligations: &baseline.obligations,
        },
    };
    let mut out = Capped { buf: Vec::with_capacity(1024), max: limits.max_input_bytes };
    if serde_json::to_writer(&mut out, &doc).is_err() {
        return Err(format!("the input for policies is larger than {} bytes", limits.max_input_bytes));
    }
    let text = String::from_utf8(out.buf).map_err(|e| format!("cannot encode the input: {e}"))?;
    Value::from_json_str(&text).map_err(|e| format!("cannot encode the input: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_reads_regorus_messages() {
        let m = "\n--> a:b.rego:3:32\n  |\n3 | x\n  |  ^\nerror: expecting `}` while parsing object";
        assert_eq!(
            locate(m),
            (Some("a:b.rego".to_owned()), Some(3), Some(32), "expecting `}` while parsing object".to_owned())
        );
        assert_eq!(locate("not a valid rule path"), (None, None, None, "not a valid rule path".to_owned()));
    }

    #[test]
    fn bounded_range_matches_the_rego_semantics() {
        let ints = |v: Value| -> Vec<i64> { v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect() };
        assert_eq!(ints(bounded_range(&[Value::from(1i64), Value::from(4i64)], false, 100).unwrap()), vec![1, 2, 3, 4]);
        assert_eq!(ints(bounded_range(&[Value::from(3i64), Value::from(1i64)], false, 100).unwrap()), vec![3, 2, 1]);
        assert_eq!(
            ints(bounded_range(&[Value::from(0i64), Value::from(10i64), Value::from(3i64)], true, 100).unwrap()),
            vec![0, 3, 6, 9]
        );
        assert_eq!(
            ints(bounded_range(&[Value::from(10i64), Value::from(0i64), Value::from(4i64)], true, 100).unwrap()),
            vec![10, 6, 2]
        );
        assert!(bounded_range(&[Value::from(0i64), Value::from(100i64)], false, 100).is_err(), "101 > 100");
        assert!(bounded_range(&[Value::from(0i64), Value::from(99i64)], false, 100).is_ok());
        assert!(bounded_range(&[Value::from(i64::MIN), Value::from(i64::MAX)], false, 100).is_err());
        assert!(bounded_range(&[Value::from(0i64), Value::from(9i64), Value::from(0i64)], true, 100).is_err());
        assert!(matches!(bounded_range(&[Value::from(0.5), Value::from(9i64)], false, 100).unwrap(), Value::Undefined));
    }

    #[test]
    fn the_input_document_is_the_decision_input_plus_truncation_and_baseline() {
        let mut input = sample_input();
        input.emergency = Some(crate::input::Emergency {
            level: TakeoverLevel::L4,
            reason: Some("incident 42".into()),
            authorized_by: None,
        });
        input.action.rate_limit_per_minute = Some(9);
        input.action.redact_fields = vec!["token".into()];
        input.action.operation = Some("put".into());
        let baseline = crate::builtin::builtin_decision(&input);
        let doc = rego_input(&input, &baseline, &RegoLimits::default()).unwrap();
        let got = serde_json::to_value(&doc).unwrap();

        // Independently: the DecisionInput's own JSON, with the two documented additions.
        let mut want = serde_json::to_value(&input).unwrap();
        want["action"]["argumentsTruncated"] = serde_json::Value::Bool(false);
        let reasons: Vec<serde_json::Value> = baseline
            .reasons
            .iter()
            .map(|r| serde_json::json!({"code": r.code, "source": r.source, "verdict": r.verdict}))
            .collect();
        want["baseline"] = serde_json::json!({
            "verdict": baseline.verdict, "level": baseline.level, "reasons": reasons, "obligations": baseline.obligations,
        });
        assert_eq!(got, want);

        // Long strings are cut and flagged; the original input is untouched.
        input.action.arguments = serde_json::json!({"content": "y".repeat(10_000), "n": [1, "z"]});
        let doc = rego_input(&input, &baseline, &RegoLimits::default()).unwrap();
        let got = serde_json::to_value(&doc).unwrap();
        assert_eq!(got["action"]["argumentsTruncated"], serde_json::Value::Bool(true));
        assert_eq!(got["action"]["arguments"]["content"].as_str().unwrap().len(), 4096);
        assert_eq!(got["action"]["arguments"]["n"], serde_json::json!([1, "z"]));
        assert_eq!(input.action.arguments["content"].as_str().unwrap().len(), 10_000);
    }

    #[test]
    fn summarize_cuts_long_strings_at_char_boundaries() {
        let mut v = serde_json::json!({"a": "ééééé", "b": ["short", "x".repeat(10)], "c": 5});
        assert!(summarize(&mut v, 5));
        assert_eq!(v, serde_json::json!({"a": "éé", "b": ["short", "xxxxx"], "c": 5}));
        let mut w = serde_json::json!({"a": "abc"});
        assert!(!summarize(&mut w, 5));
    }
}
