#[backstop::consumer(topic = "t", subscription = "s", retry = "later")]
async fn h(_m: serde_json::Value) -> Result<(), backstop::HandlerError> { Ok(()) }
fn main() {}
