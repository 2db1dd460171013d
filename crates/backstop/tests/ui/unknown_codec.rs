#[backstop::consumer(topic = "t", subscription = "s", codec = "xml")]
async fn h(m: i64) -> Result<(), backstop::HandlerError> { let _ = m; Ok(()) }
fn main() {}
