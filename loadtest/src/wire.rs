//! The order submissions' own HTTP/1.1 client: the one request the load
//! sends per buyer, written in one piece on a kept-alive connection and its
//! answer read in the same task.
//!
//! The general-purpose client (reqwest, for set-up, polls and the checks)
//! hands every request to a separate connection task through channels and
//! builds a header map, a URL and a JSON body per request; on a machine the
//! generator shares with the system it measures, that cost is taken from the
//! system. Here a buyer's request is built once, as bytes
//! ([`Endpoint::order_request`]), and an exchange is one write and, usually,
//! one read.
//!
//! What it speaks: HTTP/1.1 over plain TCP, answers framed by
//! `Content-Length`, `Transfer-Encoding: chunked` or the end of the
//! connection; `1xx` interim answers are skipped. A connection goes back to
//! the idle pool unless the answer said `Connection: close` or was framed by
//! the end of the connection. A kept-alive connection the server closed
//! while it was idle is noticed on its next use, before any answer byte:
//! the request is then sent once more on a new connection, as general HTTP
//! clients do (the same bytes, so the same Idempotency-Key).

use std::fmt;
use std::io;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use reqwest::Url;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

/// Room read at once; an order's answer is well under 1 KiB.
const READ_CHUNK: usize = 4096;
/// Headers an answer may carry.
const MAX_HEADERS: usize = 32;
/// An answer larger than this is refused (a runaway body, not an order).
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// What failed, for the tallies ([`WireError::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect,
    /// Writing the request or reading the answer's head.
    Request,
    /// Reading the answer's body.
    Body,
    /// The answer is not HTTP/1.x as this client reads it.
    Protocol,
}

/// A failed exchange: no answer was read.
#[derive(Debug)]
pub struct WireError {
    stage: Stage,
    source: io::Error,
}

impl WireError {
    fn new(stage: Stage, source: io::Error) -> Self {
        Self { stage, source }
    }

    fn protocol(message: impl Into<String>) -> Self {
        Self::new(
            Stage::Protocol,
            io::Error::new(io::ErrorKind::InvalidData, message.into()),
        )
    }

    /// A status line whose code is not a valid HTTP status.
    pub fn invalid_status(status: u16) -> Self {
        Self::protocol(format!("status {status} is not a valid HTTP status"))
    }

    /// A short, stable label, the same set as for the general client's errors.
    pub fn kind(&self) -> &'static str {
        match self.stage {
            Stage::Connect => "connect",
            Stage::Request => "request",
            Stage::Body => "body",
            Stage::Protocol => "other",
        }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.stage {
            Stage::Connect => "connecting",
            Stage::Request => "sending the request",
            Stage::Body => "reading the answer's body",
            Stage::Protocol => "reading the answer",
        };
        write!(f, "{what}")
    }
}

impl std::error::Error for WireError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// One answer, fully read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// The raw `Retry-After` value, if any.
    pub retry_after: Option<String>,
    /// `Idempotent-Replayed: true` was present.
    pub replayed: bool,
    pub body: Vec<u8>,
    /// The connection may carry another request.
    pub keep_alive: bool,
}

/// Where orders go: one host, its idle connections.
pub struct Endpoint {
    /// `host:port`, to connect to and for the `Host` header.
    authority: String,
    /// The base URL's path, without a trailing `/`.
    prefix: String,
    user_agent: &'static str,
    connect_timeout: Duration,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
}

