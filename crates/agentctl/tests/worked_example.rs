//! Runs the worked example of docs/governance.md ("Worked example: a production run, its
//! approval, an emergency") command by command against a real server with the controller on, and
//! checks every documented output line. If the behaviour or the document changes, this fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestServer;

const DOC: &str = include_str!("../../../docs/governance.md");

/// The fenced block after `marker`.
fn block(marker: &str) -> &'static str {
    let at = DOC.find(marker).unwrap_or_else(|| panic!("{marker} not in governance.md"));
    let rest = &DOC[at..];
    let open = rest.find("```").expect("opening fence");
    let body = &rest[open..];
    let body = &body[body.find('\n').expect("fence line") + 1..];
    &body[..body.find("```").expect("closing fence")]
}

/// Split a command line like a shell would for the quoting the example uses ("..." only).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    assert!(!quoted, "unbalanced quotes in {line:?}");
    if any {
        out.push(cur);
    }
    out
}

/// `*` matches any run of characters; the pattern must match a whole line.
fn glob(pattern: &str, line: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == line;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !line.starts_with(first) || !line.ends_with(last) || line.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &line[first.len()..line.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

struct Step {
    command: String,
    expected: Vec<String>,
    exit: i32,
}

fn steps() -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for line in block("<!-- worked-example -->").lines() {
        if let Some(cmd) = line.strip_prefix("$ ") {
            steps.push(Step { command: cmd.to_string(), expected: Vec::new(), exit: 0 });
        } else if let Some(code) = line.strip_prefix("# exit ") {
            steps.last_mut().expect("output before a command").exit = code.trim().parse().expect("exit code");
        } else if !line.trim().is_empty() {
            steps.last_mut().expect("output before a command").expected.push(line.to_string());
        }
    }
    steps
}

#[test]
fn the_governance_worked_example_runs_as_documented() {
    let s = TestServer::start();
    s.write("governance-example.yaml", block("<!-- worked-example-manifest -->"));
    let steps = steps();
    assert!(steps.len() >= 10, "the example lost its commands: {} found", steps.len());
    let mut ann = String::new();
    let mut elevation = String::new();
    for step in &steps {
        let line = step.command.replace("$ANN", &ann).replace("$ELEVATION", &elevation);
        let args = words(&line);
        assert_eq!(args[0], "agentctl", "{line}");
        let args: Vec<&str> = args[1..].iter().map(String::as_str).collect();
        let out = s.ctl(&args);
        assert_eq!(
            out.code, step.exit,
            "`{}` exited {}, the document says {}: {out:?}",
            step.command, out.code, step.exit
        );
        for want in &step.expected {
            assert!(
                out.stdout.lines().any(|l| glob(want, l.trim_end())),
                "`{}`: no output line matches {want:?}; it printed:\n{}",
                step.command,
                out.stdout
            );
        }
        if args.starts_with(&["token", "create"]) && args.contains(&"ann") {
            ann = out.stdout.trim().to_string();
        }
        if args.first() == Some(&"elevate") && out.code == 0 {
            let printed = out.stdout.trim();
            elevation = printed.strip_prefix("approval/").and_then(|r| r.strip_suffix(" created")).unwrap().to_string();
        }
    }
    assert!(ann.starts_with("apt_") && !elevation.is_empty(), "the example must create ann's token and an elevation");
}

#[test]
fn the_glob_and_the_word_splitter_behave() {
    assert!(glob("apt_*", "apt_abc"));
    assert!(glob("*Succeeded*", "run x Succeeded in 1s"));
    assert!(glob("a*b*c", "aXbYc"));
    assert!(!glob("a*b*c", "aXcYb"));
    assert!(!glob("exact", "exactly"));
    assert_eq!(
        words(r#"run submit --text "roll out v2" --name x"#),
        ["run", "submit", "--text", "roll out v2", "--name", "x"]
    );
}
