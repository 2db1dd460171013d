//! OAuth2 client-credentials authentication (Pulsar's `AuthenticationOAuth2`): the client
//! fetches an access token from the identity provider's token endpoint and sends it to the
//! broker as a token. The pulsar crate does the flow (OpenID discovery of the token endpoint,
//! token cache, refresh at 90 % of its lifetime); this module holds the settings, checks them
//! when the client is built, and hands them to the crate when the `oauth2` feature is on.

use std::path::PathBuf;

use crate::options::ConfigError;

/// Where and how to obtain OAuth2 access tokens (client credentials grant).
///
/// The credentials file is the JSON key file the Java and Python clients read
/// (`{"client_id": "...", "client_secret": "..."}`); it is read when the client connects and
/// its secret never reaches `Debug` output or logs (only the file's path is shown).
///
/// Needs the `oauth2` feature of `backstop-pulsar` (about 100 more crates: `openidconnect`,
/// `oauth2`, `reqwest` on rustls; no OpenSSL). Without it, options holding an `OAuth2` are
/// rejected when the client is built with [`ConfigError::OAuth2`].
///
/// ```
/// use backstop_pulsar::{OAuth2, PulsarOptions};
///
/// let options = PulsarOptions::default().with_oauth2(
///     OAuth2::new("https://auth.example.com/", "/etc/pulsar/credentials.json")
///         .with_audience("urn:pulsar:cluster"),
/// );
/// assert!(format!("{options:?}").contains("credentials.json"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OAuth2 {
    /// The identity provider's issuer URL (`http://` or `https://`); its token endpoint is
    /// found through `<issuer>/.well-known/openid-configuration`.
    pub issuer_url: String,
    /// The JSON key file holding `client_id` and `client_secret`.
    pub credentials_file: PathBuf,
    /// The `audience` asked for, if the provider wants one.
    pub audience: Option<String>,
    /// The `scope` asked for, if any.
    pub scope: Option<String>,
}

impl OAuth2 {
    /// Client credentials from `credentials_file`, tokens from the provider at `issuer_url`.
    pub fn new(issuer_url: impl Into<String>, credentials_file: impl Into<PathBuf>) -> OAuth2 {
        OAuth2 {
            issuer_url: issuer_url.into(),
            credentials_file: credentials_file.into(),
            audience: None,
            scope: None,
        }
    }

    /// Sets [`OAuth2::audience`].
    pub fn with_audience(mut self, audience: impl Into<String>) -> OAuth2 {
        self.audience = Some(audience.into());
        self
    }

    /// Sets [`OAuth2::scope`].
    pub fn with_scope(mut self, scope: impl Into<String>) -> OAuth2 {
        self.scope = Some(scope.into());
        self
    }

    /// Checks what can be checked without the network: the feature is compiled in, the issuer
    /// is an http(s) URL, the credentials file is readable JSON with a non-empty `client_id`
    /// and `client_secret`. Error texts name the file, never the secret.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad<T>(m: String) -> Result<T, ConfigError> {
            Err(ConfigError::OAuth2(m))
        }
        if !cfg!(feature = "oauth2") {
            return bad("backstop-pulsar was built without its `oauth2` feature".into());
        }
        match url::Url::parse(&self.issuer_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            Ok(_) => {
                return bad(format!(
                    "issuer `{}` is not an http(s) URL",
                    self.issuer_url
                ))
            }
            Err(e) => return bad(format!("issuer `{}`: {e}", self.issuer_url)),
        }
        let file = self.credentials_file.display();
        let text = std::fs::read_to_string(&self.credentials_file)
            .or_else(|e| bad(format!("cannot read credentials file `{file}`: {e}")))?;
        let json: serde_json::Value = serde_json::from_str(&text).or_else(|_| {
            bad(format!(
                "credentials file `{file}` is not JSON (want client_id and client_secret)"
            ))
        })?;
        for field in ["client_id", "client_secret"] {
            if json
                .get(field)
                .and_then(|v| v.as_str())
                .is_none_or(|s| s.trim().is_empty())
            {
                return bad(format!("credentials file `{file}` has no `{field}`"));
            }
        }
        Ok(())
    }

    /// The pulsar crate's provider for these settings (call [`OAuth2::validate`] first).
    #[cfg(feature = "oauth2")]
    pub(crate) fn provider(&self) -> Box<dyn pulsar::authentication::Authentication> {
        use pulsar::authentication::oauth2::{OAuth2Authentication, OAuth2Params};
        let path = std::fs::canonicalize(&self.credentials_file)
            .unwrap_or_else(|_| self.credentials_file.clone());
        let credentials_url = url::Url::from_file_path(&path)
            .map(String::from)
            .unwrap_or_else(|_| format!("file://{}", path.display()));
        OAuth2Authentication::client_credentials(OAuth2Params {
            issuer_url: self.issuer_url.clone(),
            credentials_url,
            audience: self.audience.clone(),
            scope: self.scope.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("backstop-oauth2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn err(o: &OAuth2) -> String {
        match o.validate() {
            Err(ConfigError::OAuth2(m)) => m,
            other => panic!("expected an OAuth2 error, got {other:?}"),
        }
    }

    #[cfg(feature = "oauth2")]
    #[test]
    fn validation_names_the_problem_never_the_secret() {
        let good = file(
            "good.json",
            r#"{"client_id":"svc","client_secret":"s3cr3t"}"#,
        );
        assert!(OAuth2::new("http://127.0.0.1:1/", &good).validate().is_ok());
        let m = err(&OAuth2::new("ftp://x/", &good));
        assert!(m.contains("not an http(s) URL"), "{m}");
        let m = err(&OAuth2::new("not a url", &good));
        assert!(m.contains("issuer"), "{m}");
        let m = err(&OAuth2::new("https://a/", "/nonexistent/creds.json"));
        assert!(m.contains("cannot read credentials file"), "{m}");
        let no_secret = file("nosecret.json", r#"{"client_id":"svc"}"#);
        let m = err(&OAuth2::new("https://a/", &no_secret));
        assert!(m.contains("client_secret"), "{m}");
        let garbage = file("garbage.json", "client_secret=s3cr3t");
        let m = err(&OAuth2::new("https://a/", &garbage));
        assert!(m.contains("not JSON") && !m.contains("s3cr3t"), "{m}");
    }

    #[cfg(not(feature = "oauth2"))]
    #[test]
    fn without_the_feature_oauth2_is_a_config_error() {
        let good = file(
            "good.json",
            r#"{"client_id":"svc","client_secret":"s3cr3t"}"#,
        );
        let m = err(&OAuth2::new("http://127.0.0.1:1/", &good));
        assert!(m.contains("`oauth2` feature"), "{m}");
    }
}
