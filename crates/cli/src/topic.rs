//! Topic names: `name`, `tenant/namespace/name` or `persistent://tenant/namespace/name`.

use crate::CliError;

/// A persistent topic, fully qualified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    /// `persistent://tenant/namespace/name`.
    pub full: String,
    /// `tenant/namespace/name`, for admin API paths.
    pub path: String,
}

impl Topic {
    /// Parses a topic name; short names live in `public/default`.
    ///
    /// ```
    /// use backstop_cli::topic::Topic;
    /// assert_eq!(Topic::parse("orders-DLQ").unwrap().full, "persistent://public/default/orders-DLQ");
    /// assert_eq!(Topic::parse("t/n/x").unwrap().path, "t/n/x");
    /// assert!(Topic::parse("non-persistent://t/n/x").is_err());
    /// assert!(Topic::parse("a/b").is_err());
    /// ```
    pub fn parse(name: &str) -> Result<Topic, CliError> {
        let bad = |why: &str| CliError::Invalid(format!("topic `{name}`: {why}"));
        let rest = match name.split_once("://") {
            Some(("persistent", rest)) => rest.to_string(),
            Some((scheme, _)) => {
                return Err(bad(&format!(
                    "only persistent topics hold dead letters (not {scheme}://)"
                )))
            }
            None if !name.contains('/') => format!("public/default/{name}"),
            None => name.to_string(),
        };
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() != 3 {
            return Err(bad(
                "expected `name`, `tenant/namespace/name` or `persistent://tenant/namespace/name`",
            ));
        }
        for part in &parts {
            if part.is_empty()
                || !part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.=:".contains(c))
            {
                return Err(bad("names use letters, digits and - _ . = : only"));
            }
        }
        Ok(Topic {
            full: format!("persistent://{rest}"),
            path: rest,
        })
    }
}
