//! Topic names checked at compile time with the engine's own grammar (the file is shared, not
//! copied: `crates/engine/src/core/topic.rs` depends on nothing).

#[cfg(not(doctest))]
#[path = "../../engine/src/core/topic.rs"]
#[allow(dead_code)]
mod grammar;

/// While rustdoc collects doctests, the shared file is left out: its example is the engine's
/// (it names `backstop_engine`) and runs there.
#[cfg(doctest)]
mod grammar {
    pub(crate) fn topic_name_problem(_: &str) -> Option<String> {
        None
    }
}

/// A compile error at `span` if the literal `value` of argument `name` is not a valid Pulsar
/// topic name (only `topic`, `dlq_topic` and `park_topic` are topic names).
pub(crate) fn check(name: &str, value: &str, span: proc_macro2::Span) -> syn::Result<()> {
    if name != "topic" && name != "dlq_topic" && name != "park_topic" {
        return Ok(());
    }
    match grammar::topic_name_problem(value) {
        None => Ok(()),
        Some(why) => Err(syn::Error::new(span, format!("`{name}`: {why}"))),
    }
}
