//! Every handler form the consumer macro accepts, and every argument.
use backstop::{Delivery, HandlerError};

#[derive(Debug, serde::Deserialize)]
pub struct UserUpdate {
    pub user_id: i64,
}

pub struct AppState {
    pub name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Proto {
    #[prost(int64, tag = "1")]
    pub user_id: i64,
}

#[backstop::consumer(topic = "t", subscription = "s")]
async fn body_only(m: UserUpdate) -> Result<(), HandlerError> {
    let _ = m;
    Ok(())
}

#[backstop::consumer(topic = "t", subscription = "s")]
async fn with_delivery_ref(m: UserUpdate, d: &Delivery) -> Result<(), HandlerError> {
    let _ = (m, d.message_id(), d.attempt());
    Ok(())
}

#[backstop::consumer(topic = "t", subscription = "s")]
async fn with_delivery_owned(m: UserUpdate, d: Delivery) -> Result<(), HandlerError> {
    let _ = (m, d.key());
    Ok(())
}

#[backstop::consumer(topic = "t", subscription = "s")]
async fn with_state(m: UserUpdate, state: &AppState) -> Result<(), HandlerError> {
    let _ = (m, &state.name);
    Ok(())
}

#[backstop::consumer(topic = "t", subscription = "s")]
async fn with_both(m: UserUpdate, d: &Delivery, state: &AppState) -> Result<(), HandlerError> {
    let _ = (m, d, state);
    Ok(())
}

#[backstop::consumer(topic = "t", subscription = "s")]
async fn state_then_delivery(m: UserUpdate, state: &AppState, d: &Delivery) -> Result<(), HandlerError> {
    let _ = (m, d, state);
    std::fs::read("/nonexistent")?; // `?` on an ordinary error
    Ok(())
}

#[backstop::consumer(topic = "t", subscription = "s")]
async fn raw_bytes(m: Vec<u8>) -> Result<(), HandlerError> {
    let _ = m;
    Ok(())
}

#[backstop::consumer(topic = "t", subscription = "s")]
async fn raw_bytes_crate(m: bytes::Bytes) -> Result<(), HandlerError> {
    let _ = m;
    Ok(())
}

#[backstop::consumer(topic = "t", subscription = "s")]
async fn text(m: String) -> Result<(), HandlerError> {
    let _ = m;
    Ok(())
}

#[backstop::consumer(topic = "t", subscription = "s", codec = "protobuf")]
async fn protobuf(m: Proto) -> Result<(), HandlerError> {
    let _ = m;
    Ok(())
}

#[backstop::consumer(topic = "t", subscription = "s", codec = "json")]
async fn json_string(m: String) -> Result<(), HandlerError> {
    let _ = m;
    Ok(())
}

#[backstop::consumer(
    topic = "t",
    subscription = "s",
    max_parallelism = 4,
    max_retries = 2,
    retry_delay = "1s",
    dlq_topic = "t_dlq",
    subscription_type = "key_shared",
    shutdown_grace = "5s",
    handler_timeout = "30s"
)]
async fn every_argument(m: UserUpdate) -> Result<(), HandlerError> {
    let _ = m;
    Ok(())
}

async fn start_all(bs: &backstop::Backstop) -> Result<(), backstop::StartError> {
    let state = std::sync::Arc::new(AppState { name: "x".into() });
    let _a = body_only::start(bs).await?;
    let _b = with_delivery_ref::start(bs).await?;
    let _c = with_delivery_owned::start(bs).await?;
    let _d = with_state::start(bs, state.clone()).await?;
    let _e = with_both::start(bs, AppState { name: "y".into() }).await?;
    let _f = state_then_delivery::start(bs, state).await?;
    let _g = raw_bytes::start(bs).await?;
    let _h = raw_bytes_crate::start(bs).await?;
    let _i = text::start(bs).await?;
    let _j = protobuf::start(bs).await?;
    let _k = json_string::start(bs).await?;
    let _l = every_argument::start(bs).await?;
    Ok(())
}

fn main() {
    let _ = start_all;
}