/// A connection and its read buffer, kept between exchanges: a buffer this
/// size is past the allocator's per-thread caches, and allocating and
/// freeing one per answer showed in the profile.
struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Endpoint {
    /// An endpoint for `base` (`http://host[:port][/prefix]`) that keeps up
    /// to `max_idle` connections open between requests.
    pub fn new(
        base: &Url,
        max_idle: usize,
        connect_timeout: Duration,
        user_agent: &'static str,
    ) -> Result<Self> {
        ensure!(
            base.scheme() == "http",
            "the API URL {base} is not http:// (the load speaks plain HTTP/1.1)"
        );
        let host = base
            .host_str()
            .with_context(|| format!("the API URL {base} names no host"))?;
        let port = base.port_or_known_default().unwrap_or(80);
        Ok(Self {
            authority: format!("{host}:{port}"),
            prefix: base.path().trim_end_matches('/').to_owned(),
            user_agent,
            connect_timeout,
            idle: Mutex::new(Vec::with_capacity(max_idle)),
            max_idle,
        })
    }

    /// The bytes of `POST <prefix><path>` with a buyer's order: built once
    /// per buyer and sent as they are by every attempt. The body is the
    /// JSON `{"product_id": …, "quantity": …}`.
    pub fn order_request(
        &self,
        path: &str,
        token: &str,
        idempotency_key: &str,
        product_id: Uuid,
        quantity: u32,
    ) -> Vec<u8> {
        let body = format!(r#"{{"product_id":"{product_id}","quantity":{quantity}}}"#);
        self.json_request(path, token, idempotency_key, &body)
    }

    /// The bytes of `POST <prefix><path>` with the JSON `body` (a cart, or
    /// any order body), built like [`Endpoint::order_request`].
    pub fn json_request(
        &self,
        path: &str,
        token: &str,
        idempotency_key: &str,
        body: &str,
    ) -> Vec<u8> {
        format!(
            "POST {prefix}{path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: {agent}\r\n\
             authorization: Bearer {token}\r\nidempotency-key: {idempotency_key}\r\n\
             content-type: application/json\r\ncontent-length: {length}\r\n\r\n{body}",
            prefix = self.prefix,
            host = self.authority,
            agent = self.user_agent,
            length = body.len(),
        )
        .into_bytes()
    }

    /// Sends `request` (from [`Endpoint::order_request`]) on an idle
    /// connection or a new one and reads the answer.
    pub async fn send(&self, request: &[u8]) -> Result<Answer, WireError> {
        let (mut connection, mut reused) = match self.take_idle() {
            Some(connection) => (connection, true),
            None => (self.connect().await?, false),
        };
        loop {
            match exchange(&mut connection, request).await {
                Ok(answer) => {
                    if answer.keep_alive {
                        self.put_idle(connection);
                    }
                    return Ok(answer);
                }
                // Closed by the server while idle: nothing was answered.
                Err(Failed::Unanswered(_)) if reused => {
                    connection = self.connect().await?;
                    reused = false;
                }
                Err(Failed::Unanswered(err) | Failed::Answering(err)) => return Err(err),
            }
        }
    }

    async fn connect(&self) -> Result<Connection, WireError> {
        let stream = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect(self.authority.as_str()),
        )
        .await
        .map_err(|_| {
            WireError::new(
                Stage::Connect,
                io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
            )
        })?
        .map_err(|err| WireError::new(Stage::Connect, err))?;
        stream
            .set_nodelay(true)
            .map_err(|err| WireError::new(Stage::Connect, err))?;
        Ok(Connection {
            stream,
            buf: Vec::with_capacity(READ_CHUNK),
        })
    }

    /// Closes every connection kept for reuse (those in use are not
    /// affected, and are kept again when their answer is read).
    pub fn close_idle(&self) {
        let closed = std::mem::take(
            &mut *self
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        drop(closed);
    }

    fn take_idle(&self) -> Option<Connection> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
    }

    fn put_idle(&self, connection: Connection) {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < self.max_idle {
            idle.push(connection);
        }
    }
}

/// How an exchange failed: before any byte of an answer (the request may be
/// sent again on another connection), or while one was being read.
enum Failed {
    Unanswered(WireError),
    Answering(WireError),
}

async fn exchange(connection: &mut Connection, request: &[u8]) -> Result<Answer, Failed> {
    let Connection { stream, buf } = connection;
    buf.clear();
    // A rare large answer does not keep its buffer for good.
    if buf.capacity() > 16 * READ_CHUNK {
        *buf = Vec::with_capacity(READ_CHUNK);
    }
    stream
        .write_all(request)
        .await
        .map_err(|err| Failed::Unanswered(WireError::new(Stage::Request, err)))?;
    loop {
        let read = read_more(stream, buf).await;
        let closed = match read {
            Ok(0) | Err(_) if buf.is_empty() => {
                let err = read.err().unwrap_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed before an answer",
                    )
                });
                return Err(Failed::Unanswered(WireError::new(Stage::Request, err)));
            }
            Ok(read) => read == 0,
            Err(err) => return Err(Failed::Answering(WireError::new(Stage::Request, err))),
        };
        if closed {
            return match parse(buf, true) {
                Parsed::Complete(answer) => Ok(answer),
                Parsed::Invalid(err) => Err(Failed::Answering(err)),
                Parsed::Incomplete | Parsed::UntilClose => Err(Failed::Answering(cut_short())),
            };
        }
        match parse(buf, false) {
            Parsed::Complete(answer) => return Ok(answer),
            Parsed::Incomplete => {}
            Parsed::UntilClose => return read_to_close(stream, buf).await,
            Parsed::Invalid(err) => return Err(Failed::Answering(err)),
        }
        if buf.len() > MAX_RESPONSE_BYTES {
            return Err(Failed::Answering(WireError::protocol(
                "the answer is larger than 1 MiB",
            )));
        }
    }
}

