//! Client settings: defaults < config file < environment < flags, resolved once at start.
//!
//! The environment is read through [`Env`] so tests pass a map instead of mutating the process.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cli::ClientArgs;
use crate::error::CliError;

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7300";
pub const DEFAULT_NAMESPACE: &str = agentplane_api::DEFAULT_NAMESPACE;

/// Reads environment variables.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned().filter(|v| !v.is_empty())
    }
}

/// A bearer token. Never printed: `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The config file (TOML). Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub server: Option<String>,
    pub namespace: Option<String>,
    token: Option<String>,
}

impl ConfigFile {
    /// Reads the file; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<ConfigFile, CliError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ConfigFile::default()),
            Err(e) => return Err(CliError::Other(format!("cannot read config file {}: {e}", path.display()))),
        };
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<ConfigFile, CliError> {
        toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| format!(" (line {})", text[..s.start.min(text.len())].matches('\n').count() + 1))
                .unwrap_or_default();
            CliError::Other(format!("config file {}: {}{at}", path.display(), e.message().trim()))
        })
    }
}

/// Settings every client command uses.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: String,
    pub namespace: String,
    /// Whether `-n` was given on the command line (documents may not contradict it then).
    pub namespace_explicit: bool,
    pub token: Option<Token>,
}

impl Settings {
    pub fn resolve(flags: &ClientArgs, env: &dyn Env) -> Result<Settings, CliError> {
        let file = match config_path(flags, env) {
            Some(path) => ConfigFile::load(&path)?,
            None => ConfigFile::default(),
        };
        let server = flags
            .server
            .clone()
            .or_else(|| env.var("AGENTCTL_SERVER"))
            .or(file.server)
            .unwrap_or_else(|| DEFAULT_SERVER.to_string());
        let namespace = flags
            .namespace
            .clone()
            .or_else(|| env.var("AGENTCTL_NAMESPACE"))
            .or(file.namespace)
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        if namespace.is_empty() {
            return Err(CliError::Invalid("the namespace must not be empty".into()));
        }
        Ok(Settings {
            server,
            namespace,
            namespace_explicit: flags.namespace.is_some(),
            token: flags
                .token
                .clone()
                .or_else(|| env.var("AGENTCTL_TOKEN"))
                .or(file.token)
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .map(Token),
        })
    }
}

/// `--config`, then `AGENTCTL_CONFIG`, then `$XDG_CONFIG_HOME/agentctl/config.toml`, then
/// `~/.config/agentctl/config.toml`.
pub fn config_path(flags: &ClientArgs, env: &dyn Env) -> Option<PathBuf> {
    if let Some(p) = &flags.config {
        return Some(p.clone());
    }
    if let Some(p) = env.var("AGENTCTL_CONFIG") {
        return Some(PathBuf::from(p));
    }
    if let Some(x) = env.var("XDG_CONFIG_HOME") {
        return Some(PathBuf::from(x).join("agentctl").join("config.toml"));
    }
    env.var("HOME").map(|h| PathBuf::from(h).join(".config").join("agentctl").join("config.toml"))
}

/// Set `token` in the client config file at `path` (creating it, mode 0600), keeping its other
/// settings. Used by `agentctl server --dev`.
pub fn write_token(path: &Path, token: &str) -> Result<(), CliError> {
    let err = |e: String| CliError::Other(format!("cannot write the client config {}: {e}", path.display()));
    let mut table: toml::Table = match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|e| err(e.to_string()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => toml::Table::new(),
        Err(e) => return Err(err(e.to_string())),
    };
    table.insert("token".into(), toml::Value::String(token.to_string()));
    let text = toml::to_string(&table).map_err(|e| err(e.to_string()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    use std::io::Write;
    let mut f = opts.open(path).map_err(|e| err(e.to_string()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(|e| err(e.to_string()))?;
    }
    f.write_all(text.as_bytes()).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn precedence_is_defaults_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "server = \"http://file:1\"\nnamespace = \"filens\"\ntoken = \"s3cret\"\n").unwrap();
        let flags = ClientArgs { config: Some(path.clone()), ..Default::default() };

        let s = Settings::resolve(&flags, &env(&[])).unwrap();
        assert_eq!((s.server.as_str(), s.namespace.as_str()), ("http://file:1", "filens"));
        assert!(!s.namespace_explicit);
        assert_eq!(s.token.as_ref().map(Token::expose), Some("s3cret"));
        assert!(!format!("{s:?}").contains("s3cret"));

        let e =
            env(&[("AGENTCTL_SERVER", "http://env:2"), ("AGENTCTL_NAMESPACE", "envns"), ("AGENTCTL_TOKEN", "envtok")]);
        let s = Settings::resolve(&flags, &e).unwrap();
        assert_eq!((s.server.as_str(), s.namespace.as_str()), ("http://env:2", "envns"));
        assert_eq!(s.token.as_ref().map(Token::expose), Some("envtok"));

        let flags = ClientArgs {
            server: Some("http://flag:3".into()),
            namespace: Some("flagns".into()),
            token: Some("flagtok".into()),
            ..flags
        };
        let s = Settings::resolve(&flags, &e).unwrap();
        assert_eq!((s.server.as_str(), s.namespace.as_str()), ("http://flag:3", "flagns"));
        assert_eq!(s.token.as_ref().map(Token::expose), Some("flagtok"));
        assert!(s.namespace_explicit);
    }

    #[test]
    fn defaults_apply_without_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = env(&[("AGENTCTL_CONFIG", dir.path().join("missing.toml").to_str().unwrap())]);
        let s = Settings::resolve(&ClientArgs::default(), &e).unwrap();
        assert_eq!((s.server.as_str(), s.namespace.as_str()), (DEFAULT_SERVER, "default"));
        assert!(s.token.is_none());
    }

    #[test]
    fn unknown_key_is_an_error_naming_key_and_file() {
        let err = ConfigFile::parse("server = \"http://x\"\nnamepsace = \"a\"\n", Path::new("/etc/a.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("namepsace"), "{err}");
        assert!(err.contains("/etc/a.toml"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn config_path_order() {
        let flags = ClientArgs::default();
        assert_eq!(
            config_path(&flags, &env(&[("XDG_CONFIG_HOME", "/x"), ("HOME", "/h")])),
            Some(PathBuf::from("/x/agentctl/config.toml"))
        );
        assert_eq!(
            config_path(&flags, &env(&[("HOME", "/h")])),
            Some(PathBuf::from("/h/.config/agentctl/config.toml"))
        );
        assert_eq!(config_path(&flags, &env(&[])), None);
    }
}
