#[backstop::consumer(topic = "t", subscription = "s")]
async fn h() -> Result<(), backstop::HandlerError> { Ok(()) }
fn main() {}