/// An answer framed by the end of the connection: read until it closes.
async fn read_to_close(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Answer, Failed> {
    loop {
        let read = read_more(stream, buf)
            .await
            .map_err(|err| Failed::Answering(WireError::new(Stage::Body, err)))?;
        if read == 0 {
            break;
        }
        if buf.len() > MAX_RESPONSE_BYTES {
            return Err(Failed::Answering(WireError::protocol(
                "the answer is larger than 1 MiB",
            )));
        }
    }
    match parse(buf, true) {
        Parsed::Complete(answer) => Ok(answer),
        Parsed::Invalid(err) => Err(Failed::Answering(err)),
        Parsed::Incomplete | Parsed::UntilClose => Err(Failed::Answering(cut_short())),
    }
}

fn cut_short() -> WireError {
    WireError::new(
        Stage::Body,
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed in the middle of the answer",
        ),
    )
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.reserve(READ_CHUNK);
    stream.read_buf(buf).await
}

/// What the bytes read so far make.
#[derive(Debug)]
enum Parsed {
    Complete(Answer),
    /// More bytes are needed.
    Incomplete,
    /// The body runs to the end of the connection (no length, not chunked):
    /// parse again once it closed, with `closed`.
    UntilClose,
    Invalid(WireError),
}

/// Parses one answer from the start of `buf`, skipping `1xx` interim
/// answers. `closed`: the connection has ended after `buf`.
fn parse(buf: &[u8], closed: bool) -> Parsed {
    let mut start = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        let head_len = match response.parse(&buf[start..]) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Parsed::Incomplete,
            Err(err) => return Parsed::Invalid(WireError::protocol(format!("bad head: {err}"))),
        };
        let status = response.code.unwrap_or(0);
        if (100..200).contains(&status) && status != 101 {
            start += head_len;
            continue;
        }
        let mut framing = Framing::Close;
        let mut keep_alive = response.version == Some(1);
        let mut retry_after = None;
        let mut replayed = false;
        for header in response.headers.iter() {
            let value = header.value;
            if header.name.eq_ignore_ascii_case("content-length") {
                let length = std::str::from_utf8(value)
                    .ok()
                    .and_then(|text| text.trim().parse::<usize>().ok());
                match length {
                    Some(length) if framing != Framing::Chunked => {
                        framing = Framing::Length(length);
                    }
                    Some(_) => {}
                    None => return Parsed::Invalid(WireError::protocol("bad content-length")),
                }
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                if last_token_is(value, b"chunked") {
                    framing = Framing::Chunked;
                }
            } else if header.name.eq_ignore_ascii_case("connection") {
                if has_token(value, b"close") {
                    keep_alive = false;
                } else if has_token(value, b"keep-alive") {
                    keep_alive = true;
                }
            } else if header.name.eq_ignore_ascii_case("retry-after") {
                retry_after = std::str::from_utf8(value).ok().map(str::to_owned);
            } else if header.name.eq_ignore_ascii_case("idempotent-replayed") {
                replayed = value.trim_ascii().eq_ignore_ascii_case(b"true");
            }
        }
        if status == 204 || status == 304 {
            framing = Framing::Length(0);
        }
        let body_start = start + head_len;
        let rest = &buf[body_start..];
        let (body, used) = match framing {
            Framing::Length(length) => {
                if rest.len() < length {
                    return Parsed::Incomplete;
                }
                (rest[..length].to_vec(), length)
            }
            Framing::Chunked => match dechunk(rest) {
                Ok(Some(done)) => done,
                Ok(None) => return Parsed::Incomplete,
                Err(err) => return Parsed::Invalid(err),
            },
            Framing::Close if !closed => return Parsed::UntilClose,
            Framing::Close => {
                keep_alive = false;
                (rest.to_vec(), rest.len())
            }
        };
        // Bytes after the answer were not asked for: do not reuse the
        // connection they came on.
        if body_start + used != buf.len() {
            keep_alive = false;
        }
        return Parsed::Complete(Answer {
            status,
            retry_after,
            replayed,
            body,
            keep_alive,
        });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    Close,
}

