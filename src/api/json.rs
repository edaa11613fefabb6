//! JSON request bodies: strict parsing into a route's body type and the contract's errors for
//! what is wrong — 400 `invalid_json` for bytes that are not JSON, 422 `unknown_field`,
//! `missing_field` or `invalid_type` naming the field. RFC 3339 timestamps for responses.

use serde::de::DeserializeOwned;

use super::error::{ApiError, ErrorType};

/// Parses `body` as `T` (whose serde attributes deny unknown fields).
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| {
        use serde_json::error::Category;
        match error.classify() {
            Category::Syntax | Category::Eof | Category::Io => ApiError::new(
                400,
                ErrorType::InvalidRequestError,
                "invalid_json",
                "The request body is not valid JSON.",
            ),
            Category::Data => data_error(&error.to_string()),
        }
    })
}

/// serde's data errors name the field between backticks; turn them into the contract's codes.
fn data_error(message: &str) -> ApiError {
    let field = message.split('`').nth(1).map(str::to_string);
    let (code, text) = if message.starts_with("unknown field") {
        (
            "unknown_field",
            "The request body has a field this route does not take.",
        )
    } else if message.starts_with("missing field") {
        ("missing_field", "The request body lacks a required field.")
    } else {
        (
            "invalid_type",
            "A field of the request body has the wrong type or value.",
        )
    };
    let error = ApiError::new(422, ErrorType::InvalidRequestError, code, text);
    match field {
        Some(field) if code != "invalid_type" => error.with_param(field),
        _ => error,
    }
}

/// Formats Unix milliseconds as RFC 3339 UTC with millisecond precision.
pub fn rfc3339(unix_ms: u64) -> String {
    let seconds = unix_ms / 1000;
    let millis = unix_ms % 1000;
    let days = (seconds / 86_400) as i64;
    let in_day = seconds % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60
    )
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        count: u32,
    }

    #[test]
    fn errors_name_the_field() {
        let error = parse_body::<Body>(b"{\"name\":\"a\"}").unwrap_err();
        assert_eq!(
            (error.status, error.code, error.param.as_deref()),
            (422, "missing_field", Some("count"))
        );
        let error = parse_body::<Body>(b"{\"name\":\"a\",\"count\":1,\"x\":1}").unwrap_err();
        assert_eq!(
            (error.status, error.code, error.param.as_deref()),
            (422, "unknown_field", Some("x"))
        );
        let error = parse_body::<Body>(b"{\"name\":1,\"count\":1}").unwrap_err();
        assert_eq!((error.status, error.code), (422, "invalid_type"));
        for bad in [&b""[..], b"{", b"nope", b"{\"name\":\"a\",}"] {
            assert_eq!(parse_body::<Body>(bad).unwrap_err().code, "invalid_json");
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_795_861_365_000), "2026-11-28T10:22:45.000Z");
    }
}
