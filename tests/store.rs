//! The Postgres pool as switchboard opens it.

mod common;

use common::*;

async fn show(client: &deadpool_postgres::Client, setting: &str) -> String {
    client
        .query_one(&format!("SHOW {setting}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn pool_connections_keep_plans_on_the_indexes() {
    let db = TestDb::new().await;
    let client = db.client().await;
    // Without these, a statement prepared while a table was new kept a
    // sequential scan after the table had grown (README, Benchmark).
    assert_eq!(show(&client, "enable_seqscan").await, "off");
    assert_eq!(show(&client, "plan_cache_mode").await, "force_generic_plan");
}

#[tokio::test]
async fn options_given_in_database_url_are_kept() {
    let db = TestDb::new().await;
    let url = format!("{}?options=-c%20statement_timeout%3D12345", db.url);
    let client = switchboard::store::pool(&url, 1)
        .unwrap()
        .get()
        .await
        .unwrap();
    assert_eq!(show(&client, "statement_timeout").await, "12345ms");
    assert_eq!(show(&client, "enable_seqscan").await, "off");
}
