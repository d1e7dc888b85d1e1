//! `agentctl` through the built binary against a real server.

mod common;

use common::{TestServer, agentctl, doc, filters, run};
use serde_json::Value;

macro_rules! snapshot {
    ($name:expr, $value:expr) => {
        insta::with_settings!({ filters => filters() }, { insta::assert_snapshot!($name, $value) })
    };
}

const PROVIDER: &str = "  binary: /bin/sh\n";
const AGENT: &str = "  providerRef:\n    name: shell\n  maxInFlight: 3\n";

fn three_docs(max_in_flight: u32) -> String {
    format!(
        "# three objects\n---\n{}---\n{}---\n{}",
        doc("AgentProvider", "shell", PROVIDER),
        doc("Agent", "coder", &format!("  providerRef:\n    name: shell\n  maxInFlight: {max_in_flight}\n")),
        doc("ImplementationSpec", "hello", "  summary: Say hello\n  text: Print hello to stdout.\n"),
    )
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn apply_creates_then_leaves_unchanged_then_configures() {
    let s = TestServer::start();
    let f = s.write("objects.yaml", &three_docs(3));

    let out = s.ctl(&["apply", "-f", &f]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stderr, "");
    snapshot!("apply_created", out.stdout);

    let out = s.ctl(&["apply", "-f", &f]);
    assert_eq!(out.code, 0, "{out:?}");
    snapshot!("apply_unchanged", out.stdout);

    let f = s.write("objects.yaml", &three_docs(7));
    let out = s.ctl(&["apply", "-f", &f]);
    assert_eq!(out.code, 0, "{out:?}");
    snapshot!("apply_configured", out.stdout);

    let agent = json(&s.ctl(&["get", "agent", "coder", "-o", "json"]).stdout);
    assert_eq!(agent["spec"]["maxInFlight"], 7);
    assert_eq!(agent["metadata"]["generation"], 2);
}

#[test]
fn apply_reads_directories_and_stdin_and_prints_stored_objects() {
    let s = TestServer::start();
    s.write("dir/b.yaml", &doc("AgentProvider", "b", PROVIDER));
    s.write("dir/a.json", r#"{"apiVersion":"agentplane.dev/v1alpha1","kind":"AgentProvider","metadata":{"name":"a"},"spec":{"binary":"/bin/a"}}"#);
    s.write("dir/notes.txt", "not a manifest");
    s.write("dir/sub/c.yaml", &doc("AgentProvider", "c", PROVIDER));

    let out = s.ctl(&["apply", "-f", "dir", "-o", "name"]);
    assert_eq!((out.code, out.stdout.as_str()), (0, "agentprovider/a\nagentprovider/b\n"), "{out:?}");
    let out = s.ctl(&["apply", "-R", "-f", "dir"]);
    assert_eq!(
        out.stdout, "agentprovider/a unchanged\nagentprovider/b unchanged\nagentprovider/c created\n",
        "{out:?}"
    );

    let out = s.ctl_stdin(&["apply", "-f", "-", "-o", "json"], &doc("Agent", "from-stdin", AGENT));
    assert_eq!(out.code, 0, "{out:?}");
    let stored = json(&out.stdout);
    assert_eq!(stored["metadata"]["name"], "from-stdin");
    assert!(stored["metadata"]["uid"].is_string(), "{stored}");
}

#[test]
fn a_bad_document_is_reported_and_the_others_are_applied() {
    let s = TestServer::start();
    let big = "x".repeat(200 * 1024);
    let text = format!(
        "{}---\n{}---\n{}",
        doc("AgentProvider", "first", PROVIDER),
        doc("ImplementationSpec", "too-big", &format!("  text: {big}\n")),
        doc("AgentProvider", "third", PROVIDER),
    );
    let f = s.write("mixed.yaml", &text);
    let out = s.ctl(&["apply", "-f", &f]);
    assert_eq!(out.code, 5, "{out:?}");
    assert_eq!(out.stdout, "agentprovider/first created\nagentprovider/third created\n");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.starts_with("error: mixed.yaml document 2: "), "{}", out.stderr);
    assert!(out.stderr.contains("spec.text"), "{}", out.stderr);
    assert!(out.stderr.contains("(TextTooLarge)"), "{}", out.stderr);
    snapshot!("apply_bad_document_stderr", out.stderr);
    assert_eq!(s.ctl(&["get", "implementationspec", "too-big"]).code, 3);
}

#[test]
fn invalid_yaml_names_the_document_and_line() {
    let s = TestServer::start();
    let text = format!(
        "{}---\napiVersion: agentplane.dev/v1alpha1\nkind: AgentProvider\nmetadata: {{name: broken\nspec: {{}}\n---\n{}",
        doc("AgentProvider", "one", PROVIDER),
        doc("AgentProvider", "three", PROVIDER),
    );
    let f = s.write("broken.yaml", &text);
    let out = s.ctl(&["apply", "-f", &f]);
    assert_eq!(out.code, 5, "{out:?}");
    assert_eq!(out.stdout, "agentprovider/one created\nagentprovider/three created\n");
    assert!(out.stderr.starts_with("error: broken.yaml document 2: invalid YAML"), "{}", out.stderr);
    // The broken flow mapping starts on line 10 of the file; the parser gives up on line 11.
    assert!(out.stderr.contains("line 10") && out.stderr.contains("line 11"), "{}", out.stderr);
}

#[test]
fn unknown_kind_and_missing_name_are_invalid_input() {
    let s = TestServer::start();
    let text = format!("{}---\n{}", doc("Pod", "p", "  containers: []\n"), doc("Agent", "", AGENT));
    let f = s.write("odd.yaml", &text);
    let out = s.ctl(&["apply", "-f", &f]);
    assert_eq!(out.code, 5, "{out:?}");
    let lines: Vec<_> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stderr);
    assert!(lines[0].starts_with("error: odd.yaml document 1: kind: unknown kind \"Pod\""), "{}", lines[0]);
    assert!(lines[0].ends_with("(UnknownKind)"), "{}", lines[0]);
    assert!(lines[1].starts_with("error: odd.yaml document 2: metadata.name"), "{}", lines[1]);

    let out = s.ctl(&["get", "pods"]);
    assert_eq!(out.code, 5, "{out:?}");
    assert!(out.stderr.starts_with("error: unknown kind \"pods\""), "{}", out.stderr);
}

