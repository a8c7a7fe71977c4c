//! A tiny static file server for the built site (`anoscope serve`).
//!
//! std only: one thread per connection, `GET`/`HEAD` only, bound to 127.0.0.1.
//! Every response carries the cross-origin isolation headers
//! (`Cross-Origin-Opener-Policy: same-origin`,
//! `Cross-Origin-Embedder-Policy: require-corp`,
//! `Cross-Origin-Resource-Policy: same-origin`) so the page may use
//! `SharedArrayBuffer` and wasm threads, and the page's strict
//! Content-Security-Policy ([`CONTENT_SECURITY_POLICY`]). It is a development server, not a
//! production one: no keep-alive, no ranges, no compression.
#![cfg(not(target_arch = "wasm32"))]

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::Context;

/// The policy the page is built to pass: no `eval`, no inline scripts or styles, WebAssembly
/// compilation allowed (`'wasm-unsafe-eval'`), network access only to the site itself and to the
/// checkpoint hosts of `weights/manifest.json` (Hugging Face and its CDN hosts). `www/index.html`
/// and `www/examples/embed.html` carry the same policy as a `<meta>` (minus `frame-ancestors`,
/// which only works as a header) so that static hosting keeps it; a test checks they agree.
pub const CONTENT_SECURITY_POLICY_META: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
     worker-src 'self'; style-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; \
     connect-src 'self' https://huggingface.co https://*.huggingface.co https://*.hf.co; object-src 'none'; \
     base-uri 'none'; form-action 'none'";
/// [`CONTENT_SECURITY_POLICY_META`] plus the header-only `frame-ancestors 'self'`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
     worker-src 'self'; style-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; \
     connect-src 'self' https://huggingface.co https://*.huggingface.co https://*.hf.co; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'self'";

/// Longest request head (request line + headers) accepted, in bytes.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Idle limit for reading a request or writing a response.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves the files under `root` on `http://127.0.0.1:port/` until the process
/// is killed. `port` 0 picks a free port; the URL actually bound is printed.
pub fn serve(root: &Path, port: u16) -> anyhow::Result<()> {
    let root = root
        .canonicalize()
        .with_context(|| format!("serve: cannot open site directory {}", root.display()))?;
    anyhow::ensure!(root.is_dir(), "serve: {} is not a directory", root.display());
    if !root.join("index.html").is_file() {
        eprintln!(
            "warning: {} has no index.html (run ./build.sh build first?)",
            root.display()
        );
    }
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
        .with_context(|| format!("serve: cannot bind 127.0.0.1:{port}"))?;
    let addr = listener.local_addr()?;
    println!("Serving {} at http://{addr}/", root.display());
    println!("(cross-origin isolated: COOP same-origin, COEP require-corp; Ctrl-C to stop)");
    io::stdout().flush().ok();
    serve_listener(listener, &root)
}

/// Accept loop on an already-bound listener (tests bind port 0).
/// `root` should be canonical; it is canonicalised again to be sure.
fn serve_listener(listener: TcpListener, root: &Path) -> anyhow::Result<()> {
    let root = Arc::new(root.canonicalize()?);
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                eprintln!("serve: accept failed: {e}");
                continue;
            }
        };
        let root = Arc::clone(&root);
        thread::spawn(move || {
            if let Err(e) = handle_connection(stream, &root) {
                // Client hung up mid-transfer and the like: log and move on.
                eprintln!("serve: {e}");
            }
        });
    }
    Ok(())
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    extra_headers: Vec<(&'static str, String)>,
    body: Body,
}

enum Body {
    Bytes(Vec<u8>),
    File(File, u64),
}

impl Response {
    fn error(status: u16, reason: &'static str, detail: &str) -> Self {
        let body = format!("{status} {reason}\n{detail}\n").into_bytes();
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            extra_headers: Vec::new(),
            body: Body::Bytes(body),
        }
    }

    fn len(&self) -> u64 {
        match &self.body {
            Body::Bytes(b) => b.len() as u64,
            Body::File(_, n) => *n,
        }
    }
}

