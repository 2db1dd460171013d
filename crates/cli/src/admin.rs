//! The few admin REST API calls the tool needs, over plain HTTP/1.0 (`http://` admin URLs).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::topic::Topic;
use crate::CliError;

/// Longest one admin call may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A broker's admin API.
#[derive(Clone)]
pub struct Admin {
    url: String,
    hostport: String,
    token: Option<String>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the token
        f.debug_struct("Admin").field("url", &self.url).finish()
    }
}

/// The position of a topic's last message (`lastMessageId`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// Ledger.
    pub ledger: u64,
    /// Entry in the ledger.
    pub entry: u64,
}

impl Admin {
    /// An admin client for `url` (`http://host:port`); `token` is sent as a bearer token.
    pub fn new(url: &str, token: Option<String>) -> Result<Admin, CliError> {
        let hostport = url
            .strip_prefix("http://")
            .ok_or_else(|| {
                CliError::Invalid(format!("admin URL `{url}`: only http:// is supported"))
            })?
            .trim_end_matches('/')
            .to_string();
        if hostport.is_empty() || hostport.contains('/') {
            return Err(CliError::Invalid(format!(
                "admin URL `{url}`: expected http://host:port"
            )));
        }
        Ok(Admin {
            url: url.to_string(),
            hostport,
            token,
        })
    }

    fn err(&self, message: impl Into<String>) -> CliError {
        CliError::Admin {
            url: self.url.clone(),
            message: message.into(),
        }
    }

    /// One request; the status and body.
    pub async fn request(&self, method: &str, path: &str) -> Result<(u16, String), CliError> {
        let call = async {
            let mut s = TcpStream::connect(&self.hostport)
                .await
                .map_err(|e| self.err(format!("cannot connect: {e}")))?;
            let auth = match &self.token {
                Some(t) => format!("Authorization: Bearer {t}\r\n"),
                None => String::new(),
            };
            let req = format!(
                "{method} {path} HTTP/1.0\r\nHost: {}\r\nAccept: application/json\r\n{auth}Content-Length: 0\r\n\r\n",
                self.hostport
            );
            s.write_all(req.as_bytes())
                .await
                .map_err(|e| self.err(format!("{method} {path}: {e}")))?;
            let mut raw = Vec::new();
            s.read_to_end(&mut raw)
                .await
                .map_err(|e| self.err(format!("{method} {path}: {e}")))?;
            let text = String::from_utf8_lossy(&raw);
            let (head, body) = text
                .split_once("\r\n\r\n")
                .ok_or_else(|| self.err(format!("{method} {path}: malformed answer")))?;
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<u16>().ok())
                .ok_or_else(|| self.err(format!("{method} {path}: no status in answer")))?;
            Ok((status, body.to_string()))
        };
        tokio::time::timeout(TIMEOUT, call)
            .await
            .map_err(|_| self.err(format!("{method} {path}: no answer within {TIMEOUT:?}")))?
    }

    async fn get_json(&self, path: &str) -> Result<Option<serde_json::Value>, CliError> {
        let (status, body) = self.request("GET", path).await?;
        match status {
            200 => serde_json::from_str(&body)
                .map(Some)
                .map_err(|e| self.err(format!("GET {path}: not JSON ({e})"))),
            404 => Ok(None),
            401 | 403 => Err(self.err(format!("GET {path}: not authorized ({status})"))),
            _ => Err(self.err(format!("GET {path}: HTTP {status}: {}", body.trim()))),
        }
    }

    /// Fails with [`CliError::MissingTopic`] unless the topic (or a partitioned topic of that
    /// name) exists. Also checks that the admin API answers at all.
    pub async fn require_topic(&self, topic: &Topic) -> Result<(), CliError> {
        let partitions = self
            .get_json(&format!("/admin/v2/persistent/{}/partitions", topic.path))
            .await?;
        if partitions
            .as_ref()
            .and_then(|p| p["partitions"].as_u64())
            .unwrap_or(0)
            > 0
        {
            return Ok(());
        }
        match self
            .get_json(&format!("/admin/v2/persistent/{}/stats", topic.path))
            .await?
        {
            Some(_) => Ok(()),
            None => Err(CliError::MissingTopic(topic.full.clone())),
        }
    }

    /// The position of the topic's last message, if it has one (non-partitioned topics only).
    pub async fn last_position(&self, topic: &Topic) -> Result<Option<Position>, CliError> {
        let v = self
            .get_json(&format!(
                "/admin/v2/persistent/{}/lastMessageId",
                topic.path
            ))
            .await;
        let Ok(Some(v)) = v else { return Ok(None) };
        match (v["ledgerId"].as_i64(), v["entryId"].as_i64()) {
            (Some(l), Some(e)) if l >= 0 && e >= 0 => Ok(Some(Position {
                ledger: l as u64,
                entry: e as u64,
            })),
            _ => Ok(None),
        }
    }

    /// The backlog of `subscription` on the topic, if the subscription exists.
    pub async fn backlog(
        &self,
        topic: &Topic,
        subscription: &str,
    ) -> Result<Option<u64>, CliError> {
        let stats = self
            .get_json(&format!("/admin/v2/persistent/{}/stats", topic.path))
            .await?;
        Ok(stats.and_then(|s| s["subscriptions"][subscription]["msgBacklog"].as_u64()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_and_no_token_in_debug() {
        assert!(Admin::new("https://x:1", None).is_err());
        assert!(Admin::new("http://", None).is_err());
        let a = Admin::new("http://127.0.0.1:8080/", Some("s3cret".into())).unwrap();
        assert!(!format!("{a:?}").contains("s3cret"));
    }

    #[tokio::test]
    async fn unreachable_admin_is_a_clear_error() {
        // a port nobody listens on: bind, take the port, close
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let a = Admin::new(&format!("http://127.0.0.1:{port}"), None).unwrap();
        let e = a
            .require_topic(&Topic::parse("x").unwrap())
            .await
            .unwrap_err();
        assert_eq!(e.exit_code(), 3, "{e}");
        assert!(e.to_string().contains("cannot connect"), "{e}");
    }
}
