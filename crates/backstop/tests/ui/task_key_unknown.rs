#[backstop::task(topic = "t", key = "nope")]
async fn f(x: i64) -> Result<i64, backstop::TaskError> { Ok(x) }
fn main() {}
