//! Which node and which shard serve each slot.
//!
//! A cluster of shardpay nodes divides the 16384 slots into contiguous ranges, one per node, each
//! made of whole lease blocks of [`BLOCK_SLOTS`] slots (the unit a node leases in the database). A
//! node divides its own range among its shards in contiguous sub-ranges, the same way a single
//! node divides all the slots. A lone node (the default) serves every slot. Pure: no I/O.

use std::fmt;

use crate::slots::{Slot, SLOT_COUNT};

/// Slots per lease block: node ranges start and end on these boundaries.
pub const BLOCK_SLOTS: u32 = 64;

/// A contiguous range of slots, `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotRange {
    /// First slot.
    pub first: u32,
    /// Last slot (inclusive).
    pub last: u32,
}

impl SlotRange {
    /// Every slot.
    pub const ALL: SlotRange = SlotRange {
        first: 0,
        last: SLOT_COUNT - 1,
    };

    /// Parses `FIRST-LAST`: whole lease blocks within `0..16384`.
    pub fn parse(text: &str) -> Result<SlotRange, String> {
        let (first, last) = text
            .trim()
            .split_once('-')
            .ok_or_else(|| format!("expected FIRST-LAST, got {text:?}"))?;
        let number = |part: &str| {
            part.trim()
                .parse::<u32>()
                .map_err(|_| format!("expected FIRST-LAST with slot numbers, got {text:?}"))
        };
        let range = SlotRange {
            first: number(first)?,
            last: number(last)?,
        };
        if range.first > range.last || range.last >= SLOT_COUNT {
            return Err(format!(
                "{range} is not a range of slots from 0 to {}",
                SLOT_COUNT - 1
            ));
        }
        if range.first % BLOCK_SLOTS != 0 || (range.last + 1) % BLOCK_SLOTS != 0 {
            return Err(format!(
                "{range} is not whole blocks of {BLOCK_SLOTS} slots (the first a multiple of {BLOCK_SLOTS}, the last one less than a multiple)"
            ));
        }
        Ok(range)
    }

    /// Number of slots.
    pub fn len(self) -> u32 {
        self.last - self.first + 1
    }

    /// Always false: a range holds at least one slot.
    pub fn is_empty(self) -> bool {
        false
    }

    /// Whether `slot` is in the range.
    pub fn contains(self, slot: u32) -> bool {
        (self.first..=self.last).contains(&slot)
    }

    /// The sub-range `part` of `parts` equal, contiguous parts (sizes differ by at most one).
    pub fn part(self, part: usize, parts: usize) -> SlotRange {
        let (parts, len) = (parts as u64, u64::from(self.len()));
        let first = (part as u64 * len) / parts;
        let next = ((part as u64 + 1) * len) / parts;
        SlotRange {
            first: self.first + first as u32,
            last: self.first + next as u32 - 1,
        }
    }

    /// Which of `parts` equal parts holds `slot` (which must be in the range): the inverse of
    /// [`SlotRange::part`].
    pub fn part_of(self, slot: u32, parts: usize) -> usize {
        let offset = u64::from(slot - self.first);
        (((offset + 1) * parts as u64 - 1) / u64::from(self.len())) as usize
    }
}

impl fmt::Display for SlotRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// Another node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The slots it serves.
    pub slots: SlotRange,
    /// Its cluster address, `host:port`.
    pub address: String,
}

/// Where a slot is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Home {
    /// By this node's shard.
    Shard(usize),
    /// By another node: an index into [`Placement::peers`].
    Peer(usize),
}

/// This node's slots, how its shards divide them, and the other nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    slots: SlotRange,
    shards: usize,
    peers: Vec<Peer>,
}

impl Placement {
    /// A lone node serving every slot with `shards` shards.
    pub fn single(shards: usize) -> Placement {
        Placement {
            slots: SlotRange::ALL,
            shards: shards.max(1),
            peers: Vec::new(),
        }
    }

