#[backstop::consumer(topic = "t", subscription = "s")]
async fn h(a: i64, b: i64) -> Result<(), backstop::HandlerError> { let _ = (a, b); Ok(()) }
fn main() {}
