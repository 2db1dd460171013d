#[backstop::task(topic = "t", key = 3)]
async fn f(x: i64) -> Result<i64, backstop::TaskError> { Ok(x) }
fn main() {}