    /// This node serves `slots` (`FIRST-LAST`) with `shards` shards; `peers` lists the other
    /// nodes as comma-separated `FIRST-LAST=HOST:PORT`. Together the ranges must cover every
    /// slot exactly once, and every shard must get at least one slot.
    pub fn new(slots: &str, shards: usize, peers: &str) -> Result<Placement, String> {
        let slots = SlotRange::parse(slots)?;
        if shards == 0 || shards > slots.len() as usize {
            return Err(format!(
                "{shards} shards cannot divide the {} slots {slots}",
                slots.len()
            ));
        }
        let mut parsed = Vec::new();
        for entry in peers.split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
            let (range, address) = entry
                .split_once('=')
                .ok_or_else(|| format!("expected FIRST-LAST=HOST:PORT, got {entry:?}"))?;
            let address = address.trim();
            let port_ok = address.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|port| port > 0)
            });
            if !port_ok {
                return Err(format!("expected HOST:PORT after '=', got {address:?}"));
            }
            parsed.push(Peer {
                slots: SlotRange::parse(range)?,
                address: address.to_string(),
            });
        }
        let mut ranges: Vec<SlotRange> = parsed.iter().map(|peer| peer.slots).collect();
        ranges.push(slots);
        ranges.sort_by_key(|range| range.first);
        let mut next = 0;
        for range in &ranges {
            if range.first < next {
                return Err(format!("slots {range} are given to two nodes"));
            }
            if range.first > next {
                return Err(format!(
                    "slots {next}-{} belong to no node: this node's slots and the peers' must cover 0-{} exactly once",
                    range.first - 1,
                    SLOT_COUNT - 1
                ));
            }
            next = range.last + 1;
        }
        if next != SLOT_COUNT {
            return Err(format!(
                "slots {next}-{} belong to no node: this node's slots and the peers' must cover 0-{} exactly once",
                SLOT_COUNT - 1,
                SLOT_COUNT - 1
            ));
        }
        Ok(Placement {
            slots,
            shards,
            peers: parsed,
        })
    }

    /// This node's slots.
    pub fn slots(&self) -> SlotRange {
        self.slots
    }

    /// Number of this node's shards.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The other nodes.
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// Whether this node serves every slot.
    pub fn is_single(&self) -> bool {
        self.peers.is_empty()
    }

    /// The slots shard `shard` of this node owns.
    pub fn shard_slots(&self, shard: usize) -> SlotRange {
        self.slots.part(shard, self.shards)
    }

    /// Where `slot` is served.
    pub fn home(&self, slot: Slot) -> Home {
        let number = slot.number();
        if self.slots.contains(number) {
            return Home::Shard(self.slots.part_of(number, self.shards));
        }
        match self.peers.iter().position(|peer| peer.slots.contains(number)) {
            Some(peer) => Home::Peer(peer),
            // Unreachable for a validated placement (the ranges cover every slot); the first
            // shard answers rather than a panic.
            None => Home::Shard(0),
        }
    }

    /// The shard of this node that owns `slot`, if this node serves it.
    pub fn local_shard(&self, slot: Slot) -> Option<usize> {
        match self.home(slot) {
            Home::Shard(shard) => Some(shard),
            Home::Peer(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::slot_range;

    #[test]
    fn a_single_node_divides_slots_as_before() {
        for shards in [1, 2, 3, 7, 64] {
            let placement = Placement::single(shards);
            for shard in 0..shards {
                let range = placement.shard_slots(shard);
                // ⌊i·16384/N⌋ to ⌊(i+1)·16384/N⌋ − 1, as docs/API.md states.
                let first = (shard * 16384 / shards) as u32;
                let last = ((shard + 1) * 16384 / shards) as u32 - 1;
                assert_eq!((range.first, range.last), (first, last));
                assert_eq!(slot_range(shard, shards), (first, last));
            }
            for number in [0, 1, 4095, 4096, 8191, 8192, 16383] {
                let slot = Slot::new(number).unwrap();
                assert_eq!(placement.home(slot), Home::Shard(slot.shard(shards)));
            }
        }
    }

    #[test]
    fn two_nodes_split_the_slots_and_each_divides_its_half() {
        let a = Placement::new("0-8191", 2, "8192-16383=10.0.0.2:7400").unwrap();
        let b = Placement::new("8192-16383", 3, "0-8191=10.0.0.1:7400").unwrap();
        assert_eq!(a.shard_slots(0), SlotRange { first: 0, last: 4095 });
        assert_eq!(
            a.shard_slots(1),
            SlotRange {
                first: 4096,
                last: 8191
            }
        );
        assert_eq!(
            b.shard_slots(0),
            SlotRange {
                first: 8192,
                last: 10921
            }
        );
        assert_eq!(
            b.shard_slots(2),
            SlotRange {
                first: 13653,
                last: 16383
            }
        );
        for number in 0..SLOT_COUNT {
            let slot = Slot::new(number).unwrap();
            match (a.home(slot), b.home(slot)) {
                (Home::Shard(shard), Home::Peer(0)) => assert!(a.shard_slots(shard).contains(number)),
                (Home::Peer(0), Home::Shard(shard)) => assert!(b.shard_slots(shard).contains(number)),
                other => panic!("slot {number}: {other:?}"),
            }
        }
        assert_eq!(a.peers()[0].address, "10.0.0.2:7400");
        assert!(!a.is_single());
    }

    #[test]
    fn parts_cover_their_range_once() {
        let range = SlotRange::parse("128-1151").unwrap();
        for parts in 1..=40 {
            let mut next = range.first;
            for part in 0..parts {
                let sub = range.part(part, parts);
                assert_eq!(sub.first, next);
                for slot in [sub.first, sub.last] {
                    assert_eq!(range.part_of(slot, parts), part);
                }
                next = sub.last + 1;
            }
            assert_eq!(next, range.last + 1);
        }
    }

    #[test]
    fn refuses_what_does_not_cover_the_slots_once() {
        let cases = [
            ("0-8191", 1, "", "belong to no node"),
            ("0-8191", 1, "8192-16319=h:1", "belong to no node"),
            ("0-8191", 1, "8128-16383=h:1", "two nodes"),
            ("0-8191", 1, "0-16383=h:1", "two nodes"),
            ("0-100", 1, "", "whole blocks"),
            ("64-16383", 1, "", "belong to no node"),
            ("0-16384", 1, "", "not a range"),
            ("8191-0", 1, "", "not a range"),
            ("zero-8191", 1, "", "FIRST-LAST"),
            ("0-8191", 1, "8192-16383", "FIRST-LAST=HOST:PORT"),
            ("0-8191", 1, "8192-16383=host", "HOST:PORT"),
            ("0-8191", 1, "8192-16383=host:0", "HOST:PORT"),
            ("0-63", 65, "64-16383=h:1", "cannot divide"),
            ("0-16383", 0, "", "cannot divide"),
        ];
        for (slots, shards, peers, expected) in cases {
            let error = Placement::new(slots, shards, peers).unwrap_err();
            assert!(error.contains(expected), "{slots} {peers}: {error}");
        }
        assert!(Placement::new("0-16383", 4, "").unwrap().is_single());
        assert!(Placement::new("0-63", 1, " 64-8191=a:1 , 8192-16383=[::1]:2").is_ok());
    }
}
