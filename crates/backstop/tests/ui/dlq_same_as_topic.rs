#[backstop::task(topic = "t", dlq_topic = "t")]
async fn f(x: i64) -> Result<i64, backstop::TaskError> { Ok(x) }
fn main() {}