fn handle_connection(mut stream: TcpStream, root: &Path) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let (method, target) = match read_request_head(&stream) {
        Ok(Some(rt)) => rt,
        Ok(None) => return Ok(()), // connection closed before a request
        Err(RequestError::Io(e)) => return Err(e),
        Err(RequestError::Bad(why)) => {
            let resp = Response::error(400, "Bad Request", why);
            return write_response(&mut stream, resp, true);
        }
    };
    let head_only = method == "HEAD";
    let resp = if method != "GET" && !head_only {
        let mut r = Response::error(405, "Method Not Allowed", "only GET and HEAD are supported");
        r.extra_headers.push(("Allow", "GET, HEAD".to_string()));
        r
    } else {
        respond(root, &target)
    };
    eprintln!("{method} {target} -> {}", resp.status);
    write_response(&mut stream, resp, head_only)
}

enum RequestError {
    Io(io::Error),
    Bad(&'static str),
}

/// Reads the request line and headers; returns (method, target).
fn read_request_head(stream: &TcpStream) -> Result<Option<(String, String)>, RequestError> {
    let mut reader = BufReader::new(stream.take(MAX_HEAD_BYTES as u64));
    let mut request_line = String::new();
    let n = reader.read_line(&mut request_line).map_err(|e| match e.kind() {
        io::ErrorKind::InvalidData => RequestError::Bad("request line is not UTF-8"),
        _ => RequestError::Io(e),
    })?;
    if n == 0 {
        return Ok(None);
    }
    if !request_line.ends_with('\n') {
        return Err(RequestError::Bad("request line too long"));
    }
    // Drain headers up to the blank line (their content is not needed).
    let mut seen = request_line.len();
    loop {
        let mut line = Vec::new();
        let n = reader.read_until(b'\n', &mut line).map_err(RequestError::Io)?;
        seen += n;
        if n == 0 || !line.ends_with(b"\n") {
            return Err(RequestError::Bad(if seen >= MAX_HEAD_BYTES {
                "request head too large"
            } else {
                "truncated request head"
            }));
        }
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let mut parts = request_line.split_ascii_whitespace();
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(RequestError::Bad("malformed request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(RequestError::Bad("unsupported HTTP version"));
    }
    Ok(Some((method.to_string(), target.to_string())))
}

/// Maps a request target to a response (file or error).
fn respond(root: &Path, target: &str) -> Response {
    let rel = match target_to_relative(target) {
        Ok(p) => p,
        Err(why) => return Response::error(400, "Bad Request", why),
    };
    let mut path = root.join(&rel);
    if path.is_dir() {
        path.push("index.html");
    }
    // Resolve symlinks and make sure we are still inside the root.
    let canonical = match path.canonicalize() {
        Ok(p) if p.starts_with(root) && p.is_file() => p,
        _ => return Response::error(404, "Not Found", "no such file"),
    };
    let file = match File::open(&canonical) {
        Ok(f) => f,
        Err(_) => return Response::error(404, "Not Found", "no such file"),
    };
    let len = match file.metadata() {
        Ok(m) => m.len(),
        Err(_) => return Response::error(500, "Internal Server Error", "cannot stat file"),
    };
    Response {
        status: 200,
        reason: "OK",
        content_type: mime_type(&canonical),
        extra_headers: Vec::new(),
        body: Body::File(file, len),
    }
}

/// Turns `/a/b%20c.js?x=1` into the relative path `a/b c.js`, rejecting
/// anything that could escape the root: `..` segments (also percent-encoded),
/// backslashes, NUL, drive-letter colons, invalid escapes or non-UTF-8.
fn target_to_relative(target: &str) -> Result<PathBuf, &'static str> {
    let path = target.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') {
        return Err("request target must be an absolute path");
    }
    let decoded = percent_decode(path).ok_or("invalid percent-encoding")?;
    let decoded = String::from_utf8(decoded).map_err(|_| "path is not UTF-8")?;
    let mut rel = PathBuf::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => continue,
            ".." => return Err("path traversal rejected"),
            s if s.contains(['\\', '\0', ':']) => return Err("invalid character in path"),
            s => rel.push(s),
        }
    }
    Ok(rel)
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = hex_value(*bytes.get(i + 1)?)?;
            let lo = hex_value(*bytes.get(i + 2)?)?;
            out.push((hi << 4) | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn mime_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "wasm" => "application/wasm",
        "json" | "map" => "application/json",
        "txt" | "md" => "text/plain; charset=utf-8",
        "ts" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "bmp" => "image/bmp",
        "tif" | "tiff" => "image/tiff",
        "ico" => "image/x-icon",
        _ => "application/octet-stream",
    }
}

