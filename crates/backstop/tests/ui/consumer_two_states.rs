pub struct S;
#[backstop::consumer(topic = "t", subscription = "s")]
async fn h(m: i64, a: &S, b: &S) -> Result<(), backstop::HandlerError> { let _ = (m, a, b); Ok(()) }
fn main() {}
