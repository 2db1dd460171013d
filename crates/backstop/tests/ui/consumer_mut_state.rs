pub struct S;
#[backstop::consumer(topic = "t", subscription = "s")]
async fn h(m: i64, s: &mut S) -> Result<(), backstop::HandlerError> { let _ = (m, s); Ok(()) }
fn main() {}
