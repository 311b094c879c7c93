//! [`DbError`]: what a database call's failure means to its caller, with PostgreSQL's
//! SQLSTATEs mapped here, once, and never looked at above `db/`.

/// Why a database call failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A row the call needs does not exist: no row, `no_data_found` raised by a function
    /// (P0002), or a reference to a missing row (23503).
    #[error("not found")]
    NotFound,
    /// A function refused an argument (22023), in its own words.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A unique value is taken (23505).
    #[error("already exists")]
    Conflict,
    /// Every connection is busy.
    #[error("the database is busy")]
    Busy,
    /// The database cannot be reached.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a bug or a broken invariant, for the log only.
    #[error("database: {0}")]
    Other(sqlx::Error),
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        if matches!(e, sqlx::Error::RowNotFound) {
            return Self::NotFound;
        }
        if matches!(e, sqlx::Error::PoolTimedOut) {
            return Self::Busy;
        }
        if matches!(e, sqlx::Error::PoolClosed | sqlx::Error::Io(_)) {
            return Self::Unavailable(e.to_string());
        }
        let Some(db) = e.as_database_error() else {
            return Self::Other(e);
        };
        match db.code().as_deref() {
            Some("P0002" | "23503") => Self::NotFound,
            Some("22023") => Self::Invalid(db.message().to_owned()),
            Some("23505") => Self::Conflict,
            _ => Self::Other(e),
        }
    }
}

impl DbError {
    /// The function's refusal, if it is one of `ours` (messages the schema's functions
    /// raise on purpose and a client may read); anything else stays in the log.
    pub fn said(&self, ours: &[&str]) -> Option<&str> {
        match self {
            Self::Invalid(m) if ours.contains(&m.as_str()) => Some(m),
            _ => None,
        }
    }
}
