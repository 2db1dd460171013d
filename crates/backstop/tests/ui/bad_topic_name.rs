#[backstop::task(topic = "persistent://public/default", max_retries = 1)]
async fn f(x: i64) -> Result<i64, backstop::TaskError> { Ok(x) }
fn main() {}
