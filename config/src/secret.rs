//! Secrets that cannot leak by accident.
//!
//! A bot token or a broker password must never reach a log line, an error
//! message or a metric label. [`Secret`] has no `Display`, and its `Debug`
//! prints a fixed placeholder, so `{:?}` on any config struct is safe to log.
//! The only way to the value is [`Secret::expose`], which is easy to grep for.

use serde::{Deserialize, Deserializer};
use std::fmt;

/// A string that redacts itself in `Debug` and has no `Display`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself. Call it only where the secret is sent to its owner
    /// (the gateway, the broker, Redis), never to build a message.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no value was given.
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }

    /// True when `given` equals the value, compared in time that depends
    /// only on the value's length, never on where the two differ. An empty
    /// secret matches nothing.
    pub fn matches(&self, given: &str) -> bool {
        let want = self.0.as_bytes();
        let got = given.as_bytes();
        if want.is_empty() {
            return false;
        }
        let mut diff = u8::from(want.len() != got.len());
        for (i, w) in want.iter().enumerate() {
            diff |= w ^ got.get(i).copied().unwrap_or(0);
        }
        std::hint::black_box(diff) == 0
    }

    /// True when an HTTP `Authorization` header value is `Bearer <value>`
    /// (the scheme is case-insensitive, RFC 7235), compared as in
    /// [`Secret::matches`].
    pub fn matches_bearer(&self, authorization: Option<&str>) -> bool {
        let token = authorization
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map_or("", |(_, token)| token.trim());
        self.matches(token)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("Secret(<empty>)")
        } else {
            f.write_str("Secret(<redacted>)")
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Environment overrides are parsed as TOML values, so a numeric
        // password arrives as an integer; accept it as its digits.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Int(i64),
        }
        Ok(match Raw::deserialize(deserializer)? {
            Raw::Text(s) => Secret(s),
            Raw::Int(i) => Secret(i.to_string()),
        })
    }
}

/// Replaces the password of a `scheme://user:password@host/...` URL with
/// `***`, for logging a broker or Redis address.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let user = userinfo.split(':').next().unwrap_or("");
    format!("{}://{}:***@{}", &url[..scheme_end], user, &rest[at + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("MTIz.very-secret-token");
        let shown = format!("{s:?}");
        assert!(!shown.contains("very-secret"), "{shown}");
        assert_eq!(shown, "Secret(<redacted>)");
        assert_eq!(format!("{:?}", Secret::default()), "Secret(<empty>)");
    }

    #[test]
    fn matches_only_the_whole_value() {
        let s = Secret::new("s3cret-token");
        assert!(s.matches("s3cret-token"));
        for wrong in [
            "",
            "s3cret",
            "s3cret-token2",
            "S3cret-token",
            "x3cret-token",
        ] {
            assert!(!s.matches(wrong), "{wrong}");
        }
        assert!(!Secret::default().matches(""));
        assert!(s.matches_bearer(Some("Bearer s3cret-token")));
        assert!(s.matches_bearer(Some("bearer s3cret-token")));
        for wrong in [
            None,
            Some(""),
            Some("s3cret-token"),
            Some("Basic s3cret-token"),
            Some("Bearer "),
            Some("Bearer s3cret"),
        ] {
            assert!(!s.matches_bearer(wrong), "{wrong:?}");
        }
        assert!(!Secret::default().matches_bearer(Some("Bearer ")));
    }

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(
            redact_url("amqp://guest:hunter2@rabbit:5672/%2f"),
            "amqp://guest:***@rabbit:5672/%2f"
        );
        assert_eq!(redact_url("redis://:pw@r:6379"), "redis://:***@r:6379");
        assert_eq!(redact_url("redis://r:6379"), "redis://r:6379");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
