//! HTTP/1.1 response framing for the load generator: where one response ends in a byte stream.
//!
//! Content-Length and chunked bodies (RFC 9112 §6–7); a response without either is refused,
//! since on a keep-alive connection its end cannot be known. Pure functions, no I/O.

use std::ops::Range;

/// Largest response head or body the tool accepts, in bytes.
pub const RESPONSE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Most header fields of one response.
const RESPONSE_HEADERS_MAX: usize = 100;

/// One complete response at the front of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Bytes of the buffer this response takes.
    pub consumed: usize,
    /// Where the body is: in the buffer, or (chunked) in the caller's scratch buffer.
    pub body: Body,
    /// The server will close the connection after this response (`Connection: close`).
    pub close: bool,
}

/// Where a response's body is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// This range of the parsed buffer.
    InBuffer(Range<usize>),
    /// Decoded from chunks into the scratch buffer.
    Decoded,
}

/// A response that cannot be framed: the connection is unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FramingError {
    /// httparse refused the head.
    Head(String),
    /// Neither Content-Length nor chunked (or both, or a bad value).
    Length(&'static str),
    /// A malformed chunk.
    Chunk(&'static str),
    /// Larger than [`RESPONSE_BYTES_MAX`].
    TooLarge,
}

impl std::fmt::Display for FramingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FramingError::Head(reason) => write!(f, "malformed response head: {reason}"),
            FramingError::Length(reason) => write!(f, "response length: {reason}"),
            FramingError::Chunk(reason) => write!(f, "malformed chunked body: {reason}"),
            FramingError::TooLarge => write!(f, "response larger than {RESPONSE_BYTES_MAX} bytes"),
        }
    }
}

impl std::error::Error for FramingError {}

/// Parses the response at the front of `buffer`: `Ok(None)` if it is not complete yet. A chunked
/// body is decoded into `scratch` (cleared first).
///
/// A purpose-built scanner rather than httparse: it checks the status line and the shape of each
/// header line (`name: value` ending in CRLF) but looks inside only the three fields that frame
/// the message. httparse validated every byte and cost a fifth of the client's CPU time with
/// pipelined responses.
pub fn parse_response(buffer: &[u8], scratch: &mut Vec<u8>) -> Result<Option<Response>, FramingError> {
    let Some(head) = parse_head(buffer)? else {
        return if buffer.len() > RESPONSE_BYTES_MAX {
            Err(FramingError::TooLarge)
        } else {
            Ok(None)
        };
    };
    let Head {
        status,
        length: head_length,
        content_length,
        chunked,
        close,
    } = head;
    // RFC 9112 §6.3: 1xx, 204 and 304 have no body.
    if status < 200 || status == 204 || status == 304 {
        return Ok(Some(Response {
            status,
            consumed: head_length,
            body: Body::InBuffer(head_length..head_length),
            close,
        }));
    }
    if chunked {
        if content_length.is_some() {
            return Err(FramingError::Length("both Content-Length and chunked"));
        }
        return Ok(
            decode_chunked(buffer, head_length, scratch)?.map(|consumed| Response {
                status,
                consumed,
                body: Body::Decoded,
                close,
            }),
        );
    }
    let length = content_length.ok_or(FramingError::Length(
        "neither Content-Length nor chunked (cannot frame on keep-alive)",
    ))?;
    if length > RESPONSE_BYTES_MAX {
        return Err(FramingError::TooLarge);
    }
    let end = head_length + length;
    if buffer.len() < end {
        return Ok(None);
    }
    Ok(Some(Response {
        status,
        consumed: end,
        body: Body::InBuffer(head_length..end),
        close,
    }))
}

/// What framing needs from a response head.
struct Head {
    status: u16,
    /// Bytes of the head, through the empty line.
    length: usize,
    content_length: Option<usize>,
    chunked: bool,
    close: bool,
}

