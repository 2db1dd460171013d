//! Token authentication: where the token comes from (a string, a file, an environment
//! variable) and the pulsar crate provider that reads it again whenever the broker asks.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use pulsar::authentication::Authentication;
use pulsar::error::AuthenticationError;

/// Where the JWT for token authentication comes from.
///
/// A file or an environment variable is read on connect and again each time the client has
/// to authenticate (a new broker connection, or the broker's challenge when the token it holds
/// expires), so a token rotated in the file (e.g. a mounted Kubernetes secret) is picked up
/// without a restart. `Debug` never shows a token, only where it comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// The token itself.
    Static(String),
    /// A file holding the token (surrounding whitespace is ignored).
    File(PathBuf),
    /// An environment variable holding the token.
    Env(String),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::Static(_) => f.write_str("Static(<redacted>)"),
            TokenSource::File(p) => f.debug_tuple("File").field(p).finish(),
            TokenSource::Env(v) => f.debug_tuple("Env").field(v).finish(),
        }
    }
}

impl TokenSource {
    /// The current token, or why there is none. Error texts name the file or variable, never
    /// a token.
    pub fn read(&self) -> Result<String, String> {
        let token = match self {
            TokenSource::Static(t) => t.trim().to_string(),
            TokenSource::File(p) => read_file(p)?,
            TokenSource::Env(var) => std::env::var(var)
                .map_err(|e| format!("token environment variable `{var}`: {e}"))?
                .trim()
                .to_string(),
        };
        if token.is_empty() {
            return Err(format!("the token from {} is empty", self.origin()));
        }
        Ok(token)
    }

    /// Where the token comes from, for messages ("the auth token", "file `/x`", ...).
    pub fn origin(&self) -> String {
        match self {
            TokenSource::Static(_) => "the configured auth token".to_string(),
            TokenSource::File(p) => format!("token file `{}`", p.display()),
            TokenSource::Env(v) => format!("token environment variable `{v}`"),
        }
    }
}

fn read_file(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("cannot read token file `{}`: {e}", path.display()))
}

/// The pulsar crate's view of a [`TokenSource`]: method `token`, data read on every call.
pub(crate) struct TokenProvider {
    source: TokenSource,
}

impl TokenProvider {
    pub(crate) fn new(source: TokenSource) -> TokenProvider {
        TokenProvider { source }
    }
}

#[async_trait]
impl Authentication for TokenProvider {
    fn auth_method_name(&self) -> String {
        "token".to_string()
    }

    async fn initialize(&mut self) -> Result<(), AuthenticationError> {
        self.source
            .read()
            .map(|_| ())
            .map_err(AuthenticationError::Custom)
    }

    async fn auth_data(&mut self) -> Result<Vec<u8>, AuthenticationError> {
        self.source
            .read()
            .map(String::into_bytes)
            .map_err(AuthenticationError::Custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_static_token() {
        let s = format!("{:?}", TokenSource::Static("s3cr3t-token".into()));
        assert!(!s.contains("s3cr3t"), "{s}");
        assert!(format!("{:?}", TokenSource::Env("X".into())).contains("X"));
    }

    #[test]
    fn a_file_is_read_again_on_every_call() {
        let dir = std::env::temp_dir().join(format!("backstop-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "first\n").unwrap();
        let mut p = TokenProvider::new(TokenSource::File(path.clone()));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(p.auth_data()).unwrap(), b"first");
        std::fs::write(&path, "second").unwrap();
        assert_eq!(rt.block_on(p.auth_data()).unwrap(), b"second");
        std::fs::write(&path, "  \n").unwrap();
        let err = rt.block_on(p.auth_data()).unwrap_err();
        assert!(format!("{err}").contains("empty"), "{err}");
        std::fs::remove_file(&path).unwrap();
        let err = rt.block_on(p.initialize()).unwrap_err();
        assert!(format!("{err}").contains("cannot read token file"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn env_and_missing_env() {
        let var = format!("BACKSTOP_TEST_TOKEN_{}", std::process::id());
        assert!(TokenSource::Env(var.clone()).read().is_err());
        std::env::set_var(&var, " tok ");
        assert_eq!(TokenSource::Env(var.clone()).read().unwrap(), "tok");
        std::env::remove_var(&var);
    }
}
