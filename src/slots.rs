//! Users to slots, slots to shards, and the ids that carry their slot.
//!
//! A user's slot is `CRC16/XMODEM(case-folded username) mod 16384`, the scheme of Redis Cluster,
//! chosen because it is fixed, documented and cheap: it must never change, or users would move
//! between shards. Slots map to shards in contiguous ranges. A user id embeds its slot in hex, so
//! any shard (or client) routes a token's `sub` without a lookup. Pure functions: no I/O, no
//! randomness (random bytes are passed in).

use std::fmt;

/// Number of slots users are partitioned into.
pub const SLOT_COUNT: u32 = 16384;

/// Hex digits of random in a user id after the slot (80 bits).
const USER_RANDOM_HEX: usize = 20;
/// `usr_` + 4 hex digits of slot + random.
const USER_ID_LENGTH: usize = 4 + 4 + USER_RANDOM_HEX;

/// A slot, `0..SLOT_COUNT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot(u16);

impl Slot {
    /// The slot with this number, if it is below [`SLOT_COUNT`].
    pub fn new(number: u32) -> Option<Slot> {
        (number < SLOT_COUNT).then_some(Slot(number as u16))
    }

    /// The slot's number.
    pub fn number(self) -> u32 {
        u32::from(self.0)
    }

    /// The slot of a case-folded username.
    pub fn of_username(folded: &str) -> Slot {
        Slot::of_bytes(folded.as_bytes())
    }

    /// The slot of any key (e.g. an admin idempotency key).
    pub fn of_bytes(key: &[u8]) -> Slot {
        Slot((crc16_xmodem(key) as u32 % SLOT_COUNT) as u16)
    }

    /// The shard (of `shards`) that owns this slot when one node serves every slot.
    pub fn shard(self, shards: usize) -> usize {
        crate::placement::SlotRange::ALL.part_of(self.number(), shards)
    }
}

/// The first and last slot (inclusive) owned by `shard` of `shards` when one node serves every
/// slot.
pub fn slot_range(shard: usize, shards: usize) -> (u32, u32) {
    let range = crate::placement::SlotRange::ALL.part(shard, shards);
    (range.first, range.last)
}

/// A user id: `usr_` + the slot as 4 hex digits + 80 random bits as 20 hex digits.
/// Serialized as its text; deserializing validates it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl TryFrom<String> for UserId {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        UserId::parse(&text).ok_or_else(|| format!("invalid user id {text:?}"))
    }
}

impl From<UserId> for String {
    fn from(id: UserId) -> String {
        id.0
    }
}

impl UserId {
    /// A new id in `slot`, from 10 random bytes the caller drew.
    pub fn new(slot: Slot, random: [u8; 10]) -> UserId {
        let mut id = String::with_capacity(USER_ID_LENGTH);
        id.push_str("usr_");
        id.push_str(&format!("{:04x}", slot.0));
        for byte in random {
            id.push_str(&format!("{byte:02x}"));
        }
        UserId(id)
    }

    /// Parses a user id, checking its shape and that its slot is in range.
    pub fn parse(text: &str) -> Option<UserId> {
        let hex = text.strip_prefix("usr_")?;
        let valid = text.len() == USER_ID_LENGTH
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return None;
        }
        let slot = u32::from_str_radix(&hex[..4], 16).ok()?;
        Slot::new(slot)?;
        Some(UserId(text.to_string()))
    }

    /// The slot embedded in the id.
    pub fn slot(&self) -> Slot {
        let slot = u32::from_str_radix(&self.0[4..8], 16).expect("validated at construction");
        Slot(slot as u16)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// CRC-16/XMODEM (polynomial 0x1021, initial 0, no reflection), as Redis Cluster's key slots.
pub fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn crc16_matches_the_reference_values() {
        // The CRC catalogue's check value for CRC-16/XMODEM, and Redis Cluster's spec example.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31c3);
        assert_eq!(crc16_xmodem(b""), 0);
        // Redis: CLUSTER KEYSLOT foo = 12182, bar = 5061, hello = 866.
        assert_eq!(Slot::of_username("foo").number(), 12182);
        assert_eq!(Slot::of_username("bar").number(), 5061);
        assert_eq!(Slot::of_username("hello").number(), 866);
    }

    #[test]
    fn slot_ranges_cover_every_slot_once() {
        for shards in [1usize, 2, 3, 7, 64, 1024] {
            let mut next = 0;
            for shard in 0..shards {
                let (first, last) = slot_range(shard, shards);
                assert_eq!(first, next);
                assert!(last >= first);
                next = last + 1;
            }
            assert_eq!(next, SLOT_COUNT);
        }
        assert_eq!(slot_range(0, 4), (0, 4095));
    }

    #[test]
    fn shard_of_slot_inverts_the_ranges() {
        for shards in [1usize, 2, 3, 5, 7, 16, 100, 1024] {
            for shard in 0..shards {
                let (first, last) = slot_range(shard, shards);
                for slot in [first, (first + last) / 2, last] {
                    assert_eq!(
                        Slot::new(slot).unwrap().shard(shards),
                        shard,
                        "slot {slot} of {shards}"
                    );
                }
            }
        }
    }

    #[test]
    fn user_ids_carry_their_slot() {
        let slot = Slot::of_username("alice");
        let id = UserId::new(slot, [0xab; 10]);
        assert_eq!(id.as_str().len(), USER_ID_LENGTH);
        assert_eq!(id.slot(), slot);
        assert_eq!(UserId::parse(id.as_str()), Some(id.clone()));
        let random = "ab".repeat(10);
        assert!(UserId::parse(&format!("usr_3fff{random}")).is_some());
        let bad_cases = [
            String::new(),
            "usr_".to_string(),
            format!("usr_0000{}", &random[1..]),  // one digit short
            format!("usr_0000{random}0"),         // one digit long
            format!("usr_4000{random}"),          // slot 16384 is out of range
            format!("usr_00g0{random}"),          // not hex
            format!("usr_00A0{random}"),          // upper case
            format!("acc_0000{random}"),          // wrong prefix
            format!("usr_0000{}é", &random[2..]), // right byte length, not ASCII
        ];
        for bad in &bad_cases {
            assert_eq!(UserId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn user_ids_serialize_as_text_and_are_validated() {
        let id = UserId::new(Slot::of_username("alice"), [1; 10]);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<UserId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<UserId>("\"usr_nope\"").is_err());
    }

    proptest! {
        #[test]
        fn any_username_lands_in_range(name in "[a-z0-9_.-]{3,32}", shards in 1usize..=1024) {
            let slot = Slot::of_username(&name);
            prop_assert!(slot.number() < SLOT_COUNT);
            let shard = slot.shard(shards);
            let (first, last) = slot_range(shard, shards);
            prop_assert!(first <= slot.number() && slot.number() <= last);
        }

        #[test]
        fn parse_never_panics(text in ".{0,40}") {
            let _ = UserId::parse(&text);
        }
    }
}
