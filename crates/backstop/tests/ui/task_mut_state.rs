pub struct S;
#[backstop::task(topic = "t")]
async fn f(s: &mut S, x: i64) -> Result<i64, backstop::TaskError> { let _ = s; Ok(x) }
fn main() {}
