//! Pulsar's topic name grammar, checked when a task or consumer is built (and at compile time
//! by the macros, which include this file as it is: it depends on nothing but `core`/`alloc`).
//!
//! Accepted, as Pulsar's `TopicName` accepts them:
//! - a short name `topic` (Pulsar reads it as `persistent://public/default/topic`);
//! - `tenant/namespace/topic` (read as `persistent://tenant/namespace/topic`);
//! - the full form `persistent://tenant/namespace/topic` or `non-persistent://tenant/namespace/topic`.
//!
//! Tenant and namespace names use Pulsar's characters for named entities: ASCII letters,
//! digits and `-_=:.`. The topic's own (local) name is non-empty, has no `/`, no whitespace and
//! no control characters, and at most 255 bytes (a topic name becomes a metadata path). A local
//! name ending in `-partition-` must be followed by a partition index (`orders-partition-3`
//! names partition 3 of the partitioned topic `orders`). The deprecated four-part form with a
//! cluster (`persistent://tenant/cluster/namespace/topic`) is rejected.

/// Why `name` is not a valid Pulsar topic name, or `None` if it is one.
///
/// ```
/// use backstop_engine::core::topic_name_problem;
/// assert_eq!(topic_name_problem("user_updates"), None);
/// assert_eq!(topic_name_problem("persistent://public/default/orders-partition-2"), None);
/// assert!(topic_name_problem("http://public/default/x").is_some());
/// assert!(topic_name_problem("public/default").is_some());
/// ```
pub fn topic_name_problem(name: &str) -> Option<String> {
    let problem = |why: &str| Some(format!("`{name}` is not a valid Pulsar topic name: {why}"));
    if name.is_empty() {
        return problem("it is empty");
    }
    let (rest, full) = match name.split_once("://") {
        Some((domain, rest)) => {
            if domain != "persistent" && domain != "non-persistent" {
                return problem("the domain must be `persistent://` or `non-persistent://`");
            }
            (rest, true)
        }
        None => (name, false),
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let local =
        match (parts.as_slice(), full) {
            ([local], false) => *local,
            ([tenant, namespace, local], _) => {
                for (what, part) in [("tenant", tenant), ("namespace", namespace)] {
                    if part.is_empty() {
                        return problem(&format!("the {what} is empty"));
                    }
                    if !part
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_=:.".contains(c))
                    {
                        return problem(&format!(
                        "the {what} `{part}` may only contain ASCII letters, digits and `-_=:.`"
                    ));
                    }
                }
                *local
            }
            (p, true) if p.len() == 4 => {
                return problem(
                    "the form with a cluster (tenant/cluster/namespace/topic) is not supported",
                )
            }
            _ => return problem(
                "write `topic`, `tenant/namespace/topic` or `persistent://tenant/namespace/topic`",
            ),
        };
    if local.is_empty() {
        return problem("the topic's own name is empty");
    }
    if local.len() > 255 {
        return problem("the topic's own name is longer than 255 bytes");
    }
    if let Some(c) = local.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return problem(&format!(
            "it contains whitespace or a control character ({c:?})"
        ));
    }
    if let Some((_, index)) = local.rsplit_once("-partition-") {
        if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
            return problem(
                "`-partition-` must be followed by a partition index, e.g. `-partition-0`",
            );
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::topic_name_problem;

    #[test]
    fn pulsar_forms_are_accepted() {
        for ok in [
            "user_updates",
            "user-updates.v2",
            "a=b:c",
            "public/default/user_updates",
            "persistent://public/default/user_updates",
            "non-persistent://my-tenant/ns.1/t",
            "persistent://public/default/orders-partition-0",
            "orders-partition-12",
            "ünïcode-topic",
        ] {
            assert_eq!(topic_name_problem(ok), None, "{ok}");
        }
    }

    #[test]
    fn malformed_names_are_rejected_naming_the_topic() {
        for bad in [
            "",
            "a b",
            "tab\there",
            "new\nline",
            "a/b",
            "a/b/c/d",
            "/x/y",
            "t//x",
            "public/default/",
            "persistent://",
            "persistent://public/default",
            "persistent://public/default/a/b",
            "persistent://pub lic/default/a",
            "persistent://public/de$fault/a",
            "persistent://tenant/cluster/ns/t",
            "http://public/default/t",
            "persistent:/public/default/t",
            "orders-partition-",
            "orders-partition-x",
            "orders-partition--1",
        ] {
            let why = topic_name_problem(bad).unwrap_or_else(|| panic!("accepted {bad:?}"));
            assert!(why.contains(&format!("`{bad}`")), "{why}");
        }
        assert!(topic_name_problem(&"t".repeat(256)).is_some());
        assert_eq!(topic_name_problem(&"t".repeat(255)), None);
    }
}
