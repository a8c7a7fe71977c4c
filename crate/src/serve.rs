//! A small static file server for the built site (`anoscope serve`).
//!
//! HTTP/1.1 from [hyper] on a current-thread tokio runtime, bound to 127.0.0.1, `GET`/`HEAD` only.
//! Every response carries the cross-origin isolation headers
//! (`Cross-Origin-Opener-Policy: same-origin`,
//! `Cross-Origin-Embedder-Policy: require-corp`,
//! `Cross-Origin-Resource-Policy: same-origin`) so the page may use
//! `SharedArrayBuffer` and wasm threads, and the page's strict
//! Content-Security-Policy ([`CONTENT_SECURITY_POLICY`]). It is a development server, not a
//! production one: keep-alive, but no ranges, no compression, no directory listings.
//!
//! What it refuses, and how ([`ServeConfig`] holds the limits):
//! - a path that could leave the site: `..` segments (also percent-encoded), encoded slashes,
//!   backslashes, NUL, drive colons, invalid escapes or non-UTF-8 (400); a symlink that resolves
//!   outside the site directory (404: the resolved path must lie under the canonical root);
//! - methods other than `GET` and `HEAD` (405 with `Allow: GET, HEAD`);
//! - a malformed request (400, from hyper) or a request head over
//!   [`MAX_HEAD_BYTES`] (431, from hyper); these two carry no body;
//! - slow clients: at most [`MAX_CONNECTIONS`] connections at once (further ones wait in the
//!   listen backlog), a request head must arrive whole within [`HEADER_READ_TIMEOUT`] (this also
//!   closes idle keep-alive connections), and a response write that makes no progress for
//!   [`WRITE_TIMEOUT`] drops the connection.
#![cfg(not(target_arch = "wasm32"))]

use std::convert::Infallible;
use std::future::Future;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::Context;
use hyper::body::{Bytes, Frame, SizeHint};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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

/// Longest request head (request line + headers) accepted, in bytes; a longer one gets 431.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most connections served at once. A browser opens at most six per host, so this leaves
/// room for several tabs and test pages; a client holding more makes the rest wait, never crash.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send a whole request head, counted from when the server starts
/// waiting for it (a new connection, or an idle keep-alive one): a slowloris trickle or an
/// idle connection is closed after this.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest a response write may make no progress (a client that stops reading) before the
/// connection is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The limits of the server; [`Default`] gives the documented constants (tests use smaller ones).
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Most connections served at once ([`MAX_CONNECTIONS`]).
    pub max_connections: usize,
    /// Time to receive a whole request head, also the keep-alive idle limit ([`HEADER_READ_TIMEOUT`]).
    pub header_read_timeout: Duration,
    /// Longest stall of a response write ([`WRITE_TIMEOUT`]).
    pub write_timeout: Duration,
    /// Longest request head in bytes ([`MAX_HEAD_BYTES`]).
    pub max_head_bytes: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            max_connections: MAX_CONNECTIONS,
            header_read_timeout: HEADER_READ_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
            max_head_bytes: MAX_HEAD_BYTES,
        }
    }
}

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
    serve_listener(listener, &root, ServeConfig::default())
}

/// Serves `root` on an already-bound listener with the given limits, until the process ends
/// (or an accept error other than a per-connection one). Tests bind port 0 and pass small limits.
pub fn serve_listener(listener: TcpListener, root: &Path, config: ServeConfig) -> anyhow::Result<()> {
    let root = Arc::new(
        root.canonicalize()
            .with_context(|| format!("serve: cannot open site directory {}", root.display()))?,
    );
    anyhow::ensure!(config.max_connections > 0, "serve: max_connections must be at least 1");
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("serve: cannot start the tokio runtime")?;
    runtime.block_on(accept_loop(listener, root, config))
}

async fn accept_loop(listener: TcpListener, root: Arc<PathBuf>, config: ServeConfig) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let slots = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_header_size(config.max_head_bytes)
        .auto_date_header(false)
        .title_case_headers(true);
    loop {
        // A slot first: while all are taken, new connections wait in the kernel's backlog.
        let permit = Arc::clone(&slots).acquire_owned().await?;
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Per-connection failures (reset before accept, out of descriptors) pass.
                eprintln!("serve: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let io = TokioIo::new(WriteDeadline::new(stream, config.write_timeout));
        let root = Arc::clone(&root);
        let conn = http.serve_connection(
            io,
            hyper::service::service_fn(move |req| {
                let root = Arc::clone(&root);
                async move { Ok::<_, Infallible>(handle(req, root).await) }
            }),
        );
        tokio::spawn(async move {
            match conn.await {
                // The header-read timeout is also how idle keep-alive connections end: not news.
                Err(e) if e.is_timeout() => {}
                // A client hanging up mid-transfer, a stalled write and the like: log, move on.
                Err(e) => eprintln!("serve: {e}"),
                Ok(()) => {}
            }
            drop(permit);
        });
    }
}

/// A response body: a short text, or a file streamed in chunks.
enum Body {
    Bytes(Option<Bytes>),
    File {
        file: tokio::fs::File,
        left: u64,
        buf: Box<[u8]>,
    },
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Body::Bytes(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::File { file, left, buf } => {
                if *left == 0 {
                    return Poll::Ready(None);
                }
                let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                let mut read = ReadBuf::new(&mut buf[..want]);
                match Pin::new(file).poll_read(cx, &mut read) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
                    Poll::Ready(Ok(())) if read.filled().is_empty() => Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shrank while being served",
                    )))),
                    Poll::Ready(Ok(())) => {
                        *left -= read.filled().len() as u64;
                        Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(read.filled())))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Bytes(b) => b.is_none(),
            Body::File { left, .. } => *left == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Bytes(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::File { left, .. } => SizeHint::with_exact(*left),
        }
    }
}

