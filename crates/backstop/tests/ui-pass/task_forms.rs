//! Every task form and argument.
use backstop::TaskError;

#[derive(Debug, Clone, serde::Serialize)]
pub struct UserUpdate {
    pub status: String,
    pub user_id: i64,
}

pub struct Client;
impl Client {
    async fn fetch(&self, id: i64) -> std::io::Result<i64> {
        Ok(id)
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Proto {
    #[prost(int64, tag = "1")]
    pub user_id: i64,
}

#[backstop::task(topic = "t")]
async fn plain(user_id: i64) -> Result<UserUpdate, TaskError> {
    Ok(UserUpdate { status: "ok".into(), user_id })
}

#[backstop::task(topic = "t", key = "user_id", ordering_key = "user_id")]
async fn keyed_by_argument(user_id: i64, data: serde_json::Value) -> Result<UserUpdate, TaskError> {
    let _ = data;
    Ok(UserUpdate { status: "ok".into(), user_id })
}

#[backstop::task(topic = "t", key = "status")]
async fn keyed_by_field(user_id: i64) -> Result<UserUpdate, TaskError> {
    Ok(UserUpdate { status: "ok".into(), user_id })
}

#[backstop::task(topic = "t", body_timeout = "2s", send_timeout = "3s", max_retries = 1, retry_delay = "1s", dlq_topic = "t_dlq")]
async fn with_state(client: &Client, user_id: i64) -> Result<i64, TaskError> {
    Ok(client.fetch(user_id).await?)
}

#[backstop::task(topic = "t")]
async fn bytes_out(n: u8) -> Result<Vec<u8>, TaskError> {
    Ok(vec![n])
}

#[backstop::task(topic = "t")]
async fn text_out(n: u8) -> Result<String, TaskError> {
    Ok(n.to_string())
}

#[backstop::task(topic = "t", codec = "protobuf")]
async fn proto_out(user_id: i64) -> Result<Proto, TaskError> {
    Ok(Proto { user_id })
}

async fn call_all(bs: &backstop::Backstop) {
    let _ = plain(1).await;
    let _ = plain::call_with(bs, 1).await;
    let _ = keyed_by_argument::call_with(bs, 1, serde_json::json!({})).await;
    let _ = keyed_by_field::call_with(bs, 1).await;
    let client = Client;
    let _ = with_state(&client, 1).await;
    let _ = with_state::call_with(bs, &client, 1).await;
    let _ = bytes_out::call_with(bs, 1).await;
    let _ = text_out::call_with(bs, 1).await;
    let _ = proto_out::call_with(bs, 1).await;
}

fn main() {
    let _ = call_all;
}
