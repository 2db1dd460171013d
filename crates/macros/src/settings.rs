//! Durations and subscription types read with the engine's own rules (the file is shared, not
//! copied: `crates/engine/src/core/settings_text.rs` depends on nothing but `humantime`).

#[path = "../../engine/src/core/settings_text.rs"]
mod text;

pub(crate) use text::{duration_text, subscription_type_text};
