//! Scale-out: three `neuropia serve` processes on loopback over one PostgreSQL database and
//! one Redis (a private `redis-server`, so the test can stop it). Rate limits hold across
//! the instances, money stays exact, a revocation reaches every instance, one instance
//! killed under load loses no answered charge while the others keep serving, and with
//! Redis gone each instance enforces its share of the limits until Redis is back.

#![expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

mod common;

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use neuropia::billing::Decimal;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use tokio::process::{Child, Command};
use uuid::Uuid;

const INSTANCES: usize = 3;
/// One mock call: 12 prompt tokens at 0.001 + 8 completion tokens at 0.002.
const CALL_COST: &str = "0.028";

/// Three gateways over one database and one Redis.
struct Cluster {
    db: String,
    redis_port: u16,
    redis: Option<Child>,
    gateways: std::sync::Mutex<Vec<Option<Child>>>,
    apis: Vec<Api>,
}

impl Cluster {
    async fn start() -> Self {
        let db = format!("neuropia_test_{}", Uuid::new_v4().simple());
        let redis_port = free_port();
        let redis = start_redis(redis_port).await;
        let mut gateways = Vec::new();
        let mut apis = Vec::new();
        // One after the other: the first creates and migrates the database.
        for _ in 0..INSTANCES {
            let port = free_port();
            gateways.push(Some(start_gateway(&db, port, redis_port).await));
            apis.push(Api::connect(format!("http://127.0.0.1:{port}")).await);
        }
        Self {
            db,
            redis_port,
            redis: Some(redis),
            gateways: std::sync::Mutex::new(gateways),
            apis,
        }
    }

    async fn pg(&self) -> PgConnection {
        PgConnection::connect(&format!("{}/{}", server_url(), self.db))
            .await
            .unwrap()
    }

    async fn health(&self, i: usize) -> Value {
        self.apis[i].health().await
    }

    /// Takes instance `i`'s process (to kill it).
    fn take(&self, i: usize) -> Child {
        self.gateways.lock().unwrap()[i].take().unwrap()
    }

    async fn stop(mut self) {
        let gateways = std::mem::take(&mut *self.gateways.lock().unwrap());
        for mut g in gateways.into_iter().flatten() {
            let _ = g.start_kill();
            let _ = g.wait().await;
        }
        if let Some(mut r) = self.redis.take() {
            let _ = r.start_kill();
            let _ = r.wait().await;
        }
        if let Ok(mut admin) = PgConnection::connect(&format!("{}/postgres", server_url())).await {
            let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.db);
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut admin)
                .await;
        }
    }
}

async fn start_gateway(db: &str, port: u16, redis_port: u16) -> Child {
    let mut command = gateway_command(db, port);
    command
        .env("REDIS_URL", format!("redis://127.0.0.1:{redis_port}"))
        .env("NEUROPIA_INSTANCES", INSTANCES.to_string())
        .env_remove("RATE_LIMIT_BACKEND")
        .env("BILLING_DURABILITY", "strict")
        .env("NEUROPIA_DB_POOL", "6")
        .env("JWT_SECRET", "scale-out-test-secret-0123")
        .env("NEUROPIA_WORKER_THREADS", "2")
        .env("RUST_LOG", "error");
    spawn_gateway(command, port).await
}

async fn chat_status(api: &Api, key: &str) -> StatusCode {
    let r = api.chat(key, &chat_body("qwen-turbo")).await;
    let status = r.status();
    let _ = r.bytes().await;
    status
}