/// A file to send, or an error.
enum Reply {
    File(std::fs::File, u64, &'static str),
    Error(StatusCode, &'static str),
}

async fn handle(req: Request<hyper::body::Incoming>, root: Arc<PathBuf>) -> Response<Body> {
    let method = req.method().clone();
    let target = req.uri().to_string();
    let head_only = method == Method::HEAD;
    let reply = if method != Method::GET && !head_only {
        Reply::Error(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD are supported")
    } else {
        let path = req.uri().path().to_string();
        // Path checks, canonicalize and open touch the file system: off the event loop.
        tokio::task::spawn_blocking(move || resolve(&root, &path))
            .await
            .unwrap_or(Reply::Error(StatusCode::INTERNAL_SERVER_ERROR, "lookup failed"))
    };
    let (status, content_type, len, body) = match reply {
        Reply::File(file, len, content_type) => {
            let body = if head_only {
                Body::Bytes(None)
            } else {
                Body::File {
                    file: tokio::fs::File::from_std(file),
                    left: len,
                    buf: vec![0; 64 * 1024].into(),
                }
            };
            (StatusCode::OK, content_type, len, body)
        }
        Reply::Error(status, detail) => {
            let text = format!(
                "{} {}\n{detail}\n",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            );
            let len = text.len() as u64;
            let body = if head_only {
                Body::Bytes(None)
            } else {
                Body::Bytes(Some(text.into()))
            };
            (status, "text/plain; charset=utf-8", len, body)
        }
    };
    eprintln!("{method} {target} -> {}", status.as_u16());
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    let fixed = [
        ("content-type", content_type),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-embedder-policy", "require-corp"),
        ("cross-origin-resource-policy", "same-origin"),
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("cache-control", "no-cache"),
    ];
    for (name, value) in fixed {
        h.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
    }
    h.insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(len));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        h.insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    resp
}

/// Maps a request path to an open file under `root` (canonical), or an error.
fn resolve(root: &Path, path: &str) -> Reply {
    let rel = match target_to_relative(path) {
        Ok(p) => p,
        Err(why) => return Reply::Error(StatusCode::BAD_REQUEST, why),
    };
    let not_found = Reply::Error(StatusCode::NOT_FOUND, "no such file");
    let mut path = root.join(&rel);
    if path.is_dir() {
        path.push("index.html");
    }
    // Resolve symlinks and make sure we are still inside the root.
    let canonical = match path.canonicalize() {
        Ok(p) if p.starts_with(root) && p.is_file() => p,
        _ => return not_found,
    };
    let Ok(file) = std::fs::File::open(&canonical) else {
        return not_found;
    };
    match file.metadata() {
        Ok(m) => Reply::File(file, m.len(), mime_type(&canonical)),
        Err(_) => Reply::Error(StatusCode::INTERNAL_SERVER_ERROR, "cannot stat file"),
    }
}

/// A TCP stream whose writes fail with `TimedOut` once one has made no progress for `limit`
/// (hyper has a header-read timeout but none for writes: a client that stops reading would
/// otherwise hold its connection slot for ever).
struct WriteDeadline {
    stream: tokio::net::TcpStream,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl WriteDeadline {
    fn new(stream: tokio::net::TcpStream, limit: Duration) -> Self {
        WriteDeadline {
            stream,
            limit,
            stalled: None,
        }
    }

    /// Passes `poll` through; on `Pending`, arms (or checks) the stall timer.
    fn watch<T>(&mut self, cx: &mut TaskContext<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let limit = self.limit;
        let sleep = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client stopped reading the response",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for WriteDeadline {
    fn poll_read(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteDeadline {
    fn poll_write(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write(cx, data);
        this.watch(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_flush(cx);
        this.watch(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_shutdown(cx);
        this.watch(cx, poll)
    }
}

/// Turns `/a/b%20c.js?x=1` into the relative path `a/b c.js`, rejecting
/// anything that could escape the root: `..` segments (also percent-encoded),
/// encoded slashes (`%2f`), backslashes (raw or encoded), NUL, drive-letter colons,
/// invalid escapes or non-UTF-8.
fn target_to_relative(target: &str) -> Result<PathBuf, &'static str> {
    let path = target.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') {
        return Err("request target must be an absolute path");
    }
    let mut rel = PathBuf::new();
    // Split before decoding: a `%2f` inside a segment is not a separator but a refusal.
    for raw in path.split('/') {
        let segment = percent_decode(raw).ok_or("invalid percent-encoding")?;
        let segment = String::from_utf8(segment).map_err(|_| "path is not UTF-8")?;
        match segment.as_str() {
            "" | "." => continue,
            ".." => return Err("path traversal rejected"),
            s if s.contains(['/', '\\', '\0', ':']) => return Err("invalid character in path"),
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

#[cfg(test)]
mod tests {
    use super::*;

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
            // A mode's learned files (`.pth`, converted by ./build.sh weights) are never fetched by
            // the page, which takes a config and a `.safetensors` from the manifest
            // (crate/tests/manifest.rs checks that they offer neither).
            if model["kind"] == "learned" {
                continue;
            }
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
