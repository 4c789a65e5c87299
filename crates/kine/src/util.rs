//! Small helpers: wall-clock milliseconds, random identifiers and the CRC-32C checksum etcd's hashes use.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A random non-zero positive `i64` (lease and cluster ids). Seeded by the process's random hasher keys,
/// the clock and a counter.
pub fn random_id() -> i64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_i64(now_ms());
        let id = (h.finish() >> 1) as i64;
        if id != 0 {
            return id;
        }
    }
}

/// A file removed when dropped (snapshot files while they stream).
#[derive(Debug)]
pub struct TempPath(pub std::path::PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// FNV-1a, for stable member ids.
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// CRC-32C (Castagnoli), incremental.
#[derive(Debug, Clone, Copy, Default)]
pub struct Crc32c(u32);

const fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0x82F6_3B78 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC32C_TABLE: [u32; 256] = crc32c_table();

impl Crc32c {
    pub fn update(&mut self, data: &[u8]) {
        let mut c = !self.0;
        for b in data {
            c = CRC32C_TABLE[((c ^ u32::from(*b)) & 0xff) as usize] ^ (c >> 8);
        }
        self.0 = !c;
    }

    pub fn value(&self) -> u32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_vector() {
        let mut c = Crc32c::default();
        c.update(b"123456789");
        assert_eq!(c.value(), 0xE306_9283);
        let mut parts = Crc32c::default();
        parts.update(b"1234");
        parts.update(b"56789");
        assert_eq!(parts.value(), 0xE306_9283);
    }

    #[test]
    fn random_ids_are_positive_and_distinct() {
        let a = random_id();
        let b = random_id();
        assert!(a > 0 && b > 0 && a != b);
    }
}
