//! `neuropia serve --demo`: a demo tenant, user, priced model on the built-in mock
//! provider, a funded balance and a fresh key, printed with a ready `curl`.

use std::net::SocketAddr;
use std::time::Duration;

use crate::app::AppState;
use crate::auth::Role;
use crate::billing::{Decimal, Rate};
use crate::db;
use crate::upstream::plan::Plan;

pub const DEMO_EMAIL: &str = "demo@neuropia.local";
pub const DEMO_PASSWORD: &str = "demo-password";
pub const DEMO_MODEL: &str = "mock-small";

pub struct Seeded {
    pub user_id: uuid::Uuid,
    pub virtual_key: String,
    pub balance: Decimal,
}

impl Seeded {
    pub fn instructions(&self, addr: SocketAddr) -> String {
        format!(
            "\n=== Neuropia demo ===\n\
             user {DEMO_EMAIL} (password {DEMO_PASSWORD}), id {user}, balance {balance}\n\
             virtual key (shown once): {key}\n\n\
             curl -s http://{addr}/v1/chat/completions \\\n  \
             -H 'Content-Type: application/json' \\\n  \
             -H 'x-virtual-key: {key}' \\\n  \
             -d '{{\"model\": \"{DEMO_MODEL}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello, Neuropia!\"}}]}}'\n",
            user = self.user_id,
            balance = self.balance.normalize(),
            key = self.virtual_key,
        )
    }
}

fn d(s: &str) -> Result<Decimal, String> {
    Decimal::from_str_exact(s).map_err(|e| e.to_string())
}

/// Creates (or reuses) the demo data and a new key.
pub async fn seed(app: &AppState) -> Result<Seeded, String> {
    let err = |e: sqlx::Error| format!("demo seed: {e}");
    let pool = &app.pool;
    let tenant = db::tenants::ensure(pool, "demo", d("20")?)
        .await
        .map_err(err)?;
    let rate = Rate {
        input_rate: d("0.000001")?,
        output_rate: d("0.000002")?,
        currency: "USD".into(),
    };
    db::config::upsert_rate(pool, "mock", DEMO_MODEL, &rate)
        .await
        .map_err(err)?;
    db::config::upsert_model_config(
        pool,
        DEMO_MODEL,
        &Plan::single("mock", DEMO_MODEL),
        Default::default(),
    )
    .await
    .map_err(err)?;
    app.reload_config().await?;

    let user_id = match db::users::find_login(pool, DEMO_EMAIL).await.map_err(err)? {
        Some(login) => login.id,
        None => {
            let hashed = crate::auth::hash_password_bounded(DEMO_PASSWORD.to_owned())
                .await
                .map_err(|e| e.to_string())?;
            db::users::create_user(
                pool,
                db::users::NewUser {
                    email: DEMO_EMAIL,
                    hashed_password: &hashed,
                    username: "demo",
                    tenant_id: tenant,
                    role: Role::User,
                },
            )
            .await
            .map_err(|e| format!("demo seed: {e}"))?
        }
    };
    let view = app
        .balances
        .get(user_id)
        .await
        .map_err(|e| format!("demo seed: {e:?}"))?;
    let mut balance = view.balance;
    if view.balance <= Decimal::ZERO {
        let reply = app
            .balances
            .credit(
                user_id,
                format!("topup:{user_id}:demo-{}", uuid::Uuid::new_v4()),
                d("10")?,
                crate::journal::EntryKind::TopUp {
                    note: Some("demo funds".into()),
                },
            )
            .await
            .map_err(|e| format!("demo seed: {e:?}"))?;
        if let Some(rx) = reply.committed {
            let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
        }
        balance = reply.balance;
    }
    let (_, virtual_key) = db::keys::create(
        pool,
        db::keys::NewKey {
            set_by: Role::User,
            user_id,
            name: "demo key",
            description: Some("created by neuropia serve --demo"),
            rpm: Some(600),
            tpm: None,
            allowed_models: &[],
        },
    )
    .await
    .map_err(err)?;
    Ok(Seeded {
        user_id,
        virtual_key,
        balance,
    })
}
