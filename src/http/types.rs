//! Shapes shared by many endpoints: the error body (from [`super::error`]), paging,
//! optional-field helpers.

use serde::{Deserialize, Deserializer};
use utoipa::IntoParams;

use super::error::ApiError;
pub use super::error::{ErrorBody, ErrorDetail};

/// Offset paging.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// At most this many items (1 to 500, default 100).
    pub limit: Option<i64>,
    /// Skip this many items (default 0).
    pub offset: Option<i64>,
}

impl Page {
    pub fn bounds(&self) -> Result<(i64, i64), ApiError> {
        let limit = self.limit.unwrap_or(100);
        let offset = self.offset.unwrap_or(0);
        if !(1..=500).contains(&limit) {
            return Err(ApiError::bad_request("limit must be between 1 and 500"));
        }
        if offset < 0 {
            return Err(ApiError::bad_request("offset must not be negative"));
        }
        Ok((limit, offset))
    }
}

/// For `Option<Option<T>>` fields: absent stays `None`, `null` becomes `Some(None)`.
pub fn some<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A query string that fails to parse is the client's mistake.
pub fn query<T>(
    q: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    q.map(|axum::extract::Query(v)| v)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct P {
        #[serde(default, deserialize_with = "some")]
        v: Option<Option<i32>>,
    }

    #[test]
    fn absent_null_and_value_differ() {
        let p = |s: &str| serde_json::from_str::<P>(s).map(|p| p.v).ok();
        assert_eq!(p("{}"), Some(None));
        assert_eq!(p(r#"{"v": null}"#), Some(Some(None)));
        assert_eq!(p(r#"{"v": 3}"#), Some(Some(Some(3))));
    }

    #[test]
    fn paging_is_bounded() {
        assert_eq!(
            Page {
                limit: None,
                offset: None
            }
            .bounds()
            .ok(),
            Some((100, 0))
        );
        assert!(
            Page {
                limit: Some(0),
                offset: None
            }
            .bounds()
            .is_err()
        );
        assert!(
            Page {
                limit: Some(10),
                offset: Some(-1)
            }
            .bounds()
            .is_err()
        );
    }
}
