//! A stand-in for the Hub's file endpoint, for tests that must download without a network.
//!
//! [`MockHub`] serves files over plain HTTP on `127.0.0.1` the way the Hub answers `hf-hub`:
//! `GET /<owner>/<name>/resolve/<revision>/<file>` with a `Range` header, answered `206` with
//! `x-repo-commit`, `etag` and `Content-Range`, or `404` for a file it does not hold. Point
//! [`crate::HubOptions::endpoint`] at [`MockHub::endpoint`]. Enabled by the `mock` feature.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The commit every file of a [`MockHub`] is served at.
pub const MOCK_COMMIT: &str = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";

/// The variables `hf-hub`'s HTTP client (ureq 2) takes a proxy from.
const PROXY_VARIABLES: [&str; 6] = [
    "ALL_PROXY",
    "all_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
];

type Files = HashMap<(String, String), Vec<u8>>;

/// A local Hub serving the files given to [`MockHub::add`]; stops when dropped.
pub struct MockHub {
    endpoint: String,
    files: Arc<Mutex<Files>>,
    requests: Arc<AtomicUsize>,
    authorizations: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for MockHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockHub")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl MockHub {
    /// A server on a free port of `127.0.0.1`, holding no files yet. An error when a proxy
    /// variable is set: `hf-hub` would send the requests to that proxy instead (its HTTP
    /// client reads `ALL_PROXY`, `HTTPS_PROXY` and `HTTP_PROXY`, and ignores `NO_PROXY`).
    pub fn start() -> std::io::Result<MockHub> {
        if let Some(name) = PROXY_VARIABLES
            .iter()
            .find(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
        {
            return Err(std::io::Error::other(format!(
                "{name} is set, so hf-hub would ask that proxy instead of the mock Hub (it \
                 ignores NO_PROXY): unset it to run the download tests"
            )));
        }
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let hub = MockHub {
            endpoint,
            files: Arc::default(),
            requests: Arc::default(),
            authorizations: Arc::default(),
            stop: Arc::default(),
        };
        let files = hub.files.clone();
        let requests = hub.requests.clone();
        let authorizations = hub.authorizations.clone();
        let stop = hub.stop.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    requests.fetch_add(1, Ordering::SeqCst);
                    // A failed answer only fails the client's request, which the test sees.
                    let _ = answer(stream, &files, &authorizations);
                }
            }
        });
        Ok(hub)
    }

    /// Serve `contents` as `file` of `repo` (`owner/name`).
    pub fn add(&self, repo: &str, file: &str, contents: Vec<u8>) {
        self.files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((repo.to_string(), file.to_string()), contents);
    }

    /// The URL to put in [`crate::HubOptions::endpoint`].
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// How many requests it has answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// The `Authorization` headers of the requests so far, in order.
    pub fn authorizations(&self) -> Vec<String> {
        self.authorizations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for MockHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.endpoint.trim_start_matches("http://"));
    }
}

/// Reads one request and answers it; the connection closes after it.
fn answer(
    stream: TcpStream,
    files: &Mutex<Files>,
    authorizations: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut range_start = 0usize;
    let mut range_end = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("range") {
                (range_start, range_end) = parse_range(value);
            } else if name.eq_ignore_ascii_case("authorization") {
                authorizations
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(value.to_string());
            }
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("");
    let found = lookup(path).and_then(|key| {
        files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .cloned()
    });
    let mut stream = stream;
    let Some(body) = found.filter(|body| range_start < body.len()) else {
        return stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nx-error-code: EntryNotFound\r\nContent-Length: 0\r\n\
              Connection: close\r\n\r\n",
        );
    };
    let last = range_end.unwrap_or(body.len() - 1).min(body.len() - 1);
    let part = &body[range_start..=last];
    let head = format!(
        "HTTP/1.1 206 Partial Content\r\nx-repo-commit: {MOCK_COMMIT}\r\netag: \"{}\"\r\n\
         Content-Range: bytes {range_start}-{last}/{}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        etag(&body),
        body.len(),
        part.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(part)
}

/// `/<owner>/<name>/resolve/<revision>/<file>` as `(repo, file)`, for the revision `main` or
/// [`MOCK_COMMIT`].
fn lookup(path: &str) -> Option<(String, String)> {
    let mut parts = path.trim_start_matches('/').splitn(5, '/');
    let (owner, name, resolve, revision, file) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    (resolve == "resolve" && (revision == "main" || revision == MOCK_COMMIT))
        .then(|| (format!("{owner}/{name}"), file.to_string()))
}

/// `bytes=a-b` or `bytes=a-`.
fn parse_range(value: &str) -> (usize, Option<usize>) {
    let Some((start, end)) = value.trim_start_matches("bytes=").split_once('-') else {
        return (0, None);
    };
    (start.parse().unwrap_or(0), end.parse().ok())
}

/// A content hash (FNV-1a), so that different files get different blobs in the cache.
fn etag(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}{:08x}", bytes.len())
}