/// Decodes a chunked body from the start of `buf`: the body and the bytes
/// it took (trailers included), or `None` when more are needed.
fn dechunk(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, WireError> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let (line, size) = match httparse::parse_chunk_size(&buf[at..]) {
            Ok(httparse::Status::Complete(found)) => found,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(WireError::protocol("bad chunk size")),
        };
        at += line;
        if size == 0 {
            // Trailers, if any, end with an empty line.
            loop {
                let Some(end) = find_crlf(&buf[at..]) else {
                    return Ok(None);
                };
                at += end + 2;
                if end == 0 {
                    return Ok(Some((body, at)));
                }
            }
        }
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if size > MAX_RESPONSE_BYTES {
            return Err(WireError::protocol("a chunk larger than 1 MiB"));
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[at..at + size]);
        at += size;
        if &buf[at..at + 2] != b"\r\n" {
            return Err(WireError::protocol("a chunk not followed by CRLF"));
        }
        at += 2;
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|pair| pair == b"\r\n")
}

fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&byte| byte == b',').map(<[u8]>::trim_ascii)
}

fn has_token(value: &[u8], token: &[u8]) -> bool {
    tokens(value).any(|item| item.eq_ignore_ascii_case(token))
}

fn last_token_is(value: &[u8], token: &[u8]) -> bool {
    tokens(value)
        .last()
        .is_some_and(|item| item.eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(bytes: &[u8]) -> Answer {
        match parse(bytes, false) {
            Parsed::Complete(answer) => answer,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_length_framed_answer_keeps_the_connection() {
        let answer = complete(
            b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\n\
              content-length: 11\r\n\r\n{\"id\":\"x\"}\n",
        );
        assert_eq!(answer.status, 202);
        assert_eq!(answer.body, b"{\"id\":\"x\"}\n");
        assert!(answer.keep_alive);
        assert!(!answer.replayed);
        assert_eq!(answer.retry_after, None);
    }

    #[test]
    fn partial_heads_and_bodies_ask_for_more() {
        let full = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabcd";
        for cut in 0..full.len() {
            assert!(
                matches!(parse(&full[..cut], false), Parsed::Incomplete),
                "cut at {cut}"
            );
        }
        assert_eq!(complete(full).body, b"abcd");
    }

    #[test]
    fn headers_the_load_reads() {
        let answer = complete(
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\n\
              Idempotent-Replayed: TRUE\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(answer.status, 503);
        assert_eq!(answer.retry_after.as_deref(), Some("2"));
        assert!(answer.replayed);
        assert!(!answer.keep_alive);
        assert!(answer.body.is_empty());
        // HTTP/1.0 closes unless it asks to keep the connection.
        assert!(!complete(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(
            complete(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n")
                .keep_alive
        );
    }

    #[test]
    fn chunked_bodies_are_decoded() {
        let bytes = b"HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\n\r\n\
                      4\r\n{\"co\r\n7;ext=1\r\nde\":1}\n\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let answer = complete(bytes);
        assert_eq!(answer.body, b"{\"code\":1}\n");
        assert!(answer.keep_alive);
        for cut in 0..bytes.len() {
            assert!(
                matches!(parse(&bytes[..cut], false), Parsed::Incomplete),
                "cut at {cut}"
            );
        }
        let bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXX0\r\n\r\n";
        assert!(matches!(parse(bad, false), Parsed::Invalid(_)));
    }

    #[test]
    fn interim_answers_are_skipped_and_unframed_bodies_run_to_the_close() {
        let answer = complete(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        );
        assert_eq!((answer.status, answer.body.as_slice()), (201, &b"ok"[..]));

        let unframed = b"HTTP/1.1 200 OK\r\n\r\nuntil the end";
        assert!(matches!(parse(unframed, false), Parsed::UntilClose));
        let answer = match parse(unframed, true) {
            Parsed::Complete(answer) => answer,
            other => panic!("{other:?}"),
        };
        assert_eq!(answer.body, b"until the end");
        assert!(!answer.keep_alive);

        let no_content = complete(b"HTTP/1.1 204 No Content\r\n\r\n");
        assert!(no_content.body.is_empty() && no_content.keep_alive);
    }

    #[test]
    fn surplus_bytes_and_garbage() {
        let surplus = complete(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab");
        assert_eq!(surplus.body, b"a");
        assert!(!surplus.keep_alive, "bytes nobody asked for");
        assert!(matches!(
            parse(b"SSH-2.0-OpenSSH\r\n\r\n", false),
            Parsed::Invalid(_)
        ));
        assert!(matches!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false),
            Parsed::Invalid(_)
        ));
    }

    /// Reads one request head and its `content-length` body from `stream`.
    async fn read_request(stream: &mut TcpStream) -> Vec<u8> {
        let mut buf = Vec::new();
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut request = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(head)) = request.parse(&buf) {
                let length: usize = request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |h| {
                        std::str::from_utf8(h.value).unwrap().parse().unwrap()
                    });
                if buf.len() >= head + length {
                    return buf;
                }
            }
            assert_ne!(
                stream.read_buf(&mut buf).await.unwrap(),
                0,
                "client went away"
            );
        }
    }

    #[tokio::test]
    async fn connections_are_reused_and_an_idle_close_costs_one_resend() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let answer = |n: u32| {
                format!("HTTP/1.1 202 Accepted\r\ncontent-length: 1\r\n\r\n{n}").into_bytes()
            };
            // First connection: two requests, then the server closes it.
            let (mut first, _) = listener.accept().await.unwrap();
            read_request(&mut first).await;
            first.write_all(&answer(1)).await.unwrap();
            read_request(&mut first).await;
            first.write_all(&answer(2)).await.unwrap();
            drop(first);
            // Second connection: the third request, resent after the close.
            let (mut second, _) = listener.accept().await.unwrap();
            let third = read_request(&mut second).await;
            second.write_all(&answer(3)).await.unwrap();
            third
        });
        let base = Url::parse(&format!("http://{addr}")).unwrap();
        let endpoint = Endpoint::new(&base, 4, Duration::from_secs(5), "test/1").unwrap();
        let request = endpoint.order_request("/v1/orders", "t", "k", Uuid::nil(), 1);
        for expected in [b"1", b"2"] {
            let answer = endpoint.send(&request).await.unwrap();
            assert_eq!(
                (answer.status, answer.body.as_slice()),
                (202, &expected[..])
            );
        }
        // Let the close reach the client before the idle connection is reused.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let answer = endpoint.send(&request).await.unwrap();
        assert_eq!(answer.body, b"3");
        assert_eq!(server.await.unwrap(), request, "the same bytes were resent");
    }

    #[tokio::test]
    async fn closing_the_idle_connections_closes_them_at_the_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut connection, _) = listener.accept().await.unwrap();
            read_request(&mut connection).await;
            connection
                .write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 1\r\n\r\n1")
                .await
                .unwrap();
            // The client's close: end of stream, nothing more sent.
            let mut rest = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut connection, &mut rest)
                .await
                .unwrap();
            rest
        });
        let base = Url::parse(&format!("http://{addr}")).unwrap();
        let endpoint = Endpoint::new(&base, 4, Duration::from_secs(5), "test/1").unwrap();
        let request = endpoint.order_request("/v1/orders", "t", "k", Uuid::nil(), 1);
        endpoint.send(&request).await.unwrap();
        endpoint.close_idle();
        let rest = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the kept connection was closed")
            .unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let base = Url::parse(&format!("http://{addr}")).unwrap();
        let endpoint = Endpoint::new(&base, 1, Duration::from_secs(5), "t").unwrap();
        let err = endpoint.send(b"GET / HTTP/1.1\r\n\r\n").await.unwrap_err();
        assert_eq!(err.kind(), "connect");
    }

    #[test]
    fn order_requests_are_complete_http() {
        let base = Url::parse("http://127.0.0.1:8080/shop/").unwrap();
        let endpoint = Endpoint::new(&base, 1, Duration::from_secs(1), "test/1").unwrap();
        let product = Uuid::parse_str("5e0c3f8a-1d2b-4c6e-8f9a-0b1c2d3e4f50").unwrap();
        let bytes = endpoint.order_request("/v1/orders", "tok.en", "key-1", product, 3);
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut request = httparse::Request::new(&mut headers);
        let head = match request.parse(&bytes).unwrap() {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial => panic!("partial"),
        };
        assert_eq!(request.method, Some("POST"));
        assert_eq!(request.path, Some("/shop/v1/orders"));
        let header = |name: &str| {
            let found = request.headers.iter().find(|h| h.name == name).unwrap();
            std::str::from_utf8(found.value).unwrap().to_owned()
        };
        assert_eq!(header("host"), "127.0.0.1:8080");
        assert_eq!(header("authorization"), "Bearer tok.en");
        assert_eq!(header("idempotency-key"), "key-1");
        assert_eq!(header("content-type"), "application/json");
        let body = &bytes[head..];
        assert_eq!(header("content-length"), body.len().to_string());
        let json: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({ "product_id": product, "quantity": 3 })
        );

        assert!(Endpoint::new(
            &Url::parse("https://example.com").unwrap(),
            1,
            Duration::from_secs(1),
            "t"
        )
        .is_err());
    }
}
