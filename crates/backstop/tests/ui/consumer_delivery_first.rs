use backstop::Delivery;
#[backstop::consumer(topic = "t", subscription = "s")]
async fn h(d: &Delivery) -> Result<(), backstop::HandlerError> { let _ = d; Ok(()) }
fn main() {}
