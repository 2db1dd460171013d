#[backstop::task(topic = "t", retry_delay = "five seconds")]
async fn f(x: i64) -> Result<i64, backstop::TaskError> { Ok(x) }
fn main() {}
