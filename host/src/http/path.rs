//! The path a guest sees, resolved once so that the token's `path-prefix` check and the guest
//! agree on it.
//!
//! Invariant: the result has no dot segments, literal (`..`) or percent-encoded (`%2e%2E`), so
//! `/api/../admin` and `/api/%2e%2e/admin` both become `/admin` before any caveat looks at them,
//! and the guest receives exactly that path. Everything else (other escapes, empty segments)
//! is passed through untouched: resolving only what RFC 3986 says to remove.

/// `/{rest}` with dot segments removed (RFC 3986 §5.2.4, with `%2e` read as `.`); `..` at the
/// root stays at the root.
pub fn guest_path(rest: &str) -> String {
    // Nearly every path has no dot segment: it comes through as it is, in one allocation.
    if !rest.split('/').any(|segment| dot_segment(segment).is_some()) {
        let mut path = String::with_capacity(rest.len() + 1);
        path.push('/');
        path.push_str(rest);
        return path;
    }
    let mut kept: Vec<&str> = Vec::new();
    let segments: Vec<&str> = rest.split('/').collect();
    let mut ends_in_directory = false;
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match dot_segment(segment) {
            Some(Dot::Current) => ends_in_directory = last,
            Some(Dot::Parent) => {
                kept.pop();
                ends_in_directory = last;
            }
            None => {
                kept.push(segment);
                ends_in_directory = false;
            }
        }
    }
    let mut path = format!("/{}", kept.join("/"));
    if ends_in_directory && !path.ends_with('/') {
        path.push('/');
    }
    path
}

enum Dot {
    Current,
    Parent,
}

/// `.` or `..`, each dot written as itself or as `%2e` / `%2E`.
fn dot_segment(segment: &str) -> Option<Dot> {
    let mut dots = 0;
    let mut rest = segment.as_bytes();
    while !rest.is_empty() {
        match rest {
            [b'.', tail @ ..] => rest = tail,
            [b'%', b'2', b'e' | b'E', tail @ ..] => rest = tail,
            _ => return None,
        }
        dots += 1;
    }
    match dots {
        1 => Some(Dot::Current),
        2 => Some(Dot::Parent),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::guest_path;

    #[test]
    fn dot_segments_are_resolved_literal_or_encoded() {
        assert_eq!(guest_path("api/../admin"), "/admin");
        assert_eq!(guest_path("api/%2e%2e/admin"), "/admin");
        assert_eq!(guest_path("api/%2E./admin"), "/admin");
        assert_eq!(guest_path("api/./x"), "/api/x");
        assert_eq!(guest_path("../../etc"), "/etc");
        assert_eq!(guest_path("api/.."), "/");
        assert_eq!(guest_path("a/b/."), "/a/b/");
    }

    #[test]
    fn everything_else_passes_through() {
        assert_eq!(guest_path(""), "/");
        assert_eq!(guest_path("world"), "/world");
        assert_eq!(guest_path("api/"), "/api/");
        assert_eq!(guest_path("a//b"), "/a//b");
        assert_eq!(guest_path("..%2fadmin"), "/..%2fadmin");
        assert_eq!(guest_path("..."), "/...");
        assert_eq!(guest_path(".hidden/%41"), "/.hidden/%41");
    }
}
