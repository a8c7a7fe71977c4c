//! `anoscope serve`: the headers every response carries, and what the server refuses (path
//! traversal in every spelling, symlinks out of the site, methods other than GET/HEAD, malformed
//! and oversized requests, slow clients). The CLI binary is started on port 0 and spoken to over
//! raw TCP, so the tests see exactly the bytes a browser would.
#![cfg(not(target_arch = "wasm32"))]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The Content-Security-Policy header as the server sent it before the move to hyper, spelled
/// out here so that a change to the constant is a test failure too.
const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; \
     style-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; \
     connect-src 'self' https://huggingface.co https://*.huggingface.co https://*.hf.co; \
     object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'self'";

const SECRET: &str = "TOP SECRET: never served";

/// `base/site/` (served) with a few files and symlinks, and `base/secret.txt` next to it.
struct Site {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    root: PathBuf,
}

fn site() -> Site {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().to_path_buf();
    let root = base.join("site");
    for dir in ["pkg", "examples", "empty"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("index.html"), "<!doctype html><p>hi</p>").unwrap();
    std::fs::write(root.join("examples/index.html"), "<!doctype html><p>embed</p>").unwrap();
    std::fs::write(root.join("pkg/anoscope_bg.wasm"), b"\0asm\x01\0\0\0").unwrap();
    std::fs::write(root.join("pkg/anoscope.js"), "export {};").unwrap();
    std::fs::write(root.join("style.css"), "p{}").unwrap();
    std::fs::write(root.join("a b.json"), "{}").unwrap();
    std::fs::write(root.join("weights.bin"), [7u8; 300_000]).unwrap();
    std::fs::write(base.join("secret.txt"), SECRET).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::symlink;
        symlink(base.join("secret.txt"), root.join("out.txt")).unwrap();
        symlink("../secret.txt", root.join("out-relative.txt")).unwrap();
        symlink(&base, root.join("up")).unwrap();
        symlink("pkg/anoscope.js", root.join("in.js")).unwrap();
        symlink("pkg", root.join("pkg-link")).unwrap();
    }
    Site { _tmp: tmp, base, root }
}