#[test]
fn get_prints_table_json_yaml_and_name() {
    let s = TestServer::start();
    let text = format!(
        "{}---\n{}---\n{}---\n{}",
        doc("AgentProvider", "shell", PROVIDER),
        doc("Agent", "coder", AGENT),
        doc("Environment", "prod", "  class: production\n"),
        doc("ImplementationSpec", "long", &format!("  summary: {}\n  text: t\n", "A very long summary ".repeat(5))),
    );
    let f = s.write("objects.yaml", &text);
    assert_eq!(s.ctl(&["apply", "-f", &f]).code, 0);

    let out = s.ctl(&["get", "agents"]);
    assert_eq!(out.code, 0, "{out:?}");
    snapshot!("get_agents_table", out.stdout);
    snapshot!("get_providers_table", s.ctl(&["get", "ap"]).stdout);
    snapshot!("get_environments_table", s.ctl(&["get", "env"]).stdout);
    snapshot!("get_specs_table", s.ctl(&["get", "implementationspecs"]).stdout);
    snapshot!("get_one_table", s.ctl(&["get", "agent", "coder"]).stdout);

    let list = json(&s.ctl(&["get", "agents", "-o", "json"]).stdout);
    assert_eq!(list["kind"], "AgentList");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["items"][0]["spec"]["providerRef"]["name"], "shell");

    let one = json(&s.ctl(&["get", "agent", "coder", "-o", "json"]).stdout);
    assert_eq!((one["kind"].as_str(), one["metadata"]["name"].as_str()), (Some("Agent"), Some("coder")));

    let out = s.ctl(&["get", "environment", "prod", "-o", "yaml"]);
    let yaml: Value = serde_yaml::from_str(&out.stdout).expect("yaml");
    assert_eq!(yaml["spec"]["class"], "production");
    let out = s.ctl(&["get", "environments", "-o", "yaml"]);
    let yaml: Value = serde_yaml::from_str(&out.stdout).expect("yaml");
    assert_eq!(yaml["items"][0]["metadata"]["name"], "prod");

    assert_eq!(s.ctl(&["get", "ap", "-o", "name"]).stdout, "agentprovider/shell\n");
    assert_eq!(s.ctl(&["get", "agent", "coder", "-o", "name"]).stdout, "agent/coder\n");

    let out = s.ctl(&["get", "runs"]);
    assert_eq!((out.code, out.stdout.as_str()), (0, ""), "{out:?}");
    assert_eq!(out.stderr, "No agentruns found in namespace default.\n");
}

