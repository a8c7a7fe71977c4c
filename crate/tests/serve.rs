//! `anoscope serve`: the headers every response carries, and what the server refuses (path
//! traversal in every spelling, symlinks out of the site, methods other than GET/HEAD, malformed
//! and oversized requests, slow clients). The CLI binary is started on port 0 (the slow-client
//! tests run `serve_listener` in-process with small limits) and spoken to over raw TCP, so the
//! tests see exactly the bytes a browser would.
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
    // (A fragment never reaches the server from a browser; hyper drops one from the log line.)
    assert!(srv.log_has("GET /index.html?v=1 -> 200") || srv.log_has("GET /index.html?v=1#x -> 200"));
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
        "/pkg%2fanoscope.js",
        "/pkg%2Fanoscope.js",
        "/pkg%5canoscope.js",
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

/// Reads until the server closes the connection (EOF or reset); panics if it stays open for
/// `within`. Returns what arrived.
fn read_until_closed(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("connection still open after {within:?}: {e}"),
        }
    }
}

fn status_of(raw: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(raw);
    assert!(
        text.starts_with("HTTP/1.1 ") || text.starts_with("HTTP/1.0 "),
        "reply {text:?}"
    );
    text[9..12].parse().unwrap()
}

#[test]
fn malformed_and_oversized_requests_are_refused() {
    let site = site();
    let srv = serve(&site.root);
    for (raw, want) in [
        (&b"garbage\r\n\r\n"[..], 400),
        (b"GET / HTTP/9.9\r\n\r\n", 400),
        (b"GET /\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET /a\0b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /a\\..\\..\\secret.txt HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET secret.txt HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET http://127.0.0.1/../secret.txt HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (
            b"GET http://127.0.0.1/%2e%2e/secret.txt HTTP/1.1\r\nHost: x\r\n\r\n",
            400,
        ),
    ] {
        let r = request(srv.port, raw);
        assert_eq!(r.status, want, "{}", String::from_utf8_lossy(raw).escape_debug());
        assert!(!String::from_utf8_lossy(&r.body).contains("TOP SECRET"));
    }
    // A head over 16 KiB: one huge header, a huge request line, many headers, no end at all.
    let big = "a".repeat(20 * 1024);
    let many: String = (0..2000).map(|i| format!("X-{i}: y\r\n")).collect();
    for raw in [
        format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n"),
        format!("GET /{big} HTTP/1.1\r\nHost: x\r\n\r\n"),
        format!("GET / HTTP/1.1\r\n{many}\r\n"),
        format!("GET / HTTP/1.1\r\nX-Big: {big}{big}"),
    ] {
        let mut s = connect(srv.port);
        // The server may close while the rest is still being sent.
        s.write_all(raw.as_bytes()).ok();
        let got = read_until_closed(&mut s, Duration::from_secs(5));
        assert_eq!(status_of(&got), 431, "{}…", &raw[..40]);
    }
    // Absolute-form that stays inside is served (HTTP/1.1 servers must accept it).
    let r = request(
        srv.port,
        b"GET http://127.0.0.1/pkg/anoscope.js HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"export {};");
    // HTTP/1.0: answered, then closed.
    let mut s = connect(srv.port);
    s.write_all(b"GET /style.css HTTP/1.0\r\n\r\n").unwrap();
    let got = read_until_closed(&mut s, Duration::from_secs(5));
    assert_eq!(status_of(&got), 200);
    assert!(got.ends_with(b"\r\n\r\np{}"));
    // Keep-alive: two requests on one connection.
    let mut s = BufReader::new(connect(srv.port));
    for _ in 0..2 {
        s.get_mut()
            .write_all(b"GET /pkg/anoscope.js HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let r = read_reply(&mut s, false);
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"export {};");
    }
}

/// The server in this process with small limits, on a free port.
fn serve_with(root: &Path, config: anoscope::serve::ServeConfig) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let root = root.to_path_buf();
    std::thread::spawn(move || anoscope::serve::serve_listener(listener, &root, config));
    port
}

fn small_limits(max_connections: usize) -> anoscope::serve::ServeConfig {
    anoscope::serve::ServeConfig {
        max_connections,
        header_read_timeout: Duration::from_millis(800),
        write_timeout: Duration::from_millis(800),
        ..Default::default()
    }
}

#[test]
fn slow_clients_hold_a_bounded_number_of_slots_for_a_bounded_time() {
    let site = site();
    let port = serve_with(&site.root, small_limits(4));
    let t0 = std::time::Instant::now();
    // Fill every slot: two connections that send nothing, two that send half a head.
    let mut idle: Vec<TcpStream> = (0..4).map(|_| connect(port)).collect();
    idle[2].write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
    idle[3].write_all(b"GET").unwrap();
    // A slowloris trickle on top: one byte every 100 ms never completes a head in time.
    let trickle = std::thread::spawn(move || {
        let mut s = connect(port);
        let start = std::time::Instant::now();
        for b in b"GET / HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if s.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let got = read_until_closed(&mut s, Duration::from_secs(4));
        (start.elapsed(), got)
    });
    std::thread::sleep(Duration::from_millis(100));
    // A normal request waits for a slot, then is answered: no later than the idle ones time out.
    let r = get(port, "/pkg/anoscope.js");
    let waited = t0.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"export {};");
    assert!(
        waited >= Duration::from_millis(700),
        "answered after {waited:?}: the slot limit did not hold"
    );
    assert!(waited < Duration::from_millis(2500), "answered only after {waited:?}");
    // The idle ones were closed without a response.
    for s in &mut idle {
        let got = read_until_closed(s, Duration::from_secs(2));
        assert!(
            got.is_empty() || status_of(&got) == 408,
            "{:?}",
            String::from_utf8_lossy(&got)
        );
    }
    assert!(t0.elapsed() < Duration::from_secs(3));
    let (closed_after, got) = trickle.join().unwrap();
    assert!(
        closed_after < Duration::from_millis(3000),
        "trickle held on for {closed_after:?}"
    );
    assert!(got.is_empty() || status_of(&got) == 408);
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let site = site();
    let port = serve_with(&site.root, small_limits(4));
    let mut s = BufReader::new(connect(port));
    s.get_mut()
        .write_all(b"GET /style.css HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_reply(&mut s, false).status, 200);
    std::thread::sleep(Duration::from_millis(300));
    // Still open within the limit …
    s.get_mut()
        .write_all(b"GET /style.css HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_reply(&mut s, false).status, 200);
    // … closed once idle longer.
    let t = std::time::Instant::now();
    let got = read_until_closed(s.get_mut(), Duration::from_secs(3));
    assert!(got.is_empty() || status_of(&got) == 408);
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "closed after {:?}",
        t.elapsed()
    );
}

#[test]
fn a_client_that_stops_reading_loses_its_slot() {
    let site = site();
    // Far more than the loopback socket buffers hold.
    std::fs::write(site.root.join("big.bin"), vec![1u8; 64 << 20]).unwrap();
    let port = serve_with(&site.root, small_limits(1));
    let mut stalled = connect(port);
    stalled.write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // The only slot is held by the stalled download; once its write stalls past the limit the
    // slot frees and this request is answered.
    let t = std::time::Instant::now();
    let r = get(port, "/style.css");
    assert_eq!(r.status, 200);
    assert!(t.elapsed() < Duration::from_secs(3), "answered after {:?}", t.elapsed());
    let got = read_until_closed(&mut stalled, Duration::from_secs(5));
    assert!(got.len() < 64 << 20, "the stalled client got the whole file");
}
