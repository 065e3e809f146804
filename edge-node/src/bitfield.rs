//! A fixed-length bitfield of chunk numbers: which chunks a node holds.
//!
//! Bit `i` lives in byte `i / 8` at mask `0x80 >> (i % 8)` (most significant bit first, as BitTorrent's
//! have-map), so the wire form and the on-disk form are the raw bytes. Bits past `len` are always zero.
//! Non-goal: sparse or compressed representations; an index has at most about a million chunks (128 KiB).

/// A set of chunk numbers `0..len`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Bitfield {
    len: u32,
    ones: u32,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bitfield({}/{})", self.ones, self.len)
    }
}

/// Number of bytes needed for `len` bits.
pub fn byte_len(len: u32) -> usize {
    (len as usize).div_ceil(8)
}

impl Bitfield {
    /// An empty set over `len` chunks.
    pub fn new(len: u32) -> Self {
        Bitfield {
            len,
            ones: 0,
            bytes: vec![0; byte_len(len)],
        }
    }

    /// A full set over `len` chunks.
    pub fn full(len: u32) -> Self {
        let mut b = Bitfield::new(len);
        for i in 0..len {
            b.set(i);
        }
        b
    }

    /// Rebuilds a bitfield from its raw bytes. `None` if the byte count is wrong or a padding bit is set.
    pub fn from_bytes(len: u32, bytes: &[u8]) -> Option<Self> {
        if bytes.len() != byte_len(len) {
            return None;
        }
        if !len.is_multiple_of(8) {
            let pad_mask = 0xffu8 >> (len % 8);
            if bytes[bytes.len() - 1] & pad_mask != 0 {
                return None;
            }
        }
        let ones = bytes.iter().map(|b| b.count_ones()).sum();
        Some(Bitfield {
            len,
            ones,
            bytes: bytes.to_vec(),
        })
    }

    /// The raw bytes (wire and disk form).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Number of chunks covered.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the bitfield covers no chunks at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of chunks present.
    pub fn count(&self) -> u32 {
        self.ones
    }

    /// Whether every chunk is present.
    pub fn is_complete(&self) -> bool {
        self.ones == self.len
    }

    /// Whether chunk `i` is present (false when out of range).
    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.bytes[(i / 8) as usize] & (0x80 >> (i % 8)) != 0
    }

    /// Marks chunk `i` present; returns whether it was newly set. Out of range is ignored.
    pub fn set(&mut self, i: u32) -> bool {
        if i >= self.len || self.get(i) {
            return false;
        }
        self.bytes[(i / 8) as usize] |= 0x80 >> (i % 8);
        self.ones += 1;
        true
    }

    /// Marks chunk `i` absent; returns whether it was set.
    pub fn clear(&mut self, i: u32) -> bool {
        if !self.get(i) {
            return false;
        }
        self.bytes[(i / 8) as usize] &= !(0x80 >> (i % 8));
        self.ones -= 1;
        true
    }

    /// The present chunk numbers, ascending.
    pub fn iter_ones(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| self.get(i))
    }

    /// The chunk numbers present here and absent from `other` (same length), ascending. Skips whole
    /// bytes at a time, so it costs little when few bits qualify.
    pub fn iter_ones_not_in<'a>(&'a self, other: &'a Bitfield) -> impl Iterator<Item = u32> + 'a {
        debug_assert_eq!(self.len, other.len);
        self.bytes
            .iter()
            .zip(other.bytes.iter().chain(std::iter::repeat(&0)))
            .enumerate()
            .filter(|(_, (a, b))| **a & !**b != 0)
            .flat_map(|(i, (a, b))| {
                let mut m = *a & !*b;
                std::iter::from_fn(move || {
                    if m == 0 {
                        return None;
                    }
                    let bit = m.leading_zeros();
                    m &= !(0x80 >> bit);
                    Some(i as u32 * 8 + bit)
                })
            })
    }

    /// The absent chunk numbers, ascending.
    pub fn iter_zeros(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| !self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_count_and_padding() {
        let mut b = Bitfield::new(10);
        assert!(b.set(0));
        assert!(!b.set(0));
        assert!(b.set(9));
        assert!(!b.set(10));
        assert_eq!(b.as_bytes(), &[0x80, 0x40]);
        assert_eq!(b.count(), 2);
        assert_eq!(b.iter_ones().collect::<Vec<_>>(), vec![0, 9]);
        let mut other = Bitfield::new(10);
        other.set(0);
        other.set(3);
        assert_eq!(b.iter_ones_not_in(&other).collect::<Vec<_>>(), vec![9]);
        let mut wide = Bitfield::new(20);
        for i in [1, 2, 7, 8, 15, 19] {
            wide.set(i);
        }
        let mut mask = Bitfield::new(20);
        mask.set(2);
        mask.set(15);
        assert_eq!(
            wide.iter_ones_not_in(&mask).collect::<Vec<_>>(),
            vec![1, 7, 8, 19]
        );
        assert!(b.clear(9));
        assert_eq!(b.count(), 1);
        assert!(Bitfield::from_bytes(10, &[0x80, 0x40]).is_some());
        assert!(
            Bitfield::from_bytes(10, &[0x80, 0x20]).is_none(),
            "padding bit set"
        );
        assert!(Bitfield::from_bytes(10, &[0x80]).is_none(), "short");
        assert!(Bitfield::full(10).is_complete());
        assert_eq!(Bitfield::full(10).as_bytes(), &[0xff, 0xc0]);
    }
}