/// Scans a response head (RFC 9112 §4 status line, §5 field lines); `None` if incomplete.
fn parse_head(buffer: &[u8]) -> Result<Option<Head>, FramingError> {
    let bad = |reason: &str| Err(FramingError::Head(reason.to_string()));
    const PREFIX: &[u8] = b"HTTP/1.";
    let seen = buffer.len().min(PREFIX.len());
    if buffer[..seen] != PREFIX[..seen] {
        return bad("not an HTTP/1.x status line");
    }
    // One vectorized search for the end of the head, one for its line ends.
    let Some(blank_line) = memchr::memmem::find(buffer, b"\r\n\r\n") else {
        if memchr::memchr(b'\n', buffer).is_some_and(|end| end < 13) {
            return bad("malformed status line");
        }
        return Ok(None);
    };
    let head = &buffer[..blank_line + 2];
    let mut line_ends = memchr::memchr_iter(b'\n', head);
    let status_end = line_ends.next().expect("the head ends in CRLF");
    let line = &head[..status_end];
    if line.len() < 13
        || !matches!(line[7], b'0' | b'1')
        || line[8] != b' '
        || !line[9..12].iter().all(u8::is_ascii_digit)
        || !matches!(line[12], b' ' | b'\r')
        || line.last() != Some(&b'\r')
    {
        return bad("malformed status line");
    }
    let status = line[9..12]
        .iter()
        .fold(0u16, |sum, digit| sum * 10 + u16::from(digit - b'0'));
    let mut result = Head {
        status,
        length: blank_line + 4,
        content_length: None,
        chunked: false,
        close: false,
    };
    let mut line_start = status_end + 1;
    for (fields, line_end) in line_ends.enumerate() {
        let line = &head[line_start..line_end];
        line_start = line_end + 1;
        if fields >= RESPONSE_HEADERS_MAX {
            return bad("too many header fields");
        }
        let Some((&b'\r', line)) = line.split_last() else {
            return bad("header line not ending in CRLF");
        };
        // The name runs to the colon, without controls or whitespace: one pass checks both.
        let mut colon = 0;
        loop {
            match line.get(colon) {
                Some(b':') if colon > 0 => break,
                Some(&byte) if byte > b' ' && byte != 0x7f && byte != b':' => colon += 1,
                Some(_) => return bad("malformed header name"),
                None => return bad("header line without a colon"),
            }
        }
        let name = &line[..colon];
        // Only three fields frame a response; their names differ in length.
        match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                let value = parse_decimal(line[colon + 1..].trim_ascii())
                    .ok_or(FramingError::Length("bad Content-Length"))?;
                if result.content_length.is_some_and(|previous| previous != value) {
                    return Err(FramingError::Length("conflicting Content-Length fields"));
                }
                result.content_length = Some(value);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                result.chunked = line[colon + 1..]
                    .rsplit(|&byte| byte == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                if !result.chunked {
                    return Err(FramingError::Length("unsupported Transfer-Encoding"));
                }
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                result.close |= line[colon + 1..]
                    .split(|&byte| byte == b',')
                    .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"));
            }
            _ => {}
        }
    }
    Ok(Some(result))
}

/// A decimal number of at most 15 digits (far beyond any accepted length).
fn parse_decimal(text: &[u8]) -> Option<usize> {
    if text.is_empty() || text.len() > 15 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        text.iter()
            .fold(0usize, |sum, digit| sum * 10 + usize::from(digit - b'0')),
    )
}

/// Decodes the chunks starting at `start`; the bytes consumed through the end of the trailer
/// section, or `None` if incomplete.
fn decode_chunked(buffer: &[u8], start: usize, scratch: &mut Vec<u8>) -> Result<Option<usize>, FramingError> {
    scratch.clear();
    let mut position = start;
    loop {
        let Some(line_end) = find_crlf(&buffer[position..]) else {
            return incomplete(buffer);
        };
        let line = &buffer[position..position + line_end];
        let size_text = line.split(|&byte| byte == b';').next().unwrap_or_default();
        let size_text = std::str::from_utf8(size_text.trim_ascii())
            .map_err(|_| FramingError::Chunk("chunk size is not ASCII"))?;
        let size = usize::from_str_radix(size_text, 16).map_err(|_| FramingError::Chunk("bad chunk size"))?;
        position += line_end + 2;
        if size == 0 {
            // Trailer fields, each ending in CRLF, then an empty line.
            loop {
                let Some(line_end) = find_crlf(&buffer[position..]) else {
                    return incomplete(buffer);
                };
                position += line_end + 2;
                if line_end == 0 {
                    return Ok(Some(position));
                }
            }
        }
        if scratch.len() + size > RESPONSE_BYTES_MAX {
            return Err(FramingError::TooLarge);
        }
        if buffer.len() < position + size + 2 {
            return incomplete(buffer);
        }
        scratch.extend_from_slice(&buffer[position..position + size]);
        if &buffer[position + size..position + size + 2] != b"\r\n" {
            return Err(FramingError::Chunk("chunk data not followed by CRLF"));
        }
        position += size + 2;
    }
}