fn write_response(stream: &mut TcpStream, resp: Response, head_only: bool) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n\
         Content-Type: {}\r\n\
         Content-Length: {}\r\n\
         Cross-Origin-Opener-Policy: same-origin\r\n\
         Cross-Origin-Embedder-Policy: require-corp\r\n\
         Cross-Origin-Resource-Policy: same-origin\r\n\
         Content-Security-Policy: {}\r\n\
         X-Content-Type-Options: nosniff\r\n\
         Cache-Control: no-cache\r\n\
         Connection: close\r\n",
        resp.status,
        resp.reason,
        resp.content_type,
        resp.len(),
        CONTENT_SECURITY_POLICY
    );
    for (name, value) in &resp.extra_headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = io::BufWriter::with_capacity(64 * 1024, stream);
    out.write_all(head.as_bytes())?;
    if !head_only {
        match resp.body {
            Body::Bytes(b) => out.write_all(&b)?,
            Body::File(f, len) => {
                let copied = io::copy(&mut f.take(len), &mut out)?;
                if copied != len {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shrank while being served",
                    ));
                }
            }
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static COUNTER: AtomicUsize = AtomicUsize::new(0);

    /// A temp dir `base/` holding `site/` (the served root) and `secret.txt`
    /// (outside the root: must never be served).
    struct Fixture {
        base: PathBuf,
        port: u16,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            std::fs::remove_dir_all(&self.base).ok();
        }
    }

    fn start() -> Fixture {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = std::env::temp_dir().join(format!("anoscope-serve-test-{}-{n}", std::process::id()));
        std::fs::remove_dir_all(&base).ok();
        let site = base.join("site");
        std::fs::create_dir_all(site.join("pkg")).unwrap();
        std::fs::write(site.join("index.html"), "<!doctype html><p>hi</p>").unwrap();
        std::fs::write(site.join("pkg/anoscope_bg.wasm"), b"\0asm\x01\0\0\0").unwrap();
        std::fs::write(site.join("pkg/anoscope.js"), "export {};").unwrap();
        std::fs::write(site.join("a b.json"), "{}").unwrap();
        std::fs::write(base.join("secret.txt"), "TOP SECRET").unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        thread::spawn(move || serve_listener(listener, &site));
        Fixture { base, port }
    }

    struct Reply {
        status: u16,
        headers: HashMap<String, String>,
        body: Vec<u8>,
    }

    fn request(port: u16, raw: &str) -> Reply {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(raw.as_bytes()).unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        let split = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("no end of head");
        let head = String::from_utf8(buf[..split].to_vec()).unwrap();
        let body = buf[split + 4..].to_vec();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
        let status = status_line[9..12].parse().unwrap();
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(": ").unwrap();
                (k.to_ascii_lowercase(), v.to_string())
            })
            .collect();
        Reply { status, headers, body }
    }

    fn get(port: u16, target: &str) -> Reply {
        request(port, &format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n"))
    }

    #[test]
    fn index_has_isolation_headers() {
        let f = start();
        let r = get(f.port, "/");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"<!doctype html><p>hi</p>");
        assert_eq!(r.headers["content-type"], "text/html; charset=utf-8");
        assert_eq!(r.headers["content-length"], r.body.len().to_string());
        assert_eq!(r.headers["cross-origin-opener-policy"], "same-origin");
        assert_eq!(r.headers["cross-origin-embedder-policy"], "require-corp");
        assert_eq!(r.headers["cross-origin-resource-policy"], "same-origin");
        assert_eq!(r.headers["content-security-policy"], CONTENT_SECURITY_POLICY);
        // Query strings are ignored.
        assert_eq!(get(f.port, "/index.html?v=1").status, 200);
    }

    #[test]
    fn mime_types() {
        let f = start();
        let r = get(f.port, "/pkg/anoscope_bg.wasm");
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["content-type"], "application/wasm");
        assert_eq!(r.body, b"\0asm\x01\0\0\0");
        let r = get(f.port, "/pkg/anoscope.js");
        assert_eq!(r.headers["content-type"], "text/javascript; charset=utf-8");
        let r = get(f.port, "/a%20b.json");
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["content-type"], "application/json");
    }

    #[test]
    fn traversal_rejected() {
        let f = start();
        for target in [
            "/../secret.txt",
            "/pkg/../../secret.txt",
            "/%2e%2e/secret.txt",
            "/%2E%2E%2Fsecret.txt",
            "/pkg/..%2f..%2fsecret.txt",
            "/..%5csecret.txt",
            "/%00",
            "/%zz",
            "/%2",
            "/%ff",
            "secret.txt",
        ] {
            let r = get(f.port, target);
            assert!(r.status == 400 || r.status == 404, "{target} gave {}", r.status);
            assert!(
                !String::from_utf8_lossy(&r.body).contains("TOP SECRET"),
                "{target} leaked"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn symlink_out_of_root_is_404() {
        let f = start();
        std::os::unix::fs::symlink(f.base.join("secret.txt"), f.base.join("site/link.txt")).unwrap();
        let r = get(f.port, "/link.txt");
        assert_eq!(r.status, 404);
    }

    #[test]
    fn missing_is_404_with_body() {
        let f = start();
        let r = get(f.port, "/nope.js");
        assert_eq!(r.status, 404);
        assert!(!r.body.is_empty());
        assert_eq!(r.headers["content-length"], r.body.len().to_string());
        assert_eq!(r.headers["cross-origin-embedder-policy"], "require-corp");
        // A directory without index.html is not listed.
        assert_eq!(get(f.port, "/pkg/").status, 404);
    }

    #[test]
    fn head_and_other_methods() {
        let f = start();
        let r = request(f.port, "HEAD /pkg/anoscope_bg.wasm HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["content-length"], "8");
        assert!(r.body.is_empty());
        let r = request(f.port, "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(r.status, 405);
        assert_eq!(r.headers["allow"], "GET, HEAD");
        assert!(!r.body.is_empty());
        let r = request(f.port, "garbage\r\n\r\n");
        assert_eq!(r.status, 400);
    }

    /// The `<meta>` policies of the shipped pages are the header's, and every checkpoint host in
    /// weights/manifest.json is reachable under `connect-src`.
    #[test]
    fn csp_matches_pages_and_manifest() {
        assert_eq!(
            CONTENT_SECURITY_POLICY,
            format!("{CONTENT_SECURITY_POLICY_META}; frame-ancestors 'self'")
        );
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for page in ["www/index.html", "www/examples/embed.html"] {
            let html = std::fs::read_to_string(repo.join(page)).unwrap();
            let want = format!("content=\"{CONTENT_SECURITY_POLICY_META}\"");
            assert!(html.contains(&want), "{page} lacks the CSP meta {want}");
            assert!(!html.contains("style=\""), "{page} has an inline style attribute");
            assert!(
                !html.contains("<script>") && !html.contains("<script type=\"module\">"),
                "{page} has an inline script"
            );
        }
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(repo.join("weights/manifest.json")).unwrap()).unwrap();
        let connect = CONTENT_SECURITY_POLICY
            .split(';')
            .map(str::trim)
            .find_map(|d| d.strip_prefix("connect-src "))
            .unwrap();
        let sources: Vec<&str> = connect.split_whitespace().collect();
        let mut n = 0;
        for model in manifest["models"].as_array().unwrap() {
            for file in model["files"].as_array().unwrap() {
                let url = file["url"].as_str().unwrap();
                let host = url.strip_prefix("https://").unwrap().split('/').next().unwrap();
                let ok = sources.iter().any(|s| match s.strip_prefix("https://*.") {
                    Some(suffix) => host.ends_with(&format!(".{suffix}")),
                    None => *s == format!("https://{host}"),
                });
                assert!(ok, "connect-src does not allow {host} ({url})");
                n += 1;
            }
        }
        assert!(n > 0);
    }

    #[test]
    fn target_parsing() {
        assert_eq!(
            target_to_relative("/a//./b%20c.js?x#y").unwrap(),
            PathBuf::from("a/b c.js")
        );
        assert_eq!(target_to_relative("/").unwrap(), PathBuf::new());
        assert!(target_to_relative("/a/%2e%2E/b").is_err());
        assert!(target_to_relative("/C:/x").is_err());
    }
}
