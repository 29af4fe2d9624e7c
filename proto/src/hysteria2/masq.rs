//! Masquerade, the sans-IO part: what a Hysteria 2 node's web server makes of a request that
//! is not an authenticated client's. The data plane (`node/masq.rs`) does the I/O: it reads
//! files, or proxies to a web server over HTTP/1.1, and streams the answer back as HTTP/3.
//!
//! * file mode: a request path becomes a path under the node's directory
//!   ([`resolve_path`]): percent-decoded, `.`/`..`/empty segments and NUL refused, so no
//!   request names anything above the directory (symbolic links are the data plane's to
//!   check: it resolves the path and requires it to stay under the directory);
//! * proxy mode: the request's method, path, headers and body go to the upstream, less the
//!   hop-by-hop headers of HTTP/1.1 and the client's `Hysteria-*` headers (a wrong password
//!   is not passed on to a third party), with `Host` set to the upstream's; the answer comes
//!   back without its hop-by-hop headers ([`forward_request_header`],
//!   [`forward_response_header`], [`upstream_path`]).

use super::h3;

/// Answers of the masquerade's own (errors, redirects): a plain text body like Go's
/// `http.Error` writes.
pub fn text_response(status: u16, extra: &[(&str, &str)], body: &str) -> Vec<u8> {
    let len = body.len().to_string();
    let mut headers = vec![
        ("content-type", "text/plain; charset=utf-8"),
        ("x-content-type-options", "nosniff"),
        ("content-length", len.as_str()),
    ];
    headers.extend_from_slice(extra);
    h3::response(status, &headers, body.as_bytes())
}

/// A request path resolved under the served directory.
#[derive(Debug, PartialEq, Eq)]
pub struct FilePath {
    /// Decoded segments, none empty, `.` or `..`, none with `/` or NUL.
    pub segments: Vec<String>,
    /// The path ended with `/` (a directory is asked for: its `index.html`).
    pub trailing_slash: bool,
}

impl FilePath {
    /// The segments joined with `/` (relative to the served directory).
    pub fn relative(&self) -> String {
        self.segments.join("/")
    }
}

/// Resolves a request's `:path` (query and fragment dropped) to segments under the served
/// directory. `None` for anything that is not an absolute path, does not percent-decode to
/// UTF-8, or has a `.`/`..` segment, a NUL or a backslash: answered as not found.
pub fn resolve_path(path: &str) -> Option<FilePath> {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let rest = path.strip_prefix('/')?;
    let mut segments = Vec::new();
    for raw in rest.split('/') {
        if raw.is_empty() {
            continue;
        }
        let seg = percent_decode(raw)?;
        // `%2F` would smuggle a separator into one segment, `%00` end a C string; a
        // backslash is a separator to nobody here, but to some readers of our logs.
        if seg.is_empty() || seg == "." || seg == ".." || seg.contains(['/', '\0', '\\']) {
            return None;
        }
        segments.push(seg);
    }
    // Bounded by the request head's size already; this keeps a path of many empty segments
    // from becoming work.
    if segments.len() > 64 {
        return None;
    }
    Some(FilePath {
        segments,
        trailing_slash: rest.is_empty() || rest.ends_with('/'),
    })
}

/// `%XX` decoding (RFC 3986); `None` for a bad escape or bytes that are not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The `Content-Type` of a file by its extension (the common web types; anything else is
/// `application/octet-stream`, which a browser downloads rather than renders).
pub fn content_type(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "xml" => "text/xml; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "pdf" => "application/pdf",
        "wasm" => "application/wasm",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        _ => "application/octet-stream",
    }
}

/// The upstream request target: the upstream URL's path, then the request's path and query.
/// `None` when the request has no absolute path (`*`, an absolute URI): answered 400.
pub fn upstream_path(base: &str, request_path: &str) -> Option<String> {
    if !request_path.starts_with('/') {
        return None;
    }
    Some(format!("{base}{request_path}"))
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and those HTTP/1.1 frames the message with: never
/// copied from one connection to the other.
fn hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
    )
}

/// Whether a client's request header goes to the upstream (lower-case `name`). Not the
/// hop-by-hop ones, not `content-length` (the proxy frames the body it forwards), and not
/// Hysteria's own: a wrong password stays here.
pub fn forward_request_header(name: &str) -> bool {
    !hop_by_hop(name) && name != "content-length" && !name.starts_with("hysteria-")
}

