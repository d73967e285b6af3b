//! The canonical form of an HTTP request path, for the API: the router, and the admin
//! check on it, see one spelling of each path however a client encodes it.

/// The canonical form of a request path: percent-decoded once, `.` segments dropped, `..`
/// taking the segment before it, empty segments (repeated or trailing slashes) dropped.
/// `None` for a path that does not decode to UTF-8 or climbs above the root.
pub fn normalize_path(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = std::str::from_utf8(bytes.get(at + 1..at + 3)?).ok()?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            at += 3;
        } else {
            decoded.push(bytes[at]);
            at += 1;
        }
    }
    let decoded = String::from_utf8(decoded).ok()?;
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split(['/', '\\']) {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop()?;
            }
            other => segments.push(other),
        }
    }
    Some(format!("/{}", segments.join("/")))
}

/// What `normalize_path` promises of what it returns: the fuzz target and the tests check
/// it. A normalized path starts with `/`, has no empty, `.` or `..` segment and no
/// backslash, and written back as a URI path (`encode_path`) it normalizes to itself.
pub fn check_normalized(normalized: &str) -> Result<(), String> {
    let fail = |why: &str| Err(format!("{normalized:?}: {why}"));
    if !normalized.starts_with('/') {
        return fail("does not start with /");
    }
    if normalized.contains('\\') {
        return fail("holds a backslash");
    }
    if normalized != "/" {
        for segment in normalized[1..].split('/') {
            if matches!(segment, "" | "." | "..") {
                return fail("holds an empty, . or .. segment");
            }
        }
    }
    if normalize_path(&encode_path(normalized)).as_deref() != Some(normalized) {
        return fail("written back as a URI path, does not normalize to itself");
    }
    Ok(())
}

/// A normalized path written back as a URI path: every byte outside RFC 3986's path
/// characters (unreserved, sub-delims, `:`, `@`, `/`) percent-encoded. A `?`, `#`, `%` or
/// space decoded from the request so stays in the path, and is decoded once more only
/// where a handler takes a path parameter, as for any request.
pub fn encode_path(normalized: &str) -> String {
    let mut encoded = String::with_capacity(normalized.len());
    for byte in normalized.bytes() {
        let plain = byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&byte);
        if plain {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalize_before_routing() {
        for (raw, normal) in [
            (
                "/api/v1/admin/payouts/run",
                Some("/api/v1/admin/payouts/run"),
            ),
            (
                "//api//v1/admin/payouts/run/",
                Some("/api/v1/admin/payouts/run"),
            ),
            (
                "/api/v1/./admin/payouts/run",
                Some("/api/v1/admin/payouts/run"),
            ),
            (
                "/api/v1/public/../admin/payouts/run",
                Some("/api/v1/admin/payouts/run"),
            ),
            (
                "/api/v1/%61dmin/payouts/run",
                Some("/api/v1/admin/payouts/run"),
            ),
            (
                "/api/v1%2fadmin%2Fpayouts/run",
                Some("/api/v1/admin/payouts/run"),
            ),
            (
                "/api/v1/%2e%2e/v1/admin/payouts/run",
                Some("/api/v1/admin/payouts/run"),
            ),
            (
                "/api\\v1\\admin/payouts/run",
                Some("/api/v1/admin/payouts/run"),
            ),
            (
                "/api/v1/miners/a%3Fb%25c%20d",
                Some("/api/v1/miners/a?b%c d"),
            ),
            ("/..", None),
            ("/api/%zz", None),
            ("/api/%ff", None),
        ] {
            assert_eq!(normalize_path(raw).as_deref(), normal, "{raw}");
            if let Some(normal) = normal {
                check_normalized(normal).unwrap();
            }
        }
    }
}
