//! The frame: how one append is laid out in a segment file.
//!
//! ```text
//! 0      4      8        16       24            24 + len
//! | len  | crc  | seq    | batch  | payload ... |
//! ```
//!
//! All integers little-endian. `len` is the payload's length, `seq` the frame's sequence number
//! (consecutive from 1 over the shard's whole history), `batch` the sequence number of the first
//! frame of the write that carried it (group commit writes a batch of frames at once), and `crc`
//! the CRC32C of the length, sequence, batch and payload. The payload is the appended records,
//! encoded with bincode. Zeroes never form a valid frame, so the preallocated rest of a segment
//! reads as its end.

use super::Record;

/// Bytes before the payload.
pub const HEADER_BYTES: usize = 24;
/// Largest payload; a larger length field is damage, not a frame.
pub const PAYLOAD_BYTES_MAX: usize = 16 << 20;

/// A frame read back from a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Sequence number.
    pub seq: u64,
    /// Sequence number of the first frame of its write.
    pub batch: u64,
    /// The encoded records.
    pub payload: &'a [u8],
}

impl Frame<'_> {
    /// Bytes the frame occupies.
    pub fn size(&self) -> usize {
        HEADER_BYTES + self.payload.len()
    }

    /// The records, or `None` when the payload does not decode (a frame with a valid checksum
    /// that does not decode was written by an incompatible version).
    pub fn records(&self) -> Option<Vec<Record>> {
        bincode::deserialize(self.payload).ok()
    }
}

/// Appends a frame holding `records` to `out`. Returns the payload's length, or `None` (and
/// leaves `out` as it was) when the records encode to more than [`PAYLOAD_BYTES_MAX`].
pub fn encode(out: &mut Vec<u8>, seq: u64, batch: u64, records: &[Record]) -> Option<usize> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_BYTES]);
    if bincode::serialize_into(&mut *out, records).is_err() {
        out.truncate(start);
        return None;
    }
    let len = out.len() - start - HEADER_BYTES;
    if len > PAYLOAD_BYTES_MAX {
        out.truncate(start);
        return None;
    }
    let frame = &mut out[start..];
    frame[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    frame[8..16].copy_from_slice(&seq.to_le_bytes());
    frame[16..24].copy_from_slice(&batch.to_le_bytes());
    let crc = checksum(frame);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    Some(len)
}

/// The frame at the start of `bytes`, or `None` when there is no valid frame there (too short,
/// a length out of range, or a checksum mismatch).
pub fn decode(bytes: &[u8]) -> Option<Frame<'_>> {
    if bytes.len() < HEADER_BYTES {
        return None;
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().ok()?) as usize;
    if len == 0 || len > PAYLOAD_BYTES_MAX || bytes.len() - HEADER_BYTES < len {
        return None;
    }
    let frame = &bytes[..HEADER_BYTES + len];
    let stored = u32::from_le_bytes(frame[4..8].try_into().ok()?);
    if checksum(frame) != stored {
        return None;
    }
    Some(Frame {
        seq: u64::from_le_bytes(frame[8..16].try_into().ok()?),
        batch: u64::from_le_bytes(frame[16..24].try_into().ok()?),
        payload: &frame[HEADER_BYTES..],
    })
}

/// CRC32C of a whole frame except its checksum field.
fn checksum(frame: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&frame[0..4]);
    crc32c::crc32c_append(crc, &frame[8..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payments::idempotency::{Change, Scope};

    fn records(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| {
                Record::Idempotency(Change::Released {
                    scope: Scope::Admin,
                    key: format!("key-{i}"),
                })
            })
            .collect()
    }

    #[test]
    fn a_frame_round_trips() {
        let mut out = vec![7u8; 3];
        let len = encode(&mut out, 42, 40, &records(3)).unwrap();
        let frame = decode(&out[3..]).unwrap();
        assert_eq!(frame.seq, 42);
        assert_eq!(frame.batch, 40);
        assert_eq!(frame.payload.len(), len);
        assert_eq!(frame.size(), out.len() - 3);
        assert_eq!(frame.records().unwrap(), records(3));
    }

    #[test]
    fn zeroes_truncation_and_any_flipped_bit_are_not_frames() {
        assert!(decode(&[0u8; 4096]).is_none());
        let mut out = Vec::new();
        encode(&mut out, 1, 1, &records(2)).unwrap();
        for cut in 0..out.len() {
            assert!(decode(&out[..cut]).is_none(), "truncated at {cut}");
        }
        for bit in 0..out.len() * 8 {
            let mut damaged = out.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&damaged).is_none(), "bit {bit} flipped");
        }
    }

    /// From fuzzing (`wal_record`, under an allocator that aborts on any allocation above
    /// 64 MiB): length prefixes claiming 2^60 records, a 2^60-byte body or a 2^60-byte key, in a
    /// frame with a valid checksum, allocate nothing near that (serde preallocates at most 1 MiB
    /// per sequence, and bincode checks a string's length against the bytes left): the payload
    /// just does not decode.
    #[test]
    fn huge_length_prefixes_in_a_valid_frame_do_not_allocate() {
        let framed = |payload: &[u8]| {
            let mut bytes = vec![0u8; HEADER_BYTES];
            bytes[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
            bytes[8..16].copy_from_slice(&1u64.to_le_bytes());
            bytes[16..24].copy_from_slice(&1u64.to_le_bytes());
            bytes.extend_from_slice(payload);
            let crc = checksum(&bytes);
            bytes[4..8].copy_from_slice(&crc.to_le_bytes());
            bytes
        };
        let huge = (1u64 << 60).to_le_bytes();
        let record = Record::Idempotency(Change::Completed {
            scope: Scope::Admin,
            key: "k".to_string(),
            status: 201,
            body: vec![7; 3],
        });
        let payload = bincode::serialize(&vec![record]).unwrap();
        let end = payload.len();
        // The record count, the body's length (before its 3 bytes), the key's length (before "k").
        let key_length = payload
            .windows(9)
            .position(|w| w == b"\x01\0\0\0\0\0\0\0k")
            .unwrap();
        for at in [0, end - 3 - 8, key_length] {
            let mut damaged = payload.clone();
            damaged[at..at + 8].copy_from_slice(&huge);
            let bytes = framed(&damaged);
            let frame = decode(&bytes).expect("the checksum is valid");
            assert_eq!(frame.records(), None, "length at {at}");
        }
        assert_eq!(decode(&framed(&payload)).unwrap().records().unwrap().len(), 1);
    }
}
