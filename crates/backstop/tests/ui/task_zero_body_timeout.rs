#[backstop::task(topic = "t", body_timeout = 0)]
async fn f(x: i64) -> Result<i64, backstop::TaskError> { Ok(x) }
fn main() {}