/// A running `anoscope serve --port 0` and the request lines it logged on stderr.
struct Server {
    child: Child,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn serve(root: &Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_anoscope"))
        .args(["serve", "--port", "0", "--dir"])
        .arg(root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    // The line the browser harness parses: `… at http://127.0.0.1:PORT/`.
    let url = first.trim_end().rsplit(" at ").next().unwrap().to_string();
    let port = url
        .strip_prefix("http://127.0.0.1:")
        .and_then(|r| r.strip_suffix('/'))
        .unwrap_or_else(|| panic!("unexpected startup line {first:?}"))
        .parse()
        .unwrap();
    std::thread::spawn(move || for _ in stdout.lines() {});
    Server { child, port, log }
}

impl Server {
    /// The log lines so far, waiting briefly for the one that `want` names.
    fn log_has(&self, want: &str) -> bool {
        for _ in 0..100 {
            if self.log.lock().unwrap().iter().any(|l| l == want) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    /// Lower-cased header names; a repeated name would be a test failure.
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads one response (head, then `Content-Length` bytes unless `head_only`).
fn read_reply(s: &mut impl BufRead, head_only: bool) -> Reply {
    let mut status_line = String::new();
    s.read_line(&mut status_line).unwrap();
    assert!(status_line.starts_with("HTTP/1."), "status line {status_line:?}");
    let status = status_line[9..12].parse().unwrap();
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        s.read_line(&mut line).unwrap();
        let line = line.trim_end_matches("\r\n");
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(": ").unwrap_or_else(|| panic!("header line {line:?}"));
        let old = headers.insert(k.to_ascii_lowercase(), v.to_string());
        assert!(old.is_none(), "header {k} sent twice");
    }
    let len: usize = headers.get("content-length").map_or(0, |v| v.parse().unwrap());
    let mut body = vec![0; if head_only { 0 } else { len }];
    s.read_exact(&mut body).unwrap();
    Reply { status, headers, body }
}

/// Sends `raw` on a fresh connection and reads one response.
fn request(port: u16, raw: &[u8]) -> Reply {
    let mut s = connect(port);
    s.write_all(raw).unwrap();
    read_reply(&mut BufReader::new(s), raw.starts_with(b"HEAD "))
}

fn get(port: u16, target: &str) -> Reply {
    request(
        port,
        format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
    )
}

/// Every response, file or error, carries these, with these exact values.
fn assert_common_headers(r: &Reply, content_type: &str, len: usize) {
    let want: BTreeMap<&str, String> = [
        ("content-type", content_type.to_string()),
        ("content-length", len.to_string()),
        ("cross-origin-opener-policy", "same-origin".into()),
        ("cross-origin-embedder-policy", "require-corp".into()),
        ("cross-origin-resource-policy", "same-origin".into()),
        ("content-security-policy", CSP.into()),
        ("x-content-type-options", "nosniff".into()),
        ("cache-control", "no-cache".into()),
    ]
    .into_iter()
    .collect();
    for (k, v) in &want {
        assert_eq!(r.headers.get(*k), Some(v), "header {k} in {r:?}");
    }
    // Nothing else but the connection bookkeeping (and `Allow` on a 405).
    for k in r.headers.keys() {
        assert!(
            want.contains_key(k.as_str()) || ["date", "connection", "allow"].contains(&k.as_str()),
            "unexpected header {k}: {}",
            r.headers[k]
        );
    }
}

#[test]
fn files_carry_todays_headers_and_types() {
    let site = site();
    let srv = serve(&site.root);
    assert_eq!(anoscope::serve::CONTENT_SECURITY_POLICY, CSP);
    for (target, body, ctype) in [
        ("/", &b"<!doctype html><p>hi</p>"[..], "text/html; charset=utf-8"),
        ("/index.html", b"<!doctype html><p>hi</p>", "text/html; charset=utf-8"),
        (
            "/index.html?v=1#x",
            b"<!doctype html><p>hi</p>",
            "text/html; charset=utf-8",
        ),
        ("/examples/", b"<!doctype html><p>embed</p>", "text/html; charset=utf-8"),
        ("/examples", b"<!doctype html><p>embed</p>", "text/html; charset=utf-8"),
        ("/pkg/anoscope_bg.wasm", b"\0asm\x01\0\0\0", "application/wasm"),
        ("/pkg/anoscope.js", b"export {};", "text/javascript; charset=utf-8"),
        ("/style.css", b"p{}", "text/css; charset=utf-8"),
        ("/a%20b.json", b"{}", "application/json"),
        ("//pkg//./anoscope.js", b"export {};", "text/javascript; charset=utf-8"),
    ] {
        let r = get(srv.port, target);
        assert_eq!(r.status, 200, "{target}");
        assert_eq!(r.body, body, "{target}");
        assert_common_headers(&r, ctype, body.len());
    }
    let r = get(srv.port, "/weights.bin");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, vec![7u8; 300_000]);
    assert_common_headers(&r, "application/octet-stream", 300_000);
    // HEAD: the same head, no body.
    let r = request(srv.port, b"HEAD /pkg/anoscope_bg.wasm HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_common_headers(&r, "application/wasm", 8);
    // The request log the browser harness records, on stderr.
    assert!(
        srv.log_has("GET /pkg/anoscope.js -> 200"),
        "{:?}",
        srv.log.lock().unwrap()
    );
    assert!(srv.log_has("HEAD /pkg/anoscope_bg.wasm -> 200"));
    assert!(srv.log_has("GET /index.html?v=1#x -> 200"));
}

#[test]
fn missing_files_and_directories_are_404_without_listing() {
    let site = site();
    let srv = serve(&site.root);
    for target in ["/nope.js", "/empty/", "/empty", "/pkg/"] {
        let r = get(srv.port, target);
        assert_eq!(r.status, 404, "{target}");
        assert_eq!(r.body, b"404 Not Found\nno such file\n", "{target}");
        assert_common_headers(&r, "text/plain; charset=utf-8", r.body.len());
    }
    assert!(srv.log_has("GET /nope.js -> 404"));
}

#[test]
fn traversal_is_refused_in_every_spelling() {
    let site = site();
    let srv = serve(&site.root);
    for target in [
        "/../secret.txt",
        "/pkg/../../secret.txt",
        "/pkg/../index.html",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/.%2e/secret.txt",
        "/%2e%2e%2fsecret.txt",
        "/pkg%2f..%2f..%2fsecret.txt",
        "/..%5csecret.txt",
        "/pkg/%5c..%5c..%5csecret.txt",
        "/%00",
        "/index.html%00.js",
        "/C:/secret.txt",
        "/%zz",
        "/%2",
        "/%ff",
    ] {
        let r = get(srv.port, target);
        assert_eq!(r.status, 400, "{target}: {r:?}");
        assert!(
            !String::from_utf8_lossy(&r.body).contains("TOP SECRET"),
            "{target} leaked"
        );
        assert_common_headers(&r, "text/plain; charset=utf-8", r.body.len());
    }
    // An absolute filesystem path is a path under the site, not the file system's.
    let abs = site.base.join("secret.txt");
    let r = get(srv.port, &format!("/{}", abs.display()));
    assert_eq!(r.status, 404);
    assert!(!String::from_utf8_lossy(&r.body).contains("TOP SECRET"));
}

#[cfg(unix)]
#[test]
fn symlinks_out_of_the_site_are_not_followed() {
    let site = site();
    let srv = serve(&site.root);
    for target in ["/out.txt", "/out-relative.txt", "/up/secret.txt"] {
        let r = get(srv.port, target);
        assert_eq!(r.status, 404, "{target}");
        assert!(
            !String::from_utf8_lossy(&r.body).contains("TOP SECRET"),
            "{target} leaked"
        );
    }
    // A link that stays inside the site is fine.
    for target in ["/in.js", "/pkg-link/anoscope.js"] {
        let r = get(srv.port, target);
        assert_eq!(r.status, 200, "{target}");
        assert_eq!(r.body, b"export {};");
        assert_common_headers(&r, "text/javascript; charset=utf-8", 10);
    }
}

#[test]
fn methods_other_than_get_and_head_are_405() {
    let site = site();
    let srv = serve(&site.root);
    for method in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "BREW"] {
        let r = request(
            srv.port,
            format!("{method} /index.html HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc").as_bytes(),
        );
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.headers.get("allow").map(String::as_str), Some("GET, HEAD"));
        assert!(!r.body.is_empty());
        assert_common_headers(&r, "text/plain; charset=utf-8", r.body.len());
    }
    assert!(srv.log_has("POST /index.html -> 405"));
}
