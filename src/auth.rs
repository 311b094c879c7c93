//! Identities: platform logins (argon2id passwords, HS256 JWTs) and virtual keys (SHA-256).

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    PlatformAdmin,
    TenantAdmin,
    User,
}

impl Role {
    /// Higher acts on lower: a caller acts on a user of a lower rank (or on itself) only.
    pub fn rank(self) -> u8 {
        match self {
            Self::PlatformAdmin => 2,
            Self::TenantAdmin => 1,
            Self::User => 0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PlatformAdmin => "platform_admin",
            Self::TenantAdmin => "tenant_admin",
            Self::User => "user",
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "platform_admin" => Ok(Self::PlatformAdmin),
            "tenant_admin" => Ok(Self::TenantAdmin),
            "user" => Ok(Self::User),
            other => Err(format!("unknown role {other:?}")),
        }
    }
}

/// SHA-256 of a virtual key's plaintext: the only form in which keys are stored, cached
/// or logged. `Debug` shows a short prefix only.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    pub fn of(plaintext: &str) -> Self {
        Self(Sha256::digest(plaintext.as_bytes()).into())
    }

    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(HEX[usize::from(b >> 4)] as char);
            s.push(HEX[usize::from(b & 15)] as char);
        }
        s
    }

    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
            let s = std::str::from_utf8(chunk).ok()?;
            out[i] = u8::from_str_radix(s, 16).ok()?;
        }
        Some(Self(out))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({}..)", &self.to_hex()[..12])
    }
}

/// The one form of an email used to find its login and to throttle its sign-ins: trimmed,
/// ASCII letters lower-cased, everything else as given (PostgreSQL computes the same into
/// the generated column `auth.login.email_norm`).
pub fn normalise_email(email: &str) -> String {
    email.trim().to_ascii_lowercase()
}

/// The password policy: at least 10 characters, at least two kinds of characters (lower
/// case, upper case, digits, others), not one of the most common passwords, and not the
/// email's local part or the username.
pub fn check_password_strength(password: &str, email: &str, username: &str) -> Result<(), String> {
    const COMMON: &[&str] = &[
        "password",
        "password1",
        "password12",
        "password123",
        "password1234",
        "passw0rd",
        "1234567890",
        "12345678910",
        "qwertyuiop",
        "qwerty1234",
        "qwerty12345",
        "1q2w3e4r5t",
        "iloveyou12",
        "abcdefghij",
        "abc1234567",
        "letmein123",
        "welcome123",
        "admin12345",
        "administrator",
        "changeme123",
        "trustno1234",
        "football12",
        "baseball12",
        "sunshine12",
        "princess12",
        "dragon1234",
        "monkey1234",
        "0987654321",
        "1111111111",
        "aaaaaaaaaa",
        "zaq12wsxcde",
        "p@ssw0rd12",
        "p@ssword123",
    ];
    if password.chars().count() < 10 {
        return Err("password must be at least 10 characters".into());
    }
    if password.len() > 256 {
        return Err("password must be at most 256 bytes".into());
    }
    let kinds = [
        password.chars().any(|c| c.is_lowercase()),
        password.chars().any(|c| c.is_uppercase()),
        password.chars().any(|c| c.is_ascii_digit()),
        password.chars().any(|c| !c.is_alphanumeric()),
    ];
    if kinds.iter().filter(|k| **k).count() < 2 {
        return Err(
            "password needs at least two of: lower case, upper case, digits, other characters"
                .into(),
        );
    }
    let lower = password.to_lowercase();
    if COMMON.contains(&lower.as_str()) {
        return Err("password is too common".into());
    }
    let local = email.split('@').next().unwrap_or("").to_lowercase();
    if lower == local || lower == username.to_lowercase() {
        return Err("password must not be the email or the username".into());
    }
    Ok(())
}

/// Why a password could not be hashed or checked now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    /// Too many hashes are waiting for a turn.
    #[error("too many password checks are waiting")]
    Busy,
    #[error("{0}")]
    Failed(String),
}

/// Password hashes waiting for a turn beyond which callers are told to come back.
const HASH_QUEUE: usize = 64;

/// Runs argon2 work on the blocking pool, at most one per core at a time (each hash holds
/// about 19 MiB while it runs), with at most [`HASH_QUEUE`] callers waiting.
async fn bounded<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, HashError> {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicUsize, Ordering};
    static TURNS: OnceLock<std::sync::Arc<tokio::sync::Semaphore>> = OnceLock::new();
    static WAITING: AtomicUsize = AtomicUsize::new(0);
    struct Waiting;
    impl Drop for Waiting {
        fn drop(&mut self) {
            WAITING.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let turns = TURNS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        std::sync::Arc::new(tokio::sync::Semaphore::new(cores))
    });
    if WAITING.fetch_add(1, Ordering::SeqCst) >= HASH_QUEUE {
        WAITING.fetch_sub(1, Ordering::SeqCst);
        return Err(HashError::Busy);
    }
    let waiting = Waiting;
    let turn = turns
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| HashError::Failed(e.to_string()))?;
    drop(waiting);
    // The turn goes with the work: a caller that hangs up does not free it while the hash
    // still runs.
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        work()
    })
    .await
    .map_err(|e| HashError::Failed(e.to_string()))
}