#[test]
fn label_selector_filters() {
    let s = TestServer::start();
    let text = "apiVersion: agentplane.dev/v1alpha1\nkind: AgentProvider\nmetadata:\n  name: a\n  labels:\n    team: x\nspec:\n  binary: /a\n---\n"
        .to_string()
        + &doc("AgentProvider", "b", PROVIDER);
    assert_eq!(s.ctl_stdin(&["apply", "-f", "-"], &text).code, 0);
    assert_eq!(s.ctl(&["get", "providers", "-l", "team=x", "-o", "name"]).stdout, "agentprovider/a\n");
}

#[test]
fn missing_objects_exit_3() {
    let s = TestServer::start();
    for args in [["get", "run", "nope"], ["describe", "agent", "nope"], ["delete", "tool", "nope"]] {
        let out = s.ctl(&args);
        assert_eq!(out.code, 3, "{args:?}: {out:?}");
        assert_eq!(out.stdout, "");
        let kind = agentplane_kind(args[1]);
        assert_eq!(out.stderr, format!("error: {kind} \"nope\" not found in namespace default\n"));
    }
}

fn agentplane_kind(short: &str) -> &'static str {
    match short {
        "run" => "agentrun",
        "agent" => "agent",
        _ => "tool",
    }
}

#[test]
fn delete_removes_and_reports() {
    let s = TestServer::start();
    let text = format!("{}---\n{}", doc("AgentProvider", "a", PROVIDER), doc("AgentProvider", "b", PROVIDER));
    assert_eq!(s.ctl_stdin(&["apply", "-f", "-"], &text).code, 0);
    let out = s.ctl(&["delete", "provider", "a", "missing", "b"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(out.stdout, "agentprovider/a deleted\nagentprovider/b deleted\n");
    assert_eq!(out.stderr, "error: agentprovider \"missing\" not found in namespace default\n");
    assert_eq!(s.ctl(&["get", "provider", "a"]).code, 3);
    assert_eq!(s.ctl(&["get", "providers"]).stderr, "No agentproviders found in namespace default.\n");
}

#[test]
fn describe_shows_metadata_spec_and_status() {
    let s = TestServer::start();
    let text = "apiVersion: agentplane.dev/v1alpha1\nkind: Agent\nmetadata:\n  name: coder\n  labels:\n    team: platform\n    tier: gold\n  annotations:\n    owner: alice\nspec:\n  providerRef:\n    name: shell\n  maxInFlight: 2\n  config:\n    greeting: hello\n";
    assert_eq!(s.ctl_stdin(&["apply", "-f", "-"], text).code, 0);
    let out = s.ctl(&["describe", "ag", "coder"]);
    assert_eq!(out.code, 0, "{out:?}");
    snapshot!("describe_agent", out.stdout);
}

#[test]
fn namespaces_with_n_and_all_namespaces() {
    let s = TestServer::start();
    let f = s.write("p.yaml", &doc("AgentProvider", "p", PROVIDER));
    assert_eq!(s.ctl(&["apply", "-f", &f, "-n", "team-a"]).stdout, "agentprovider/p created\n");
    assert_eq!(s.ctl(&["-n", "team-b", "apply", "-f", &f]).stdout, "agentprovider/p created\n");
    assert_eq!(s.ctl(&["apply", "-f", &f]).stdout, "agentprovider/p created\n");

    let out = s.ctl(&["get", "providers", "-n", "team-a", "-o", "json"]);
    assert_eq!(json(&out.stdout)["items"][0]["metadata"]["namespace"], "team-a");
    assert_eq!(s.ctl(&["get", "providers", "-n", "empty"]).stderr, "No agentproviders found in namespace empty.\n");

    let out = s.ctl(&["get", "providers", "-A"]);
    assert_eq!(out.code, 0, "{out:?}");
    snapshot!("get_all_namespaces", out.stdout);

    // A document naming its namespace keeps it, unless -n contradicts it.
    let text = "apiVersion: agentplane.dev/v1alpha1\nkind: AgentProvider\nmetadata:\n  name: q\n  namespace: team-c\nspec:\n  binary: /q\n";
    assert_eq!(s.ctl_stdin(&["apply", "-f", "-"], text).code, 0);
    assert_eq!(s.ctl(&["get", "provider", "q", "-n", "team-c", "-o", "name"]).stdout, "agentprovider/q\n");
    let out = s.ctl_stdin(&["apply", "-f", "-", "-n", "team-a"], text);
    assert_eq!(out.code, 5, "{out:?}");
    assert!(out.stderr.contains("(NamespaceMismatch)"), "{}", out.stderr);
}

#[test]
fn lists_are_fetched_in_chunks_to_the_end() {
    let s = TestServer::start();
    let text: Vec<String> = (1..=5).map(|i| doc("AgentProvider", &format!("p{i}"), PROVIDER)).collect();
    assert_eq!(s.ctl_stdin(&["apply", "-f", "-"], &text.join("---\n")).code, 0);

    let out = s.ctl(&["get", "providers", "--chunk-size", "2", "-o", "name"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.lines().count(), 5, "{}", out.stdout);
    let list = json(&s.ctl(&["get", "providers", "--chunk-size", "2", "-o", "json"]).stdout);
    assert_eq!(list["items"].as_array().map(Vec::len), Some(5));
    assert!(list["metadata"].get("continue").is_none(), "{list}");

    let list = json(&s.ctl(&["get", "providers", "--limit", "2", "-o", "json"]).stdout);
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2));
    assert!(list["metadata"]["continue"].is_string(), "{list}");
}

fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

#[test]
fn an_unreachable_server_exits_6_and_names_the_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = closed_port_url();
    let mut cmd = agentctl(&dir.path().join("none.toml"));
    cmd.args(["get", "runs", "--server", &url]);
    let out = run(cmd, None);
    assert_eq!(out.code, 6, "{out:?}");
    assert_eq!(
        out.stderr,
        format!(
            "error: cannot reach the agentplane server at {url} (connection refused); start it with 'agentctl server' or set --server / AGENTCTL_SERVER\n"
        )
    );

    // `version` still works, and says so.
    let mut cmd = agentctl(&dir.path().join("none.toml"));
    cmd.env("AGENTCTL_SERVER", &url).arg("version");
    let out = run(cmd, None);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, format!("Client: {}\nServer: unreachable ({url})\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn version_reports_both_sides() {
    let s = TestServer::start();
    let out = s.ctl(&["version", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let v = json(&out.stdout);
    assert_eq!(v["clientVersion"], env!("CARGO_PKG_VERSION"));
    assert!(v["serverVersion"]["version"].is_string(), "{v}");
}

#[test]
fn https_urls_are_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = agentctl(&dir.path().join("none.toml"));
    cmd.args(["get", "runs", "--server", "https://agentplane.example"]);
    let out = run(cmd, None);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("without TLS"), "{}", out.stderr);
}

#[test]
fn the_config_file_is_strict_and_used() {
    let s = TestServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");

    std::fs::write(&config, "server = \"http://127.0.0.1:1\"\nnamespce = \"x\"\n").expect("write");
    let mut cmd = agentctl(&config);
    cmd.args(["get", "runs"]);
    let out = run(cmd, None);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("namespce"), "{}", out.stderr);
    assert!(out.stderr.contains(&config.display().to_string()), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);

    std::fs::write(&config, format!("server = \"{}\"\nnamespace = \"from-config\"\ntoken = \"{}\"\n", s.url, s.token))
        .expect("write");
    let mut cmd = agentctl(&config);
    cmd.args(["apply", "-f", "-", "-o", "json"]);
    let out = run(cmd, Some(&doc("AgentProvider", "p", PROVIDER)));
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(json(&out.stdout)["metadata"]["namespace"], "from-config");
    assert!(!out.stdout.contains(&s.token) && !out.stderr.contains(&s.token));

    // A wrong token (the environment overrides the file): exit 12, one line, never echoed.
    let mut cmd = agentctl(&config);
    cmd.env("AGENTCTL_TOKEN", "apt_wrongwrongwrongwrongwrongwrongwrongwrongwro");
    cmd.args(["get", "agentproviders"]);
    let out = run(cmd, None);
    assert_eq!(out.code, 12, "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(!out.stderr.contains("wrongwrong"), "{}", out.stderr);
    // No token at all.
    std::fs::write(&config, format!("server = \"{}\"\n", s.url)).expect("write");
    let mut cmd = agentctl(&config);
    cmd.args(["get", "agentproviders"]);
    let out = run(cmd, None);
    assert_eq!(out.code, 12, "{out:?}");
    assert!(out.stderr.contains("--token"), "{}", out.stderr);
}

#[test]
fn token_commands_create_list_revoke_and_roles_are_enforced() {
    let s = TestServer::start();
    let out =
        s.ctl(&["token", "create", "--name", "ci", "--role", "viewer", "--namespace", "team-a", "--expires", "30d"]);
    assert_eq!(out.code, 0, "{out:?}");
    let tok = out.stdout.trim().to_string();
    assert!(tok.starts_with("apt_") && out.stdout.lines().count() == 1, "{}", out.stdout);
    assert!(out.stderr.contains("shown only once"), "{}", out.stderr);
    assert!(out.stderr.contains("in namespace team-a"), "{}", out.stderr);

    let out = s.ctl(&["token", "list"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("NAME"), "{}", out.stdout);
    let ci = out.stdout.lines().find(|l| l.starts_with("ci ")).expect("ci listed");
    assert!(ci.contains("viewer") && ci.contains("team-a") && ci.contains("active"), "{ci}");
    assert!(!out.stdout.contains(&tok) && !out.stdout.contains(&s.token));

    // The viewer token: reads in its namespace, 403 (exit 13) for writes and other namespaces.
    let file = s.write("a.yaml", &doc("AgentProvider", "p", PROVIDER));
    let out = s.ctl(&["--token", &tok, "get", "agentproviders", "-n", "team-a"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = s.ctl(&["--token", &tok, "apply", "-f", &file, "-n", "team-a"]);
    assert_eq!(out.code, 13, "{out:?}");
    assert!(out.stderr.contains("operator or admin"), "{}", out.stderr);
    let out = s.ctl(&["--token", &tok, "get", "agentproviders", "-n", "team-b"]);
    assert_eq!(out.code, 13, "{out:?}");
    let out = s.ctl(&["--token", &tok, "token", "list"]);
    assert_eq!(out.code, 13, "{out:?}");

    let out = s.ctl(&["token", "revoke", "ci"]);
    assert_eq!((out.code, out.stdout.as_str()), (0, "token/ci revoked\n"), "{out:?}");
    let out = s.ctl(&["--token", &tok, "get", "agentproviders", "-n", "team-a"]);
    assert_eq!(out.code, 12, "revoked: {out:?}");
    let out = s.ctl(&["token", "revoke", "ci"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("no active token"), "{}", out.stderr);
    let out = s.ctl(&["token", "create", "--name", "x", "--role", "root"]);
    assert_eq!(out.code, 5, "{out:?}");
}

#[test]
fn completion_prints_a_script() {
    let dir = tempfile::tempdir().expect("tempdir");
    for shell in ["bash", "zsh", "fish"] {
        let mut cmd = agentctl(&dir.path().join("none.toml"));
        cmd.args(["completion", shell]);
        let out = run(cmd, None);
        assert_eq!(out.code, 0, "{out:?}");
        assert!(out.stdout.contains("agentctl") && out.stdout.contains("describe"), "{shell}");
    }
}

#[test]
fn usage_errors_exit_2_and_help_lists_exit_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = agentctl(&dir.path().join("none.toml"));
    cmd.args(["get"]);
    assert_eq!(run(cmd, None).code, 2);
    let mut cmd = agentctl(&dir.path().join("none.toml"));
    cmd.args(["get", "runs", "-o", "xml"]);
    assert_eq!(run(cmd, None).code, 2);
    let mut cmd = agentctl(&dir.path().join("none.toml"));
    cmd.arg("--help");
    let out = run(cmd, None);
    assert_eq!(out.code, 0);
    assert!(out.stdout.contains("6  server unreachable"), "{}", out.stdout);
}

#[test]
fn a_closed_stdout_exits_quietly() {
    let s = TestServer::start();
    let text: Vec<String> = (1..=3).map(|i| doc("AgentProvider", &format!("p{i}"), PROVIDER)).collect();
    assert_eq!(s.ctl_stdin(&["apply", "-f", "-"], &text.join("---\n")).code, 0);
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let mut cmd = s.cmd(&["get", "providers"]);
    let out = cmd.stdout(writer).stderr(std::process::Stdio::piped()).output().expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

/// `server --dev` writes its admin token into the CLI config, so the tour's commands work with
/// no flag; restarting keeps the same token; other settings of the file are kept.
#[test]
fn server_dev_writes_the_admin_token_into_the_cli_config() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("cfg").join("agentctl.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(&config, "namespace = \"default\"\n").unwrap();
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
    let start = || {
        let mut cmd = agentctl(&config);
        cmd.args(["server", "--dev", "--listen", "127.0.0.1:0", "--no-controller", "--log-format", "text"])
            .arg("--examples-dir")
            .arg(examples)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawn");
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut url = None;
        let mut log = String::new();
        for line in stderr.lines() {
            let line = line.unwrap();
            log.push_str(&line);
            log.push('\n');
            if let Some(i) = line.find("listening on http://") {
                let rest = &line[i + "listening on ".len()..];
                url = Some(rest.split_whitespace().next().unwrap().to_string());
            }
            if line.contains("wrote the admin token into the CLI config") {
                break;
            }
        }
        (child, url.unwrap_or_else(|| panic!("no url in:\n{log}")), log)
    };
    let (mut child, url, log) = start();
    let text = std::fs::read_to_string(&config).unwrap();
    let token = std::fs::read_to_string(dir.path().join("data").join("admin-token")).unwrap();
    assert!(text.contains(&format!("token = \"{}\"", token.trim())), "{text}");
    assert!(text.contains("namespace = \"default\""), "{text}");
    assert!(!log.contains(token.trim()), "the token is never logged");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&config).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let mut cmd = agentctl(&config);
    cmd.args(["--server", &url, "get", "agents", "-o", "name"]);
    let out = run(cmd, None);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.is_empty(), "the examples are loaded");
    let _ = child.kill();
    let _ = child.wait();
    let (mut child, _, _) = start();
    assert_eq!(std::fs::read_to_string(dir.path().join("data").join("admin-token")).unwrap(), token, "reused");
    let _ = child.kill();
    let _ = child.wait();
}
