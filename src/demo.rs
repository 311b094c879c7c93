//! `neuropia serve --demo`: a demo tenant, user, priced model on the built-in mock
//! provider, a funded balance and a fresh key, printed with a ready `curl`.

use std::net::SocketAddr;
use std::time::Duration;

use crate::auth::Role;
use crate::billing::{Decimal, Rate};
use crate::db;
use crate::plan::Plan;
use crate::state::AppState;

pub const DEMO_EMAIL: &str = "demo@neuropia.local";
pub const DEMO_PASSWORD: &str = "demo-password";
pub const DEMO_MODEL: &str = "mock-small";
/// The demo's embeddings model, on the built-in mock too.
pub const DEMO_EMBED_MODEL: &str = "mock-embed";
/// The demo's platform admin (an operator), made only on a loopback address, with a new
/// password at every start.
pub const DEMO_OPERATOR: &str = "operator@neuropia.local";

pub struct Seeded {
    pub user_id: uuid::Uuid,
    pub virtual_key: String,
    pub balance: Decimal,
    /// The operator's password for this run, when the gateway listens on loopback.
    pub operator_password: Option<String>,
    /// Fault injection is on (`NEUROPIA_FAULTS=1`).
    pub faults: bool,
}

impl Seeded {
    pub fn instructions(&self, addr: SocketAddr) -> String {
        let mut out = format!(
            "\n=== Neuropia demo ===\n\
             user {DEMO_EMAIL} (password {DEMO_PASSWORD}), id {user}, balance {balance}\n\
             virtual key (shown once): {key}\n\n\
             curl -s http://{addr}/v1/chat/completions \\\n  \
             -H 'Content-Type: application/json' \\\n  \
             -H 'x-virtual-key: {key}' \\\n  \
             -d '{{\"model\": \"{DEMO_MODEL}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello, Neuropia!\"}}]}}'\n\n\
             curl -s http://{addr}/v1/embeddings \\\n  \
             -H 'Content-Type: application/json' \\\n  \
             -H 'x-virtual-key: {key}' \\\n  \
             -d '{{\"model\": \"{DEMO_EMBED_MODEL}\", \"input\": \"Hello, Neuropia!\"}}'\n\n\
             the console: http://{addr}/console (sign in as {DEMO_EMAIL} / {DEMO_PASSWORD})\n",
            user = self.user_id,
            balance = self.balance.normalize(),
            key = self.virtual_key,
        );
        if let Some(password) = &self.operator_password {
            out.push_str(&operator_instructions(
                addr,
                password,
                self.user_id,
                self.faults,
            ));
        }
        out
    }
}

/// What an operator tries next, signed in as the demo's platform admin.
fn operator_instructions(
    addr: SocketAddr,
    password: &str,
    user: uuid::Uuid,
    faults: bool,
) -> String {
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "neuropia".into());
    let login = format!(
        "curl -s http://{addr}/api/auth/login -H 'content-type: application/json' \\\n    \
         -d '{{\"email\": \"{DEMO_OPERATOR}\", \"password\": \"{password}\"}}' | jq -r .token"
    );
    let mut out = format!(
        "\noperator (platform admin; a new password at every start, loopback only):\n  \
         {DEMO_OPERATOR} / {password} (in the console: rates and the actor tree)\n\n\
         the live supervision tree (`cargo install --path .` puts `neuropia` on PATH):\n  \
         NEUROPIA_URL=http://{addr} NEUROPIA_ADMIN_EMAIL={DEMO_OPERATOR} \\\n    \
         NEUROPIA_ADMIN_PASSWORD='{password}' {exe} actors\n\n\
         a token for the API, the tree page http://{addr}/api/admin/actors/view and top-ups:\n  \
         ADMIN=$({login})\n  \
         curl -s http://{addr}/api/users/{user}/topups -H \"authorization: Bearer $ADMIN\" \\\n    \
         -H 'content-type: application/json' -d '{{\"amount\": \"5\"}}'\n"
    );
    if faults {
        out.push_str(&format!(
            "\nfault injection (NEUROPIA_FAULTS=1): the demo user's balance actor panics, and\n\
             comes back with its balance (watch `restarts` in the tree):\n  \
             curl -s http://{addr}/api/admin/faults -H \"authorization: Bearer $ADMIN\" \\\n    \
             -H 'content-type: application/json' -d '{{\"actor\": \"balance:{user}\", \"fault\": \"panic\"}}'\n"
        ));
    }
    out
}

fn d(s: &str) -> Result<Decimal, String> {
    Decimal::from_str_exact(s).map_err(|e| e.to_string())
}

/// Creates (or reuses) the demo data and a new key; on a loopback `addr`, the operator
/// too.
pub async fn seed(app: &AppState, addr: SocketAddr) -> Result<Seeded, String> {
    let err = |e: sqlx::Error| format!("demo seed: {e}");
    let pool = &app.pool;
    let tenant = db::tenants::ensure(pool, "demo", d("20")?)
        .await
        .map_err(err)?;
    let rate = Rate::plain(d("0.000001")?, d("0.000002")?, "USD");
    for model in [DEMO_MODEL, DEMO_EMBED_MODEL] {
        db::config::upsert_rate(pool, "mock", model, &rate)
            .await
            .map_err(err)?;
        db::config::upsert_model_config(
            pool,
            model,
            &Plan::single("mock", model),
            Default::default(),
        )
        .await
        .map_err(err)?;
    }
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
    // Enough for many calls: each reserves its worst case first.
    if view.balance < Decimal::ONE {
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
            controls: Default::default(),
        },
    )
    .await
    .map_err(|e| format!("demo seed: {e}"))?;
    let operator_password = if addr.ip().is_loopback() {
        operator(app).await?
    } else {
        None
    };
    Ok(Seeded {
        user_id,
        virtual_key,
        balance,
        operator_password,
        faults: app.config.faults,
    })
}

/// Makes the demo's platform admin, or gives it a new password; `None` when the email
/// belongs to someone else.
async fn operator(app: &AppState) -> Result<Option<String>, String> {
    let password = format!("op-{}", &crate::auth::random_hex32()?[..20]);
    let hashed = crate::auth::hash_password_bounded(password.clone())
        .await
        .map_err(|e| e.to_string())?;
    let pool = &app.pool;
    let err = |e: sqlx::Error| format!("demo operator: {e}");
    match db::users::find_login(pool, DEMO_OPERATOR)
        .await
        .map_err(err)?
    {
        Some(login) if login.role == Role::PlatformAdmin => {
            db::users::set_password(pool, login.id, &hashed)
                .await
                .map_err(err)?;
        }
        Some(_) => {
            tracing::warn!("{DEMO_OPERATOR} exists and is not a platform admin: no operator");
            return Ok(None);
        }
        None => {
            db::users::create_user(
                pool,
                db::users::NewUser {
                    email: DEMO_OPERATOR,
                    hashed_password: &hashed,
                    username: "operator",
                    tenant_id: db::users::PLATFORM_TENANT,
                    role: Role::PlatformAdmin,
                },
            )
            .await
            .map_err(|e| format!("demo operator: {e}"))?;
        }
    }
    Ok(Some(password))
}
