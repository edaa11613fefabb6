//! Incremental decoder for `Transfer-Encoding: chunked` request bodies (RFC 9112 §7.1).
//!
//! The decoder is resumable: the connection feeds it the body bytes received so far, it picks up
//! where it stopped, so a body that trickles in byte by byte costs linear time. It is strict: chunk
//! sizes are bare hex digits (no `0x`, `_`, sign or spaces) that must fit in a u64, only white
//! space (BWS) may separate them from a `;` or the line's end, every line ends in CRLF, and a CR
//! or other control byte inside a chunk extension is an error. It never reads a socket and never
//! allocates beyond the decoded body, which it bounds.

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkedError {
    /// Malformed framing; the reason is a snake_case code.
    Invalid(&'static str),
    /// The decoded body exceeds the body limit.
    TooLarge,
}

/// Most bytes of chunk extensions on one chunk line.
const EXTENSION_BYTES_MAX: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the first digit of a chunk size.
    SizeStart,
    /// Inside the hex digits.
    Size,
    /// White space after the hex digits: only more of it, `;` or CR may follow.
    SizeSpace,
    /// Inside chunk extensions, after the size.
    Extension,
    /// After the size line's CR.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// After chunk data, expecting CR.
    DataCr,
    /// After chunk data's CR.
    DataLf,
    /// At the start of a trailer line (or the final CRLF).
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    /// After a trailer line's CR.
    TrailerLf,
    /// After the final CR.
    FinalLf,
    /// The whole body has been decoded.
    Done,
}

