#[backstop::consumer(topic = "t", subscription = "s", handler_timeout = "0s")]
async fn h(m: i64) -> Result<(), backstop::HandlerError> { let _ = m; Ok(()) }
fn main() {}
