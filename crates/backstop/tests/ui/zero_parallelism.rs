#[backstop::consumer(topic = "t", subscription = "s", max_parallelism = 0)]
async fn h(m: i64) -> Result<(), backstop::HandlerError> { let _ = m; Ok(()) }
fn main() {}
