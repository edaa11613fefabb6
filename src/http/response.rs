//! Response encoding straight into the connection's output buffer: status line, `Server`, the cached
//! `Date`, the handler's headers, `Content-Length`, `Connection` when needed, and the body (omitted
//! for HEAD, RFC 9110 §9.3.2). Numbers go through `itoa`; nothing allocates once the buffer is warm.

use super::date;
use super::parse::Version;

/// One response being encoded for one request.
pub struct Response<'o> {
    out: &'o mut Vec<u8>,
    head_only: bool,
    close: bool,
    version: Version,
    status: u16,
}

impl<'o> Response<'o> {
    /// A response appended to `out`; `head_only` for HEAD requests; `close` when the connection
    /// closes after it.
    pub fn new(out: &'o mut Vec<u8>, head_only: bool, close: bool, version: Version) -> Self {
        Response {
            out,
            head_only,
            close,
            version,
            status: 0,
        }
    }

    /// The status sent, or 0 while nothing has been sent.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Whether the connection closes after this response.
    pub fn closes(&self) -> bool {
        self.close
    }

    /// Makes the connection close after this response (sends `Connection: close`).
    pub fn close_connection(&mut self) {
        debug_assert_eq!(self.status, 0, "close_connection after send");
        self.close = true;
    }

    /// Encodes the whole response. `headers` are extra fields (name, value); the codec adds
    /// `Server`, `Date`, `Content-Type` (when `content_type` is not empty), `Content-Length` and
    /// `Connection`. A second call is a bug and is ignored in release builds.
    pub fn send(&mut self, status: u16, content_type: &str, headers: &[(&str, &[u8])], body: &[u8]) {
        debug_assert_eq!(self.status, 0, "a response is sent once");
        if self.status != 0 {
            return;
        }
        self.status = status;
        let out = &mut *self.out;
        out.reserve(192 + body.len());
        match status_line(status) {
            Some(line) => out.extend_from_slice(line),
            None => {
                out.extend_from_slice(b"HTTP/1.1 ");
                out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
                out.push(b' ');
                out.extend_from_slice(reason(status).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        date::append_server_and_date(out);
        if !content_type.is_empty() {
            out.extend_from_slice(b"Content-Type: ");
            out.extend_from_slice(content_type.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        // RFC 9110 §8.6: no Content-Length in 1xx and 204 responses.
        let has_body = !(status < 200 || status == 204 || status == 304);
        if has_body {
            out.extend_from_slice(b"Content-Length: ");
            out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        for (name, value) in headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        if self.close {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if self.version == Version::Http10 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if has_body && !self.head_only {
            out.extend_from_slice(body);
        }
    }
}

/// The whole status line of the most frequent statuses, so it is one copy.
fn status_line(status: u16) -> Option<&'static [u8]> {
    Some(match status {
        200 => b"HTTP/1.1 200 OK\r\n",
        201 => b"HTTP/1.1 201 Created\r\n",
        204 => b"HTTP/1.1 204 No Content\r\n",
        400 => b"HTTP/1.1 400 Bad Request\r\n",
        401 => b"HTTP/1.1 401 Unauthorized\r\n",
        404 => b"HTTP/1.1 404 Not Found\r\n",
        422 => b"HTTP/1.1 422 Unprocessable Content\r\n",
        _ => return None,
    })
}

/// Reason phrases of the statuses this server sends (RFC 9110 §15).
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_headers_and_body() {
        let mut out = Vec::new();
        let mut response = Response::new(&mut out, false, false, Version::Http11);
        response.send(200, "text/plain", &[("X-Shard", b"3")], b"hi");
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\nServer: shardpay\r\nDate: "),
            "{text}"
        );
        assert!(
            text.ends_with("Content-Type: text/plain\r\nContent-Length: 2\r\nX-Shard: 3\r\n\r\nhi"),
            "{text}"
        );
    }

    #[test]
    fn head_keeps_length_but_drops_body() {
        let mut out = Vec::new();
        Response::new(&mut out, true, true, Version::Http11).send(200, "text/plain", &[], b"hello");
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.ends_with("Content-Length: 5\r\nConnection: close\r\n\r\n"),
            "{text}"
        );
    }

    #[test]
    fn fast_and_generic_status_lines_agree() {
        for status in [200u16, 201, 204, 400, 401, 404, 422] {
            let line = status_line(status).unwrap();
            assert_eq!(
                line,
                format!("HTTP/1.1 {status} {}\r\n", reason(status)).as_bytes()
            );
        }
    }

    #[test]
    fn no_content_has_no_length() {
        let mut out = Vec::new();
        Response::new(&mut out, false, false, Version::Http10).send(204, "", &[], b"");
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("Content-Length"), "{text}");
        assert!(text.ends_with("Connection: keep-alive\r\n\r\n"), "{text}");
    }
}