/// Whether an upstream response header goes back to the client (lower-case `name`): not the
/// hop-by-hop ones (HTTP/3 frames the body itself).
pub fn forward_response_header(name: &str) -> bool {
    !hop_by_hop(name) && name != "alt-svc"
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn segs(p: &str) -> Option<(String, bool)> {
        resolve_path(p).map(|f| (f.relative(), f.trailing_slash))
    }

    #[test]
    fn paths_stay_under_the_directory() {
        assert_eq!(segs("/"), Some((String::new(), true)));
        assert_eq!(segs("/index.html"), Some(("index.html".into(), false)));
        assert_eq!(segs("/a/b/"), Some(("a/b".into(), true)));
        assert_eq!(segs("/a//b?x=1#f"), Some(("a/b".into(), false)));
        assert_eq!(segs("/%E4%BD%A0%20x.txt"), Some(("你 x.txt".into(), false)));
        for bad in [
            "/..",
            "/../etc/passwd",
            "/a/../../b",
            "/a/%2e%2e/b",
            "/%2E%2E",
            "/./a",
            "/a%2Fb",
            "/a%00b",
            "/a\\..\\b",
            "/%zz",
            "/%4",
            "/%ff",
            "a/b",
            "*",
            "",
            "http://x/y",
        ] {
            assert_eq!(resolve_path(bad), None, "{bad}");
        }
        let deep = "/a".repeat(65);
        assert_eq!(resolve_path(&deep), None);
    }

    #[test]
    fn content_types_by_extension() {
        assert_eq!(content_type("index.HTML"), "text/html; charset=utf-8");
        assert_eq!(content_type("a.b.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("x.png"), "image/png");
        assert_eq!(content_type("noext"), "application/octet-stream");
        assert_eq!(content_type("x.exe"), "application/octet-stream");
    }

    #[test]
    fn request_mapping() {
        assert_eq!(upstream_path("", "/a?b=1").as_deref(), Some("/a?b=1"));
        assert_eq!(upstream_path("/site", "/").as_deref(), Some("/site/"));
        assert_eq!(upstream_path("", "*"), None);
        assert_eq!(upstream_path("", "https://x/"), None);
        for h in [
            "user-agent",
            "accept",
            "cookie",
            "content-type",
            "x-forwarded-for",
        ] {
            assert!(forward_request_header(h), "{h}");
        }
        for h in [
            "host",
            "connection",
            "transfer-encoding",
            "content-length",
            "te",
            "upgrade",
            "hysteria-auth",
            "hysteria-cc-rx",
            "hysteria-padding",
        ] {
            assert!(!forward_request_header(h), "{h}");
        }
        assert!(forward_response_header("content-length"));
        assert!(forward_response_header("set-cookie"));
        assert!(!forward_response_header("transfer-encoding"));
        assert!(!forward_response_header("connection"));
    }

    #[test]
    fn body_frames_pass_through_in_pieces() {
        let mut wire = Vec::new();
        h3::put_frame(&mut wire, 0x21, b"grease");
        h3::put_frame(&mut wire, h3::FRAME_DATA, b"hello ");
        h3::put_frame(&mut wire, h3::FRAME_DATA, &[b'x'; 300]);
        h3::put_frame(&mut wire, h3::FRAME_HEADERS, &[0, 0]);
        // Every split point gives the same body.
        for cut in 0..wire.len() {
            let mut d = h3::BodyDecoder::default();
            let mut body = Vec::new();
            let (a, b) = wire.split_at(cut);
            let used = d.decode(a, &mut body).unwrap();
            let mut rest = a[used..].to_vec();
            rest.extend_from_slice(b);
            let used2 = d.decode(&rest, &mut body).unwrap();
            assert_eq!(used2, rest.len(), "cut {cut}");
            assert!(d.at_frame_boundary());
            assert_eq!(body.len(), 306);
            assert!(body.starts_with(b"hello x"));
        }
        // DATA after the trailers, a control frame: errors.
        let mut bad = wire.clone();
        h3::put_frame(&mut bad, h3::FRAME_DATA, b"late");
        assert!(h3::BodyDecoder::default().decode(&bad, &mut Vec::new()).is_err());
        let mut bad = Vec::new();
        h3::put_frame(&mut bad, h3::FRAME_SETTINGS, b"");
        assert!(h3::BodyDecoder::default().decode(&bad, &mut Vec::new()).is_err());
    }
}
