//! `{{ path.to.value }}` templates for provider arguments, environment values and input files.
//!
//! Rules (also in `docs/runtime.md`):
//! - `{{` always starts a placeholder and `}}` ends it; whitespace inside the braces is optional.
//!   There is no escape: a literal `{{` cannot be written (a lone `}}` is literal text).
//! - A name is a dot-separated path of segments made of letters, digits, `_` and `-`; a numeric
//!   segment indexes an array.
//! - A path that names nothing is an error naming it, never an empty string.
//! - Strings render as they are, numbers and booleans as JSON, `null` as the empty string,
//!   objects and arrays as compact JSON.

use serde_json::Value;

use crate::error::TemplateError;

/// Renders `template` against `ctx`.
///
/// ```
/// use agentplane_runtime::template::render;
/// let ctx = serde_json::json!({"agentRun": {"name": "r1"}, "parameters": {"n": 3}});
/// assert_eq!(render("run {{agentRun.name}} n={{ parameters.n }}", &ctx).unwrap(), "run r1 n=3");
/// assert!(render("{{ parameters.missing }}", &ctx).is_err());
/// ```
pub fn render(template: &str, ctx: &Value) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    let mut base = 0usize;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(TemplateError::Unterminated { offset: base + start });
        };
        let raw = &after[..end];
        let name = raw.trim();
        if !valid_name(name) {
            return Err(TemplateError::InvalidPlaceholder { text: raw.to_string(), offset: base + start });
        }
        let value = lookup(ctx, name).ok_or_else(|| TemplateError::UnknownVariable { name: name.to_string() })?;
        push_value(&mut out, value);
        let consumed = start + 2 + end + 2;
        base += consumed;
        rest = &rest[consumed..];
    }
    out.push_str(rest);
    Ok(out)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .split('.')
            .all(|seg| !seg.is_empty() && seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
}

fn lookup<'a>(ctx: &'a Value, name: &str) -> Option<&'a Value> {
    name.split('.').try_fold(ctx, |v, seg| match v {
        Value::Object(map) => map.get(seg),
        Value::Array(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

fn push_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => {}
        Value::String(s) => out.push_str(s),
        Value::Bool(_) | Value::Number(_) | Value::Object(_) | Value::Array(_) => out.push_str(&value.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ctx() -> Value {
        json!({
            "agentRun": {"name": "fix-1", "uid": "u-1", "namespace": "team"},
            "agent": {"name": "coder", "config": {"model": "m", "deep": {"list": [1, "two"]}}, "env": {}},
            "implementation": {"text": "do it", "summary": null},
            "parameters": {"branch": "main", "n": 3, "flag": true},
            "memory": null,
            "workspace": {"path": "/w", "repository": null, "ref": null},
            "gateway": {"url": "http://gw"}
        })
    }

    #[test]
    fn renders_table() {
        let cases: &[(&str, &str)] = &[
            ("", ""),
            ("plain text", "plain text"),
            ("{{agentRun.name}}", "fix-1"),
            ("{{ agentRun.name }}", "fix-1"),
            ("{{\tagentRun.uid\n}}", "u-1"),
            ("a{{agentRun.name}}b{{agentRun.namespace}}c", "afix-1bteamc"),
            ("{{parameters.n}}", "3"),
            ("{{parameters.flag}}", "true"),
            ("{{implementation.summary}}", ""),
            ("{{memory}}", ""),
            ("{{agent.config.deep}}", r#"{"list":[1,"two"]}"#),
            ("{{agent.config.deep.list}}", r#"[1,"two"]"#),
            ("{{agent.config.deep.list.1}}", "two"),
            ("}} alone", "}} alone"),
            ("{ single }", "{ single }"),
            ("{{gateway.url}}/mcp", "http://gw/mcp"),
            ("ünïcödé {{agentRun.name}} ✓", "ünïcödé fix-1 ✓"),
        ];
        for (template, want) in cases {
            assert_eq!(render(template, &ctx()).as_deref(), Ok(*want), "template {template:?}");
        }
    }

    #[test]
    fn errors_table() {
        let unknown = |n: &str| Err(TemplateError::UnknownVariable { name: n.to_string() });
        let cases: Vec<(&str, Result<String, TemplateError>)> = vec![
            ("{{parameters.missing}}", unknown("parameters.missing")),
            ("{{ nothing }}", unknown("nothing")),
            ("{{agentRun.name.deeper}}", unknown("agentRun.name.deeper")),
            ("{{agent.config.deep.list.7}}", unknown("agent.config.deep.list.7")),
            ("{{agent.config.deep.list.x}}", unknown("agent.config.deep.list.x")),
            ("ok {{agentRun.name", Err(TemplateError::Unterminated { offset: 3 })),
            ("{{}}", Err(TemplateError::InvalidPlaceholder { text: String::new(), offset: 0 })),
            ("x{{ a..b }}", Err(TemplateError::InvalidPlaceholder { text: " a..b ".into(), offset: 1 })),
            ("{{ a b }}", Err(TemplateError::InvalidPlaceholder { text: " a b ".into(), offset: 0 })),
            ("{{{{x}}}}", Err(TemplateError::InvalidPlaceholder { text: "{{x".into(), offset: 0 })),
        ];
        for (template, want) in cases {
            assert_eq!(render(template, &ctx()), want, "template {template:?}");
        }
    }

    #[test]
    fn error_message_names_the_variable() {
        let err = render("--x={{ parameters.nope }}", &ctx()).unwrap_err();
        assert_eq!(err.to_string(), "unknown template variable `parameters.nope`");
    }
}
