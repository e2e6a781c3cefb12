//! Identifier newtypes shared by the scheduler and the block manager.
//!
//! Each id is a distinct type so a block index can never be passed where a
//! sequence id is expected, and no sentinel value (`u32::MAX`, `-1`) is ever
//! needed: absence is spelled `Option<...>`.

use std::fmt;

/// One request's sequence, unique within a scheduler for its whole life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

/// Index of one KV block in the paged pool (`0..num_blocks`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub u32);

/// Chained content hash of one full block (parent hash + its token ids).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub u64);

impl BlockId {
    /// The block's position in the pool, for indexing per-block tables.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for SeqId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seq#{}", self.0)
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "block#{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_order_and_print() {
        assert!(SeqId(1) < SeqId(2));
        assert_eq!(BlockId(7).index(), 7);
        assert_eq!(SeqId(3).to_string(), "seq#3");
        assert_eq!(BlockId(4).to_string(), "block#4");
    }
}
