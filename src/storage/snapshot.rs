//! The snapshot file: a shard's whole state as of one sequence number, checksummed.
//!
//! ```text
//! 0         8         12     20      28     32
//! | magic   | version | seq  | len   | crc  | body (len bytes) ...
//! ```
//!
//! Little-endian; `crc` is the CRC32C of bytes 8..28 and the body. The body is opaque here (the
//! shard's state, encoded by its owner).

/// First bytes of every snapshot.
pub const MAGIC: &[u8; 8] = b"SHPYSNAP";
/// Version of the layout and of the body's encoding.
pub const VERSION: u32 = 1;
/// Bytes before the body.
pub const HEADER_BYTES: usize = 32;

/// Why a snapshot file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Not a snapshot, or cut short.
    #[error("not a complete snapshot file")]
    Truncated,
    /// Written by another version.
    #[error("snapshot version {0} is not supported (this build reads {VERSION})")]
    Version(u32),
    /// The checksum does not match.
    #[error("checksum mismatch")]
    Checksum,
}

/// The file holding `body`, the state as of frame `seq`.
pub fn encode(seq: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(&header(seq, body));
    out.extend_from_slice(body);
    out
}

/// The bytes that come before `body` in its file (to write the two without joining them).
pub fn header(seq: u64, body: &[u8]) -> [u8; HEADER_BYTES] {
    let mut out = [0u8; HEADER_BYTES];
    out[0..8].copy_from_slice(MAGIC);
    out[8..12].copy_from_slice(&VERSION.to_le_bytes());
    out[12..20].copy_from_slice(&seq.to_le_bytes());
    out[20..28].copy_from_slice(&(body.len() as u64).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[8..28]), body);
    out[28..32].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The sequence number and body of a snapshot file.
pub fn decode(bytes: &[u8]) -> Result<(u64, &[u8]), SnapshotError> {
    if bytes.len() < HEADER_BYTES || &bytes[0..8] != MAGIC {
        return Err(SnapshotError::Truncated);
    }
    let field = |range: std::ops::Range<usize>| {
        let mut value = [0u8; 8];
        value[..range.len()].copy_from_slice(&bytes[range]);
        u64::from_le_bytes(value)
    };
    let version = field(8..12) as u32;
    if version != VERSION {
        return Err(SnapshotError::Version(version));
    }
    let seq = field(12..20);
    let len = field(20..28);
    if len != (bytes.len() - HEADER_BYTES) as u64 {
        return Err(SnapshotError::Truncated);
    }
    let body = &bytes[HEADER_BYTES..];
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[8..28]), body);
    if crc != field(28..32) as u32 {
        return Err(SnapshotError::Checksum);
    }
    Ok((seq, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_any_damage() {
        let file = encode(99, b"state of the shard");
        assert_eq!(decode(&file), Ok((99, &b"state of the shard"[..])));
        for cut in 0..file.len() {
            assert!(decode(&file[..cut]).is_err(), "cut at {cut}");
        }
        for bit in 0..file.len() * 8 {
            let mut damaged = file.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&damaged).is_err(), "bit {bit}");
        }
    }
}
