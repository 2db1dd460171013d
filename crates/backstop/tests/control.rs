//! Operator control of a running consumer on the in-memory broker: pause stops handler runs
//! until resume; a forced-open breaker pauses (gauge 2, no probe however long) until released;
//! every action is counted in `backstop_control_actions_total`.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backstop::broker::{Broker, OutgoingMessage};
use backstop::ConsumerSpec;

async fn publish(mem: &backstop_mem::MemBroker, n: u32) {
    let p = mem.producer("in").await.unwrap();
    for i in 0..n {
        p.send(OutgoingMessage::new(format!("{{\"n\":{i}}}")))
            .await
            .unwrap();
    }
}

async fn wait_for(runs: &AtomicU32, n: u32) {
    for _ in 0..1000 {
        if runs.load(Ordering::SeqCst) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("only {} of {n} runs", runs.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn pause_resume_and_forced_breaker_hold_and_release_the_consumer() {
    let (bs, mem) = common::context();
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let handle = bs
        .spawn_consumer(
            ConsumerSpec::new("in", "svc")
                .max_parallelism(2)
                .build()
                .unwrap(),
            move |_v: serde_json::Value| {
                let r = r.clone();
                async move {
                    r.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            },
        )
        .await
        .unwrap();
    let control = handle.control();
    publish(&mem, 3).await;
    wait_for(&runs, 3).await;

    control.pause().unwrap();
    common::settle().await;
    publish(&mem, 5).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 3, "no run while paused");
    control.resume().unwrap();
    wait_for(&runs, 8).await;

    control.force_breaker_open().unwrap();
    common::settle().await;
    let metrics = bs.metrics().render();
    assert!(
        metrics.contains("circuit_breaker_state{breaker=\"consumer:in/svc\"} 2"),
        "{metrics}"
    );
    publish(&mem, 2).await;
    tokio::time::sleep(Duration::from_secs(3600)).await; // far past any recovery timeout
    assert_eq!(
        runs.load(Ordering::SeqCst),
        8,
        "no run, no probe while forced open"
    );
    control.release_breaker().unwrap();
    wait_for(&runs, 10).await;
    let metrics = bs.metrics().render();
    assert!(metrics.contains("circuit_breaker_state{breaker=\"consumer:in/svc\"} 0"));
    for action in ["pause", "resume", "force_open", "release"] {
        assert!(
            metrics.contains(&format!(
                "backstop_control_actions_total{{action=\"{action}\",target=\"consumer:in/svc\"}} 1"
            )),
            "{action}: {metrics}"
        );
    }
    let report = handle.shutdown().await;
    assert_eq!(report.acked, 10);
    assert!(control.pause().is_err(), "a stopped consumer says so");
}

#[tokio::test(start_paused = true)]
async fn a_forced_open_task_breaker_fails_calls_fast_until_released() {
    use backstop::core::ForcedState;
    use backstop::{Task, TaskError, TaskSpec};
    let (bs, _mem) = common::context();
    let task = Task::new(&bs, TaskSpec::new("out").build().unwrap()).unwrap();
    task.force_breaker(Some(ForcedState::Open));
    let r = task
        .call(1u32, |n: &u32| {
            let n = *n;
            async move { Ok::<_, TaskError>(n) }
        })
        .await;
    let failure = r.expect_err("refused while forced open");
    assert_eq!(failure.args, 1, "the arguments come back");
    assert_eq!(task.breaker().0, backstop::BreakerState::Open);
    task.force_breaker(None);
    assert_eq!(task.breaker().0, backstop::BreakerState::Closed);
    task.call(2u32, |n: &u32| {
        let n = *n;
        async move { Ok::<_, TaskError>(n) }
    })
    .await
    .expect("published after release");
    let metrics = bs.metrics().render();
    for action in ["force_open", "release"] {
        assert!(
            metrics.contains(&format!(
                "backstop_control_actions_total{{action=\"{action}\",target=\"task:out\"}} 1"
            )),
            "{action}: {metrics}"
        );
    }
}