fn incomplete(buffer: &[u8]) -> Result<Option<usize>, FramingError> {
    if buffer.len() > RESPONSE_BYTES_MAX {
        Err(FramingError::TooLarge)
    } else {
        Ok(None)
    }
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|window| window == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body<'a>(buffer: &'a [u8], response: &Response, scratch: &'a [u8]) -> &'a [u8] {
        match &response.body {
            Body::InBuffer(range) => &buffer[range.clone()],
            Body::Decoded => scratch,
        }
    }

    #[test]
    fn content_length_responses_split_at_any_boundary() {
        let stream = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 201 Created\r\ncontent-length: 2\r\nConnection: close\r\n\r\n{}";
        let mut scratch = Vec::new();
        for cut in 0..stream.len() {
            let first = parse_response(&stream[..cut], &mut scratch).unwrap();
            if cut < 43 {
                assert_eq!(first, None, "cut {cut}");
            }
        }
        let first = parse_response(stream, &mut scratch).unwrap().unwrap();
        assert_eq!((first.status, first.consumed, first.close), (200, 43, false));
        assert_eq!(body(stream, &first, &scratch), b"hello");
        let rest = &stream[first.consumed..];
        let second = parse_response(rest, &mut scratch).unwrap().unwrap();
        assert_eq!(
            (second.status, second.consumed, second.close),
            (201, rest.len(), true)
        );
        assert_eq!(body(rest, &second, &scratch), b"{}");
    }

    #[test]
    fn chunked_bodies_are_decoded() {
        let stream = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let mut scratch = Vec::new();
        for cut in 0..stream.len() - 4 {
            assert_eq!(
                parse_response(&stream[..cut], &mut scratch).unwrap(),
                None,
                "cut {cut}"
            );
        }
        let response = parse_response(stream, &mut scratch).unwrap().unwrap();
        assert_eq!(response.consumed, stream.len() - 4);
        assert_eq!(scratch, b"hello!");
    }

    #[test]
    fn unframeable_responses_are_refused() {
        let mut scratch = Vec::new();
        for (stream, want) in [
            (&b"HTTP/1.1 200 OK\r\n\r\nhello"[..], "neither"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                "bad Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "conflicting",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                "unsupported",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "bad chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
                "CRLF",
            ),
            (b"HTTP/2 200\r\n\r\n", "not an HTTP/1.x status line"),
            (b"HTTP/1.1 20x OK\r\n\r\n", "malformed status line"),
            (b"HTTP/1.1 200 OK\r\nServer\r\n\r\n", "without a colon"),
            (b"HTTP/1.1 200 OK\r\n: x\r\n\r\n", "malformed header name"),
            (b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", "malformed header name"),
            (b"HTTP/1.1 200 OK\r\nServer: x\nDate: y\r\n\r\n", "CRLF"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999\r\n\r\n",
                "bad Content-Length",
            ),
            (b"garbage", "not an HTTP/1.x status line"),
        ] {
            let error = parse_response(stream, &mut scratch).unwrap_err();
            assert!(error.to_string().contains(want), "{error} for {stream:?}");
        }
    }

    #[test]
    fn bodiless_statuses_have_no_body() {
        let mut scratch = Vec::new();
        let stream = b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let response = parse_response(stream, &mut scratch).unwrap().unwrap();
        assert_eq!((response.status, response.consumed), (204, 27));
    }
}
