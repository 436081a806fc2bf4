//! Host names as callers give them: literals that bypass DNS, and the
//! normalised cache key.
//!
//! # Algorithm
//! An IP literal (also `[v6]`, as in URLs) and `localhost` (with or without
//! the trailing dot, any case) are answered without DNS, as getaddrinfo
//! does with /etc/hosts. Every other name is keyed in lower case without
//! its trailing dot, so `Gateway.Discord.GG.` and `gateway.discord.gg`
//! share one entry; the key is borrowed unless the name has upper case.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// IP literals and localhost, which never go to DNS.
pub(crate) fn literal(host: &str) -> Option<Arc<[IpAddr]>> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Some(Arc::from([ip]));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.eq_ignore_ascii_case("localhost") {
        return Some(Arc::from([
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]));
    }
    None
}

/// Cache key: lower case, no trailing dot. Allocates only when needed.
pub(crate) fn normalize(host: &str) -> Cow<'_, str> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_bypass_dns() {
        assert_eq!(
            literal("10.0.0.1").as_deref(),
            Some(&[IpAddr::from([10, 0, 0, 1])][..])
        );
        assert_eq!(
            literal("[::1]").as_deref(),
            Some(&[IpAddr::V6(Ipv6Addr::LOCALHOST)][..])
        );
        assert_eq!(literal("LocalHost.").map(|a| a.len()), Some(2));
        assert!(literal("gateway.discord.gg").is_none());
        assert!(literal("").is_none());
    }

    #[test]
    fn keys_are_case_and_dot_insensitive() {
        assert_eq!(normalize("Gateway.Discord.GG."), "gateway.discord.gg");
        assert!(matches!(normalize("a.b"), Cow::Borrowed("a.b")));
    }
}
