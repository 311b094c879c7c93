//! The brief's virtual-key SQL functions, on a fresh migrated database per test: only
//! hashes are stored, and every change is announced on `virtual_key_update`.

#![expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use std::time::Duration;

use neuropia::auth::KeyHash;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use uuid::Uuid;

async fn user(pool: &PgPool) -> Uuid {
    let id: Uuid = sqlx::query_scalar(
        "INSERT INTO auth.login (email, hashed_password, tenant_id)
         VALUES ('k@example.com', 'x', '00000000-0000-0000-0000-000000000001') RETURNING id",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO data.user_profile (user_id, username, tenant_id)
         VALUES ($1, 'k', '00000000-0000-0000-0000-000000000001')",
    )
    .bind(id)
    .execute(pool)
    .await
    .unwrap();
    id
}

async fn next(listener: &mut PgListener) -> Value {
    let n = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("a notification")
        .unwrap();
    assert_eq!(n.channel(), "virtual_key_update");
    serde_json::from_str(n.payload()).unwrap()
}

fn sql_state(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

#[sqlx::test(migrations = "./migrations")]
async fn key_functions_store_hashes_and_notify(pool: PgPool) {
    let user_id = user(&pool).await;
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen("virtual_key_update").await.unwrap();

    let key: String = sqlx::query_scalar(
        "SELECT data.create_virtual_key($1, 'main', 'desc', 60, 1000, ARRAY['qwen-turbo'], 7, 'vk')",
    )
    .bind(user_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(key.starts_with("vk_") && key.len() == 67, "{key}");
    let hash = KeyHash::of(&key).to_hex();

    let created = next(&mut listener).await;
    assert_eq!(created["action"], "create");
    assert_eq!(created["virtual_key"], hash.as_str());
    assert_eq!(created["user_id"], user_id.to_string());
    assert_eq!(created["rate_limits"], json!({"rpm": 60, "tpm": 1000}));
    assert_eq!(created["allowed_models"], json!(["qwen-turbo"]));
    assert_eq!(created["key_type_id"], 7);
    assert_eq!(created["key_prefix"], "vk");
    assert!(created["virtual_key_id"].is_string());
    assert!(
        !created.to_string().contains(&key),
        "no plaintext in the payload"
    );

    let (stored, last4): (String, String) =
        sqlx::query_as("SELECT virtual_key_hash, key_last4 FROM data.virtual_key")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored, hash, "PostgreSQL and Rust hash alike");
    assert_eq!(last4, key[key.len() - 4..]);

    sqlx::query("SELECT data.update_virtual_key($1, p_name => 'renamed', p_rate_limit_rpm => 5)")
        .bind(&key)
        .execute(&pool)
        .await
        .unwrap();
    let updated = next(&mut listener).await;
    assert_eq!(updated["action"], "update");
    assert_eq!(updated["rate_limits"], json!({"rpm": 5, "tpm": 1000}));

    sqlx::query("SELECT data.deactivate_virtual_key($1, 'leaked')")
        .bind(&key)
        .execute(&pool)
        .await
        .unwrap();
    let off = next(&mut listener).await;
    assert_eq!(
        (off["action"].as_str(), off["is_active"].as_bool()),
        (Some("deactivate"), Some(false))
    );
    assert_eq!(off["reason"], "leaked");

    sqlx::query("SELECT data.activate_virtual_key($1, 'fixed')")
        .bind(&key)
        .execute(&pool)
        .await
        .unwrap();
    let on = next(&mut listener).await;
    assert_eq!(
        (on["action"].as_str(), on["is_active"].as_bool()),
        (Some("activate"), Some(true))
    );

    let rotated: String = sqlx::query_scalar("SELECT data.rotate_virtual_key($1, 'routine')")
        .bind(&key)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_ne!(rotated, key);
    let rot = next(&mut listener).await;
    assert_eq!(rot["action"], "rotate");
    assert_eq!(rot["old_virtual_key"], hash.as_str());
    assert_eq!(rot["virtual_key"], KeyHash::of(&rotated).to_hex().as_str());
    assert_eq!(
        rot["virtual_key_id"], created["virtual_key_id"],
        "same key, new secret"
    );

    // The old secret is gone at once.
    let err = sqlx::query("SELECT data.deactivate_virtual_key($1, NULL)")
        .bind(&key)
        .execute(&pool)
        .await
        .unwrap_err();
    assert_eq!(sql_state(&err).as_deref(), Some("P0002"));
}

#[sqlx::test(migrations = "./migrations")]
async fn key_functions_refuse_bad_arguments(pool: PgPool) {
    let user_id = user(&pool).await;
    for sql in [
        "SELECT data.create_virtual_key($1, 'k', NULL, 0, NULL, '{}', NULL, 'vk')",
        "SELECT data.create_virtual_key($1, 'k', NULL, NULL, -5, '{}', NULL, 'vk')",
        "SELECT data.create_virtual_key($1, 'k', NULL, NULL, NULL, '{}', NULL, 'Bad Prefix')",
    ] {
        let err = sqlx::query(sql)
            .bind(user_id)
            .execute(&pool)
            .await
            .unwrap_err();
        assert_eq!(sql_state(&err).as_deref(), Some("22023"), "{sql}");
    }
    let err = sqlx::query("SELECT data.rotate_virtual_key('vk_unknown', NULL)")
        .execute(&pool)
        .await
        .unwrap_err();
    assert_eq!(sql_state(&err).as_deref(), Some("P0002"));
}