/// Sends `n` calls at once, call `i` to `apis[i % apis.len()]`; returns the statuses per instance.
async fn burst(apis: &[Api], key: &str, n: usize) -> Vec<Vec<StatusCode>> {
    let n_apis = apis.len();
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let api = &apis[i % apis.len()];
            let (client, url, key) = (
                api.client.clone(),
                api.url("/v1/chat/completions"),
                key.to_owned(),
            );
            tokio::spawn(async move {
                let r = client
                    .post(url)
                    .header("x-virtual-key", key)
                    .json(&chat_body("qwen-turbo"))
                    .send()
                    .await
                    .unwrap();
                let status = r.status();
                if status == StatusCode::TOO_MANY_REQUESTS {
                    assert!(
                        r.headers().contains_key("retry-after"),
                        "429 without Retry-After"
                    );
                }
                let _ = r.bytes().await;
                (i % n_apis, status)
            })
        })
        .collect();
    let mut per = vec![Vec::new(); apis.len()];
    for c in calls {
        let (i, status) = c.await.unwrap();
        per[i].push(status);
    }
    per
}

fn count(per: &[Vec<StatusCode>], status: StatusCode) -> usize {
    per.iter().flatten().filter(|s| **s == status).count()
}

/// The user's committed balance, charges and usage rows.
async fn money(conn: &mut PgConnection, user: Uuid) -> (Decimal, Decimal, i64) {
    sqlx::query_as(
        "SELECT p.balance,
                COALESCE((SELECT -sum(amount) FROM data.balance_ledger
                          WHERE user_id = p.user_id AND kind = 'charge'), 0),
                (SELECT count(*) FROM data.usage_log WHERE user_id = p.user_id)
         FROM data.user_profile p WHERE p.user_id = $1",
    )
    .bind(user)
    .fetch_one(conn)
    .await
    .unwrap()
}

