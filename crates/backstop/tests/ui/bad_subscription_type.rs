#[backstop::consumer(topic = "t", subscription = "s", subscription_type = "round_robin")]
async fn h(m: i64) -> Result<(), backstop::HandlerError> { let _ = m; Ok(()) }
fn main() {}