/// Resumable chunked-body decoder; one per request.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// Encoded bytes consumed so far, counted from the start of the body.
    consumed: usize,
    /// Size of the current chunk while its digits arrive; then bytes of it still to copy.
    remaining: u64,
    extension_bytes: usize,
    trailer_bytes: usize,
    /// The current trailer line has its colon.
    trailer_colon: bool,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    /// A decoder at the start of a body.
    pub fn new() -> Self {
        ChunkedDecoder {
            state: State::SizeStart,
            consumed: 0,
            remaining: 0,
            extension_bytes: 0,
            trailer_bytes: 0,
            trailer_colon: false,
        }
    }

    /// Decodes from `encoded` (all body bytes received so far, from the body's first byte) into
    /// `body`. Returns `Ok(Some(n))` once the body is complete, `n` being its encoded length;
    /// `Ok(None)` when more bytes are needed.
    pub fn decode(
        &mut self,
        encoded: &[u8],
        body: &mut Vec<u8>,
        body_bytes_max: usize,
        trailer_bytes_max: usize,
    ) -> Result<Option<usize>, ChunkedError> {
        while self.consumed < encoded.len() {
            if self.state == State::Data {
                let available = encoded.len() - self.consumed;
                let take = available.min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                body.extend_from_slice(&encoded[self.consumed..self.consumed + take]);
                self.consumed += take;
                self.remaining -= take as u64;
                if self.remaining == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let byte = encoded[self.consumed];
            self.consumed += 1;
            self.state = match self.state {
                State::SizeStart => {
                    let digit = hex_value(byte).ok_or(ChunkedError::Invalid("invalid_chunk_size"))?;
                    self.remaining = u64::from(digit);
                    State::Size
                }
                State::Size => match byte {
                    b'\r' => State::SizeLf,
                    b'\n' => return Err(ChunkedError::Invalid("invalid_chunk_line")),
                    b';' => {
                        self.extension_bytes = 1;
                        State::Extension
                    }
                    b' ' | b'\t' => {
                        self.extension_bytes = 1;
                        State::SizeSpace
                    }
                    _ => {
                        let digit = hex_value(byte).ok_or(ChunkedError::Invalid("invalid_chunk_size"))?;
                        self.remaining = self
                            .remaining
                            .checked_mul(16)
                            .map(|v| v | u64::from(digit))
                            .ok_or(ChunkedError::Invalid("chunk_size_overflow"))?;
                        State::Size
                    }
                },
                // `1 0` is 1 to a parser that stops at the space and 0x10 to one that drops it.
                State::SizeSpace => match byte {
                    b'\r' => State::SizeLf,
                    b'\n' => return Err(ChunkedError::Invalid("invalid_chunk_line")),
                    b' ' | b'\t' | b';' => {
                        self.extension_bytes += 1;
                        if self.extension_bytes > EXTENSION_BYTES_MAX {
                            return Err(ChunkedError::Invalid("chunk_extension_too_long"));
                        }
                        if byte == b';' {
                            State::Extension
                        } else {
                            State::SizeSpace
                        }
                    }
                    _ => return Err(ChunkedError::Invalid("invalid_chunk_size")),
                },
                State::Extension => match byte {
                    b'\r' => State::SizeLf,
                    b'\n' => return Err(ChunkedError::Invalid("invalid_chunk_line")),
                    b'\t' | b' '..=b'~' | 0x80..=0xff => {
                        self.extension_bytes += 1;
                        if self.extension_bytes > EXTENSION_BYTES_MAX {
                            return Err(ChunkedError::Invalid("chunk_extension_too_long"));
                        }
                        State::Extension
                    }
                    _ => return Err(ChunkedError::Invalid("invalid_chunk_extension")),
                },
                State::SizeLf => {
                    if byte != b'\n' {
                        return Err(ChunkedError::Invalid("invalid_chunk_line"));
                    }
                    if self.remaining == 0 {
                        State::TrailerStart
                    } else {
                        let total = (body.len() as u64).checked_add(self.remaining);
                        if total.is_none_or(|total| total > body_bytes_max as u64) {
                            return Err(ChunkedError::TooLarge);
                        }
                        State::Data
                    }
                }
                State::DataCr => {
                    if byte != b'\r' {
                        return Err(ChunkedError::Invalid("invalid_chunk_data"));
                    }
                    State::DataLf
                }
                State::DataLf => {
                    if byte != b'\n' {
                        return Err(ChunkedError::Invalid("invalid_chunk_data"));
                    }
                    State::SizeStart
                }
                State::TrailerStart => match byte {
                    b'\r' => State::FinalLf,
                    // A line feed alone, or obs-fold (RFC 9112 §5.2), is not a field line.
                    b'\n' | b' ' | b'\t' | b':' => return Err(ChunkedError::Invalid("invalid_trailer")),
                    _ => {
                        self.count_trailer(trailer_bytes_max)?;
                        self.trailer_colon = false;
                        State::Trailer
                    }
                },
                State::Trailer => match byte {
                    b'\r' if self.trailer_colon => State::TrailerLf,
                    b'\r' | b'\n' | 0x00 => return Err(ChunkedError::Invalid("invalid_trailer")),
                    _ => {
                        self.count_trailer(trailer_bytes_max)?;
                        self.trailer_colon |= byte == b':';
                        State::Trailer
                    }
                },
                State::TrailerLf => {
                    if byte != b'\n' {
                        return Err(ChunkedError::Invalid("invalid_trailer"));
                    }
                    State::TrailerStart
                }
                State::FinalLf => {
                    if byte != b'\n' {
                        return Err(ChunkedError::Invalid("invalid_chunk_line"));
                    }
                    self.state = State::Done;
                    return Ok(Some(self.consumed));
                }
                State::Data | State::Done => unreachable!("handled above / returned"),
            };
        }
        Ok(None)
    }

    /// Forgets the encoded bytes consumed so far, which the caller then removes from its buffer,
    /// and returns how many there were; decoding resumes at the next byte the caller keeps.
    pub fn rebase(&mut self) -> usize {
        std::mem::take(&mut self.consumed)
    }

    fn count_trailer(&mut self, trailer_bytes_max: usize) -> Result<(), ChunkedError> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > trailer_bytes_max {
            return Err(ChunkedError::TooLarge);
        }
        Ok(())
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(encoded: &[u8]) -> Result<Option<(Vec<u8>, usize)>, ChunkedError> {
        let mut decoder = ChunkedDecoder::new();
        let mut body = Vec::new();
        decoder
            .decode(encoded, &mut body, 1 << 20, 1024)
            .map(|done| done.map(|n| (body, n)))
    }

    #[test]
    fn decodes_chunks_extensions_and_trailers() {
        let encoded = b"5;name=value\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let (body, length) = decode_all(encoded).unwrap().unwrap();
        assert_eq!(body, b"hello world!");
        assert_eq!(length, encoded.len() - 4);
    }

    #[test]
    fn every_split_point_gives_the_same_body() {
        let encoded = b"4\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\n\r\n";
        for split in 0..=encoded.len() {
            let mut decoder = ChunkedDecoder::new();
            let mut body = Vec::new();
            let first = decoder
                .decode(&encoded[..split], &mut body, 1 << 20, 1024)
                .unwrap();
            let done = if split < encoded.len() {
                assert_eq!(first, None, "split {split}");
                decoder.decode(encoded, &mut body, 1 << 20, 1024).unwrap()
            } else {
                first
            };
            assert_eq!(done, Some(encoded.len()), "split {split}");
            assert_eq!(body, b"Wikipedia in\r\n\r\nchunks.");
        }
    }

    #[test]
    fn byte_at_a_time() {
        let encoded = b"3\r\nabc\r\n0\r\n\r\n";
        let mut decoder = ChunkedDecoder::new();
        let mut body = Vec::new();
        for end in 1..encoded.len() {
            assert_eq!(
                decoder.decode(&encoded[..end], &mut body, 100, 100).unwrap(),
                None
            );
        }
        assert_eq!(
            decoder.decode(encoded, &mut body, 100, 100).unwrap(),
            Some(encoded.len())
        );
        assert_eq!(body, b"abc");
    }

    #[test]
    fn malformed_sizes_are_refused() {
        for bad in [
            &b"0x5\r\nhello\r\n0\r\n\r\n"[..],
            b"_5\r\nhello\r\n0\r\n\r\n",
            b"5_0\r\n",
            b"-5\r\n",
            b"+5\r\n",
            b" 5\r\n",
            b"\r\n",
            b"g\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"5;a\rb\r\nhello\r\n0\r\n\r\n",
            b"5;a\x00\r\n",
            b"0\r\n\n",
            b"0\r\nX: 1\n\r\n",
            b"0\r\nno-colon\r\n\r\n",
            b"0\r\n folded: 1\r\n\r\n",
            b"0\r\n: empty-name\r\n\r\n",
        ] {
            assert!(
                matches!(decode_all(bad), Err(ChunkedError::Invalid(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn oversized_chunk_sizes_overflow() {
        assert_eq!(
            decode_all(b"10000000000000000\r\n"),
            Err(ChunkedError::Invalid("chunk_size_overflow"))
        );
        assert_eq!(
            decode_all(b"ffffffffffffffffff\r\n"),
            Err(ChunkedError::Invalid("chunk_size_overflow"))
        );
        // Leading zeros are fine: the value, not the digit count, is what overflows.
        assert_eq!(
            decode_all(b"00000000000000000001\r\na\r\n0\r\n\r\n")
                .unwrap()
                .unwrap()
                .0,
            b"a"
        );
    }

    #[test]
    fn body_and_trailer_limits() {
        let mut decoder = ChunkedDecoder::new();
        let mut body = Vec::new();
        assert_eq!(
            decoder.decode(b"5\r\nhello\r\n6\r\n", &mut body, 10, 10),
            Err(ChunkedError::TooLarge)
        );
        let mut decoder = ChunkedDecoder::new();
        let trailer = b"0\r\nX-Long-Trailer: aaaaaaaaaaaaaa\r\n\r\n";
        assert_eq!(
            decoder.decode(trailer, &mut Vec::new(), 10, 10),
            Err(ChunkedError::TooLarge)
        );
    }

    /// Regression: after white space, anything up to the CR was taken for a chunk extension, so
    /// `1 0` was a chunk of 1 byte here and of 0x10 bytes to a parser that drops the space.
    #[test]
    fn only_white_space_and_extensions_follow_a_chunk_size() {
        for bad in [
            &b"1 0\r\nX\r\n0\r\n\r\n"[..],
            b"5 x\r\n",
            b"5\t5\r\n",
            b"5 =1\r\n",
            b"5 \x00\r\n",
        ] {
            assert_eq!(
                decode_all(bad),
                Err(ChunkedError::Invalid("invalid_chunk_size")),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            decode_all(b"5 \n"),
            Err(ChunkedError::Invalid("invalid_chunk_line"))
        );
        for good in [
            &b"5 \r\nhello\r\n0\r\n\r\n"[..],
            b"5 \t ;a=1\r\nhello\r\n0 ;b\r\n\r\n",
        ] {
            assert_eq!(decode_all(good).unwrap().unwrap().0, b"hello");
        }
        let spaces = format!("5{}\r\n", " ".repeat(EXTENSION_BYTES_MAX + 1));
        assert_eq!(
            decode_all(spaces.as_bytes()),
            Err(ChunkedError::Invalid("chunk_extension_too_long"))
        );
    }
}