/// Every instance's balance actor agrees with PostgreSQL (notices reached them); returns
/// how long that took.
async fn all_agree(c: &Cluster, user: Uuid, live: &[usize]) -> Duration {
    let mut conn = c.pg().await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        let (committed, _, _) = money(&mut conn, user).await;
        let mut agree = true;
        for &i in live {
            agree &= c.apis[i].api_balance(user).await.0 == committed;
        }
        if agree {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the instances do not agree on {user}'s balance within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_share_limits_money_and_revocation() {
    let mock = mock_upstream().await;
    let c = Cluster::start().await;
    let a = &c.apis[0];
    a.route_to_mock("qwen-turbo", &mock, "0.001", "0.002").await;
    let Customer {
        user,
        token,
        key: unlimited,
    } = a
        .customer("scale@example.com", "100", json!({"name": "plain"}))
        .await;
    // The routing reached every instance (config_update NOTIFY).
    for api in &c.apis {
        eventually(5, "model routed on every instance", || async {
            chat_status(api, &unlimited).await == StatusCode::OK
        })
        .await;
    }
    let h = c.health(1).await;
    assert_eq!(h["rate_limits"]["backend"], "redis", "{h}");
    assert_eq!(h["rate_limits"]["global"], true, "{h}");

    // 1. A burst of 90 calls on an rpm=30 key, spread over the instances, serves 30.
    let key = a
        .create_key(&token, user, json!({"name": "rpm30", "rate_limit_rpm": 30}))
        .await;
    let per = burst(&c.apis, &key, 90).await;
    assert_eq!(count(&per, StatusCode::OK), 30, "{per:?}");
    assert_eq!(count(&per, StatusCode::TOO_MANY_REQUESTS), 60, "{per:?}");
    // The refused calls' balance reservations (made side by side with the Redis check)
    // were all given back on every instance.
    for api in &c.apis {
        api.no_reservation_left(user).await;
    }
    eprintln!(
        "rpm 30 over 3 instances: served per instance {:?}",
        per.iter()
            .map(|p| p.iter().filter(|s| **s == StatusCode::OK).count())
            .collect::<Vec<_>>()
    );
    // tpm is global too: 3 calls of 24 estimated tokens fit in 80, the 4th does not.
    let tpm_key = a
        .create_key(&token, user, json!({"name": "tpm", "rate_limit_tpm": 80}))
        .await;
    let mut statuses = Vec::new();
    for i in 0..4 {
        statuses.push(chat_status(&c.apis[i % INSTANCES], &tpm_key).await);
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ],
        "after the first calls the window holds their actual 20 tokens each: 60 + 24 > 80"
    );

    // 2. Money: exact across instances, and every instance learns the others' charges.
    let mut pg = c.pg().await;
    let served = 30 + 3 + INSTANCES as i64;
    let (balance, charges, rows) = money(&mut pg, user).await;
    assert_eq!(
        rows, served,
        "strict durability: every answered call is committed"
    );
    assert_eq!(charges, d(CALL_COST) * Decimal::from(served));
    assert_eq!(balance, d("100") - charges);
    let took = all_agree(&c, user, &[0, 1, 2]).await;
    eprintln!("every instance knew the others' charges after {took:?}");
    // A top-up through instance 2 is seen by 0 and 1 (balance_update notices).
    c.apis[2].top_up(user, "50").await;
    let took = all_agree(&c, user, &[0, 1, 2]).await;
    eprintln!("a top-up through one instance reached the others after {took:?}");

    // 3. Cross-instance overdraft: a user with money for five calls bursts 60 calls over
    // the three instances. Each admission checks the instance's view of the balance against
    // every instance's open reservations and against the charges committed since its view
    // (shared in Redis). Documented bounds: above -r (r one reservation, as on one instance)
    // while Redis and the notices work; never below -((N - 1) * B + N * r) (B the starting
    // balance) whatever is lost.
    let (poor, poor_token) = a.register("poor@example.com").await;
    let start = d("0.14");
    a.top_up(poor, "0.14").await;
    let poor_key = a
        .create_key(&poor_token, poor, json!({"name": "poor"}))
        .await;
    for api in &c.apis {
        // Each instance has the user's actor live and funded before the burst.
        eventually(5, "the top-up on every instance", || async {
            api.api_balance(poor).await == (start, "active".to_owned())
        })
        .await;
    }
    let per = burst(&c.apis, &poor_key, 60).await;
    let ok = count(&per, StatusCode::OK);
    assert_eq!(
        ok + count(&per, StatusCode::PAYMENT_REQUIRED),
        60,
        "only served or refused for money: {per:?}"
    );
    all_agree(&c, poor, &[0, 1, 2]).await;
    let (balance, charges, rows) = money(&mut pg, poor).await;
    assert_eq!(rows as usize, ok);
    assert_eq!(charges, d(CALL_COST) * Decimal::from(ok as u64));
    assert_eq!(balance, start - charges);
    // r: a 16-token prompt estimate at 0.001 + max_tokens 8 at 0.002.
    let reservation = d("0.032");
    let n = Decimal::from(INSTANCES as u64);
    let bound = -((n - Decimal::ONE) * start + n * reservation);
    assert!(
        balance >= bound,
        "balance {balance} below the bound {bound}"
    );
    // Without the shared reservations each instance would admit five (15 served, -0.28);
    // with them (and commits counted until every view includes them) the single-instance
    // bound holds: above minus one reservation.
    assert!(
        balance > -reservation,
        "balance {balance}: the instances did not see each other's reservations or charges"
    );
    eprintln!(
        "cross-instance overdraft: {ok} served on a balance for 5, final balance {balance} \
         (bound {bound})"
    );
    if balance <= Decimal::ZERO {
        // Every instance knows the account is overdue and refuses.
        for api in &c.apis {
            let (_, status) = api.api_balance(poor).await;
            assert_eq!(status, "overdue");
            assert_eq!(
                chat_status(api, &poor_key).await,
                StatusCode::PAYMENT_REQUIRED
            );
        }
    }

    // 4. Revocation through one instance reaches every instance.
    for (via, how) in [(1usize, "api"), (0, "sql")] {
        let (status, created) = a
            .post(
                &format!("/api/users/{user}/virtual-keys"),
                &token,
                json!({"name": format!("revoke-{how}")}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let key = created["virtual_key"].as_str().unwrap().to_owned();
        let key_id = created["id"].as_str().unwrap().to_owned();
        for api in &c.apis {
            assert_eq!(chat_status(api, &key).await, StatusCode::OK);
        }
        let sent = Instant::now();
        if how == "api" {
            let (status, body) = c.apis[via]
                .post(
                    &format!("/api/virtual-keys/{key_id}/deactivate"),
                    &c.apis[via].admin_token,
                    json!({"reason": "scale-out test"}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        } else {
            sqlx::query("SELECT data.deactivate_virtual_key($1, 'revoked in SQL')")
                .bind(&key)
                .execute(&mut pg)
                .await
                .unwrap();
        }
        let mut took = Vec::new();
        for api in &c.apis {
            eventually(5, "revocation on every instance", || async {
                chat_status(api, &key).await == StatusCode::UNAUTHORIZED
            })
            .await;
            took.push(sent.elapsed());
        }
        eprintln!("revoked through {how}: refused by the instances after {took:?}");
    }

    // 4a. A key with a budget for 20 calls, bursted over the three instances: its holds
    // live in PostgreSQL, so no instance spends what another holds.
    let capped = a
        .create_key(
            &token,
            user,
            json!({"name": "capped", "budget_total": (d(CALL_COST) * Decimal::from(20)).to_string()}),
        )
        .await;
    let per = burst(&c.apis, &capped, 90).await;
    let served = count(&per, StatusCode::OK);
    assert!(served > 0 && served <= 20, "{per:?}");
    assert_eq!(
        count(&per, StatusCode::PAYMENT_REQUIRED),
        90 - served,
        "{per:?}"
    );
    let want = d(CALL_COST) * Decimal::from(served as u64);
    eventually(5, "the capped key's spend committed", || async {
        let mut conn = c.pg().await;
        let spent: Decimal = sqlx::query_scalar(
            "SELECT spent_total FROM data.virtual_key WHERE user_id = $1 AND name = 'capped'",
        )
        .bind(user)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        spent == want
    })
    .await;
    eprintln!("budget for 20 over 3 instances: {served} of 90 served");

    // 4b. A suspension through one instance refuses the owner's calls on every instance,
    // and a reinstatement serves them again everywhere.
    for (suspended, expected) in [(true, StatusCode::FORBIDDEN), (false, StatusCode::OK)] {
        let (status, body) = c.apis[1]
            .send(
                reqwest::Method::PATCH,
                &format!("/api/admin/users/{user}"),
                &c.apis[1].admin_token,
                Some(json!({ "suspended": suspended })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for api in &c.apis {
            eventually(5, "the suspension on every instance", || async {
                chat_status(api, &unlimited).await == expected
            })
            .await;
        }
    }

    // 5. One instance killed under load: the others keep serving, nothing answered is lost.
    let load = Arc::new(Load::default());
    let workers: Vec<_> = (0..24)
        .map(|w| {
            let api = &c.apis[w % INSTANCES];
            let answered = call_until_stopped(
                api.client.clone(),
                api.url("/v1/chat/completions"),
                unlimited.clone(),
                load.clone(),
            );
            (w % INSTANCES, answered)
        })
        .collect();
    load.serves(100, "calls served before the kill").await;
    let rows_before = money(&mut pg, user).await.2;
    let mut victim = c.take(2);
    victim.start_kill().unwrap(); // SIGKILL
    victim.wait().await.unwrap();
    let killed_at = Instant::now();
    // The survivors keep serving.
    load.serves(100, "calls served after the kill").await;
    for i in 0..2 {
        assert_eq!(chat_status(&c.apis[i], &unlimited).await, StatusCode::OK);
    }
    load.stop.store(true, Ordering::SeqCst);
    let mut answered = HashSet::new();
    let mut per_instance = [0usize; INSTANCES];
    for (i, worker) in workers {
        let ids = worker.await.unwrap();
        per_instance[i] += ids.len();
        answered.extend(ids);
    }
    assert!(answered.len() >= 100, "enough load: {per_instance:?}");
    let logged = billed_request_ids(&mut pg, user).await;
    let missing: Vec<&String> = answered.difference(&logged).collect();
    assert!(missing.is_empty(), "answered but not billed: {missing:?}");
    let (balance, charges, rows) = money(&mut pg, user).await;
    assert_eq!(charges, d(CALL_COST) * Decimal::from(rows as u64));
    assert_eq!(balance, d("150") - charges);
    assert!(rows > rows_before);
    eprintln!(
        "kill -9 of one instance under load: answered per instance {per_instance:?}, \
         {} billed, survivors checked {:?} after the kill",
        rows,
        killed_at.elapsed()
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_redis_each_instance_enforces_its_share_until_redis_is_back() {
    let mock = mock_upstream().await;
    let mut c = Cluster::start().await;
    let a = &c.apis[0];
    a.route_to_mock("qwen-turbo", &mock, "0.001", "0.002").await;
    let Customer {
        user,
        token,
        key: probe,
    } = a
        .customer("fallback@example.com", "100", json!({"name": "probe"}))
        .await;
    for api in &c.apis {
        eventually(5, "model routed on every instance", || async {
            chat_status(api, &probe).await == StatusCode::OK
        })
        .await;
    }

    // Redis goes away: each instance enforces rpm 30 / 3 = 10.
    let mut redis = c.redis.take().unwrap();
    redis.start_kill().unwrap();
    redis.wait().await.unwrap();
    let key = c.apis[0]
        .create_key(&token, user, json!({"name": "rpm30", "rate_limit_rpm": 30}))
        .await;
    let per = burst(&c.apis, &key, 90).await;
    let served: Vec<usize> = per
        .iter()
        .map(|p| p.iter().filter(|s| **s == StatusCode::OK).count())
        .collect();
    assert_eq!(served, vec![10, 10, 10], "{per:?}");
    assert_eq!(count(&per, StatusCode::TOO_MANY_REQUESTS), 60);
    for i in 0..INSTANCES {
        let h = c.health(i).await;
        assert_eq!(h["rate_limits"]["global"], false, "{h}");
        assert_eq!(h["status"], "degraded", "{h}");
    }
    let metrics = c.apis[0].metrics().await;
    assert!(
        metrics.contains("neuropia_rate_limit_global 0"),
        "fallback visible in /metrics"
    );

    // Redis is back: limits are global again, and a new key's burst serves exactly 30.
    c.redis = Some(start_redis(c.redis_port).await);
    for i in 0..INSTANCES {
        eventually(5, "rate limits global again", || async {
            c.health(i).await["rate_limits"]["global"] == true
        })
        .await;
    }
    let key = c.apis[1]
        .create_key(
            &token,
            user,
            json!({"name": "rpm30-again", "rate_limit_rpm": 30}),
        )
        .await;
    let per = burst(&c.apis, &key, 90).await;
    assert_eq!(count(&per, StatusCode::OK), 30, "{per:?}");

    // Through it all, money stayed exact: every served call once, nothing left reserved.
    let served = 3 + 30 + 30;
    let mut pg = c.pg().await;
    let (balance, charges, rows) = money(&mut pg, user).await;
    assert_eq!(
        rows, served,
        "strict durability: every answered call is committed"
    );
    assert_eq!(charges, d(CALL_COST) * Decimal::from(served as u64));
    assert_eq!(balance, d("100") - charges);
    all_agree(&c, user, &[0, 1, 2]).await;
    c.stop().await;
}

/// Starts a three-master Redis Cluster on free ports; returns the processes and the
/// comma-separated seed URLs.
async fn start_redis_cluster(dir: &std::path::Path) -> (Vec<Child>, String) {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut nodes = Vec::new();
    for port in &ports {
        let conf = dir.join(format!("nodes-{port}.conf"));
        nodes.push(
            Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(&conf)
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("redis-server"),
        );
    }
    for port in &ports {
        wait_for_redis(*port).await;
    }
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let out = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .await
        .expect("redis-cli");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Wait until every node reports the cluster as ok.
    for port in &ports {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let out = Command::new("redis-cli")
                .args(["-p", &port.to_string(), "cluster", "info"])
                .output()
                .await
                .expect("redis-cli");
            if String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok") {
                break;
            }
            assert!(Instant::now() < until, "cluster did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let urls = ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    (nodes, urls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_holds_the_limits_and_the_cache() {
    let dir = std::env::temp_dir().join(format!("neuropia-cluster-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (nodes, urls) = start_redis_cluster(&dir).await;
    let mock = mock_upstream().await;
    let app = TestApp::spawn_with(|c| {
        c.redis_url = neuropia::config::Secret::new(urls.clone());
        c.rate_limit_backend = Some(neuropia::config::RateLimitBackend::Redis);
    })
    .await;
    app.route_to_mock("qwen-turbo", &mock, "0.001", "0.002")
        .await;
    let Customer { key, .. } = app
        .customer(
            "cluster@example.com",
            "100",
            json!({"name": "rpm30", "rate_limit_rpm": 30}),
        )
        .await;
    let apis = [Api::connect(app.base.clone()).await];
    let per = burst(&apis, &key, 60).await;
    assert_eq!(count(&per, StatusCode::OK), 30, "{per:?}");
    let h = app.health().await;
    assert_eq!(h["redis"], "ok", "{h}");
    assert_eq!(h["rate_limits"]["global"], true, "{h}");
    assert!(h["rate_limits"]["checks"].as_u64().unwrap() >= 60, "{h}");
    // The limiter's keys are in the cluster, and the cache wrote the key there too.
    let client = redis::cluster::ClusterClient::new(urls.split(',').collect::<Vec<_>>()).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    let key_id: Uuid = sqlx::query_scalar("SELECT data.virtual_key_id_of($1)")
        .bind(&key)
        .fetch_one(app.pool())
        .await
        .unwrap();
    let tat: Option<String> = redis::cmd("GET")
        .arg(format!("ratelimit:{{{key_id}}}:rpm"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(tat.is_some(), "the rpm state lives in the cluster");
    let cached: i64 = redis::cmd("EXISTS")
        .arg(format!(
            "virtual_key:{}",
            neuropia::auth::KeyHash::of(&key).to_hex()
        ))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(cached, 1, "the key's record is cached in the cluster");
    app.stop().await;
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A journal entry as another instance's stale balance actor would have written it.
fn stale_entry(
    user_id: Uuid,
    delta: &str,
    status: neuropia::billing::AccountStatus,
    seen: &str,
) -> Arc<neuropia::journal::EntryData> {
    Arc::new(neuropia::journal::EntryData {
        seq: 1,
        request_id: format!("topup:stale:{}", Uuid::new_v4()),
        user_id,
        delta: d(delta),
        status_after: status,
        balance_after: d(seen),
        created_at: chrono::Utc::now(),
        kind: neuropia::journal::EntryKind::TopUp { note: None },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_balance_settles_the_status_an_instance_decided_on_a_stale_view() {
    use neuropia::billing::AccountStatus::{Active, Overdue};
    let app = TestApp::spawn().await;
    let (user, _) = app.register("stale@example.com").await;
    app.top_up(user, "10").await;
    app.settle_journal().await;
    let commit = |entry| async {
        let (tx, outcome) =
            neuropia::db::ledger::prepare_batch(app.pool(), &[entry], Some(Uuid::new_v4()))
                .await
                .unwrap();
        tx.commit().await.unwrap();
        let after = &outcome.balances[0];
        (after.balance, after.status)
    };
    // An instance that missed the top-up saw -1 after its entry and decided `overdue`; the
    // global balance is 9: the account stays active.
    assert_eq!(
        commit(stale_entry(user, "-1", Overdue, "-1")).await,
        (d("9"), Active)
    );
    // An instance that missed others' charges saw 5 and left it `active`; the global
    // balance is -11: overdue.
    assert_eq!(
        commit(stale_entry(user, "-20", Active, "5")).await,
        (d("-11"), Overdue)
    );
    // One that saw the balance positive but kept `overdue` (a top-up below the threshold)
    // is left overdue, even with a positive global balance.
    assert_eq!(
        commit(stale_entry(user, "12", Overdue, "1")).await,
        (d("1"), Overdue)
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_reservations_count_every_instance_and_expire_when_their_instance_dies() {
    use neuropia::reservations::{GlobalReservations, Shared};
    let url = neuropia::config::Secret::new("redis://127.0.0.1:6379");
    let conn = neuropia::redis_conn::RedisConn::connect(&url, false)
        .await
        .expect("the test Redis");
    let limiter = neuropia::ratelimit::GlobalLimiter::start(url, false, Some(conn), 2);
    // Two instances' handles on the same Redis; entries live 300 ms past their instance's
    // last refresh (every 100 ms).
    let a = GlobalReservations::new(limiter.clone(), Duration::from_millis(300));
    let b = GlobalReservations::new(limiter, Duration::from_millis(300));
    let user = Uuid::new_v4();
    let (r1, r2, r3) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let reserve = |g: &GlobalReservations, id, amount: &str, view: &str, version| {
        let (g, amount, view) = (g.clone(), d(amount), d(view));
        async move { g.reserve(user, id, amount, view, version).await }
    };
    // Balance 1 at version 1: A's 0.6 leaves 0.4 for B, which B's 0.4 takes whole.
    assert_eq!(reserve(&a, r1, "0.6", "1", 1).await, Shared::Reserved);
    assert_eq!(reserve(&b, r2, "0.41", "1", 1).await, Shared::Refused);
    assert_eq!(reserve(&b, r2, "0.4", "1", 1).await, Shared::Reserved);
    assert_eq!(reserve(&a, r3, "0.01", "1", 1).await, Shared::Refused);
    // A's call is committed at version 2 (charge 0.6). B has not heard of it yet: its view
    // (1 at version 1) lacks the charge, which must still count: 1 - 0.6 - 0.4 (r2) = 0.
    a.committed([(user, Some(2), r1.to_string().as_str())].into_iter());
    // The commit runs in the background: wait until Redis has it.
    let redis = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let conn = redis.get_multiplexed_async_connection().await.unwrap();
    eventually(5, "the commit reached Redis", || {
        let mut conn = conn.clone();
        async move {
            redis::cmd("HEXISTS")
                .arg(format!("reserve:{{{user}}}"))
                .arg("c:2")
                .query_async::<bool>(&mut conn)
                .await
                .unwrap_or(false)
        }
    })
    .await;
    assert_eq!(reserve(&b, r3, "0.01", "1", 1).await, Shared::Refused);
    // Once B's view is at version 2 it includes the charge, which no longer counts twice:
    // 0.41 - 0.4 (r2) leaves exactly 0.01.
    assert_eq!(reserve(&b, r3, "0.01", "0.4", 2).await, Shared::Refused);
    assert_eq!(reserve(&b, r3, "0.01", "0.41", 2).await, Shared::Reserved);
    b.release(user, r3);
    // A live instance keeps its entries past their first deadline (it refreshes them)...
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(reserve(&a, r3, "0.3", "0.4", 2).await, Shared::Refused);
    // ...and when B dies with r2 open, r2 expires and the refusal path drops it.
    drop(b);
    let a = &a;
    eventually(5, "B's reservation expired", || async move {
        reserve(a, r3, "0.3", "0.4", 2).await == Shared::Reserved
    })
    .await;
}
