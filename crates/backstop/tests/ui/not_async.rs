#[backstop::consumer(topic = "t", subscription = "s")]
fn h(m: i64) -> Result<(), backstop::HandlerError> { let _ = m; Ok(()) }
fn main() {}