/// [`hash_password`] on the bounded pool.
pub async fn hash_password_bounded(password: String) -> Result<String, HashError> {
    bounded(move || hash_password(&password))
        .await?
        .map_err(HashError::Failed)
}

/// [`verify_password`] on the bounded pool. Without a stored hash (no such login) the
/// password is checked against a hash of nothing anyone knows, so a missing account costs
/// what a real one does and is not told apart by timing.
pub async fn verify_password_bounded(
    password: String,
    phc: Option<String>,
) -> Result<bool, HashError> {
    bounded(move || match phc {
        Some(phc) => verify_password(&password, &phc),
        None => {
            let _ = verify_password(&password, dummy_hash());
            false
        }
    })
    .await
}

fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let secret = random_hex32().unwrap_or_default();
        hash_password(&secret).unwrap_or_default()
    })
}

/// Hashes a password with argon2id (default parameters, random salt). CPU-heavy: call it
/// through [`hash_password_bounded`].
pub fn hash_password(password: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing failed: {e}"))
}

/// Checks a password against a stored PHC string. CPU-heavy, like [`hash_password`].
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// The claims of a platform JWT.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: Uuid,
    pub role: Role,
    pub tenant_id: Uuid,
    pub exp: u64,
    pub iat: u64,
    /// The login's token version when the token was issued: a token older than the
    /// login's current version is refused.
    #[serde(default)]
    pub ver: i32,
}

/// Signs and checks platform JWTs (HS256).
pub struct Jwt {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl_secs: u64,
}

impl Jwt {
    pub fn new(secret: &[u8], ttl_secs: u64) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            ttl_secs,
        }
    }

    pub fn issue(
        &self,
        sub: Uuid,
        role: Role,
        tenant_id: Uuid,
        ver: i32,
    ) -> Result<(String, u64), String> {
        let now = now_secs();
        let claims = Claims {
            sub,
            role,
            tenant_id,
            exp: now + self.ttl_secs,
            iat: now,
            ver,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map(|t| (t, claims.exp))
            .map_err(|e| format!("signing failed: {e}"))
    }

    pub fn verify(&self, token: &str) -> Option<Claims> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .ok()
            .map(|d| d.claims)
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// 32 random bytes as hex, for generated secrets.
pub fn random_hex32() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    Ok(KeyHash(bytes).to_hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hash_is_sha256_hex() {
        // The FIPS 180-2 test vector for "abc".
        let h = KeyHash::of("abc");
        assert_eq!(
            h.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(KeyHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(KeyHash::from_hex("zz"), None);
        assert!(!format!("{h:?}").contains(&h.to_hex()));
    }

    #[test]
    fn password_policy() {
        let ok = |p: &str| check_password_strength(p, "alice.smith@example.com", "alice");
        assert!(ok("correct-horse").is_ok());
        assert!(ok("Tr0ub4dor&3").is_ok());
        assert!(ok("short-1").is_err(), "too short");
        assert!(ok("alllowercaseletters").is_err(), "one kind only");
        assert!(ok("Password123").is_err(), "too common");
        assert!(check_password_strength("alice.smith", "alice.smith@example.com", "a").is_err());
    }

    #[test]
    fn passwords_round_trip() {
        let phc = hash_password("correct horse battery").expect("hash");
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &phc));
        assert!(!verify_password("wrong", &phc));
        assert!(!verify_password("x", "not a phc string"));
    }

    #[test]
    fn jwt_round_trips_and_rejects_tampering() {
        let jwt = Jwt::new(b"0123456789abcdef0123", 60);
        let (u, t) = (Uuid::new_v4(), Uuid::new_v4());
        let (token, _) = jwt.issue(u, Role::User, t, 3).expect("token");
        let claims = jwt.verify(&token).expect("valid");
        assert_eq!(
            (claims.sub, claims.role, claims.tenant_id, claims.ver),
            (u, Role::User, t, 3)
        );
        let other = Jwt::new(b"another-secret-of-length", 60);
        assert!(other.verify(&token).is_none());
        assert!(jwt.verify("garbage").is_none());
        let expired = Jwt::new(b"0123456789abcdef0123", 0);
        let (old, _) = expired.issue(u, Role::User, t, 0).expect("token");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(jwt.verify(&old).is_none());
    }
}
