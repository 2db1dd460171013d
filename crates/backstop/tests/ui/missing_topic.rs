#[backstop::consumer(subscription = "s")]
async fn h(m: i64) -> Result<(), backstop::HandlerError> { let _ = m; Ok(()) }
fn main() {}
