//! Outages: Postgres and RabbitMQ reached through a TCP proxy that the test
//! cuts and restores. The worker must wait, reconnect and lose nothing; the
//! machine's own services are never touched.

mod common;

use std::time::Duration;

use common::proxy::Proxy;
use common::*;
use serde_json::json;

use wiremock::{MockServer, ResponseTemplate};

const SID: &str = "AC00000000000000000000000000000999";

async fn slow_twilio() -> MockServer {
    let server = MockServer::start().await;
    twilio_create_message(SID, "platform-token")
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(json!({"sid": "SMout", "status": "queued"}))
                .set_delay(Duration::from_millis(200)),
        )
        .mount(&server)
        .await;
    server
}

fn with_twilio(env: &mut Env, server: &MockServer) {
    env.set("SWITCHBOARD_TWILIO_BASE_URL", server.uri())
        .set("TWILIO_ACCOUNT_SID", SID)
        .set("TWILIO_AUTH_TOKEN", "platform-token")
        .set("TWILIO_PHONE_NUMBER", "+14155550000");
}

async fn sent(env: &Env) -> i64 {
    env.db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM outbound_messages WHERE status = 'sent'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_postgres_outage_mid_batch_is_waited_out_without_loss_or_resend() {
    // Default settings: hundreds of jobs in flight when Postgres goes away
    // for 5 s (the worker's pool, its lock session and the batched writes
    // all lose their connections).
    const JOBS: usize = 300;
    let server = MockServer::start().await;
    twilio_create_message(SID, "platform-token")
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(json!({"sid": "SMout", "status": "queued"}))
                .set_delay(Duration::from_secs(2)),
        )
        .mount(&server)
        .await;
    let pg = Proxy::start("127.0.0.1:5432").await;
    let mut env = Env::with_defaults().await;
    with_twilio(&mut env, &server);
    let via_proxy = env.db.url_via(pg.port);
    env.set("DATABASE_URL", via_proxy);
    let worker = env.start_worker();
    let publisher = env.publisher().await;
    for _ in 0..JOBS {
        publisher.publish(&sms_job("agent-o", "+14155550123")).await;
    }
    // Cut while the provider holds the requests: their outcomes come back
    // to a worker that cannot record them.
    wait_until("jobs at the provider", || async {
        (server.received_requests().await.unwrap().len() >= 100).then_some(())
    })
    .await;
    pg.cut();
    // Jobs at the provider now cannot record their outcome; the rest cannot
    // be claimed. Both must wait, not fail and not be acked.
    wait_until("the worker to notice", || async {
        (worker.ctx.metrics.db_retries.get() > 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    pg.restore();
    wait_until("every job sent", || async {
        (sent(&env).await as usize == JOBS).then_some(())
    })
    .await;
    worker.stop().await;
    // Outcomes were held in memory, not re-sent: exactly one call per job.
    assert_eq!(server.received_requests().await.unwrap().len(), JOBS);
}

#[tokio::test]
async fn a_rabbitmq_outage_is_reconnected_and_every_job_is_sent_once() {
    let server = slow_twilio().await;
    let amqp = Proxy::start("127.0.0.1:5672").await;
    // Default settings; 200 jobs in flight when the broker link is cut for
    // 5 s, 200 more published meanwhile.
    let mut env = Env::with_defaults().await;
    with_twilio(&mut env, &server);
    let via_proxy = env.vhost.url_via(amqp.port);
    env.set("AMQP_URL", via_proxy);
    let worker = env.start_worker();
    // The publisher talks to RabbitMQ directly: only the worker's link is cut.
    let publisher = env.publisher().await;
    for _ in 0..200 {
        publisher.publish(&sms_job("agent-o", "+14155550123")).await;
    }
    wait_until("a first job sent", || async {
        (sent(&env).await >= 1).then_some(())
    })
    .await;
    amqp.cut();
    wait_until("the worker to notice", || async {
        (worker.ctx.metrics.amqp_connected.get() == 0).then_some(())
    })
    .await;
    for _ in 0..200 {
        publisher.publish(&sms_job("agent-o", "+14155550123")).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    amqp.restore();
    wait_until("every job sent", || async {
        (sent(&env).await == 400).then_some(())
    })
    .await;
    assert!(
        worker.ctx.metrics.amqp_connects.get() >= 2,
        "it reconnected"
    );
    // Deliveries whose ack was lost come back and are acked as duplicates.
    wait_for("the queue to drain", || async {
        let depth = publisher.queue_depth().await;
        let in_flight = worker.ctx.metrics.jobs_in_flight.get();
        match (depth, in_flight) {
            (0, 0) => Ok(()),
            _ => Err(format!(
                "{depth} ready in the queue, {in_flight} jobs in flight"
            )),
        }
    })
    .await;
    worker.stop().await;
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        400,
        "no job sent twice"
    );
}

#[tokio::test]
async fn readyz_reports_which_dependency_is_down() {
    let pg = Proxy::start("127.0.0.1:5432").await;
    let mut env = Env::new().await;
    let via_proxy = env.db.url_via(pg.port);
    env.set("DATABASE_URL", via_proxy);
    let worker = env.start_worker();
    let (base, token, server) = env.start_http(&worker);
    let http = reqwest::Client::new();
    let url = format!("{base}/readyz");
    let status = || async {
        http.get(&url)
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    };
    wait_until("ready", || async {
        (status().await == Some(200)).then_some(())
    })
    .await;
    pg.cut();
    let body: serde_json::Value = wait_until("not ready while Postgres is cut", || async {
        let r = http.get(&url).send().await.ok()?;
        (r.status() == 503).then_some(())?;
        r.json().await.ok()
    })
    .await;
    assert_eq!(body, json!({"postgres": "unreachable", "rabbitmq": "ok"}));
    pg.restore();
    wait_until("ready again", || async {
        (status().await == Some(200)).then_some(())
    })
    .await;
    token.cancel();
    server.await.unwrap().unwrap();
    worker.stop().await;
}
