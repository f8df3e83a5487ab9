//! The Fossil SCM delta format, as Centrifugo's `fossil` delta compression
//! and the SDKs' appliers speak it: [`create`] (the server side) and
//! [`apply`] (what an SDK does, for tests and the bench).
//!
//! A delta is `<target length>\n`, then commands: `<n>@<offset>,` copies `n`
//! bytes of the source from `offset`, `<n>:<bytes>` inserts `n` literal
//! bytes; it ends with `<checksum>;` of the target. Numbers are base 64 in
//! Fossil's digit order. [`create`] follows the published algorithm (D.
//! Richard Hipp's `delta.c`) as the Go port Centrifugo uses writes it
//! (github.com/shadowspore/fossil-delta: as many hash buckets as whole
//! source blocks, at most 249 candidates per window), so Herald's deltas are
//! byte for byte Centrifugo's; the `fossil-delta` npm package differs in
//! those two choices (its deltas are as valid). The unit tests hold
//! [`create`] to the Go port's vectors and [`apply`] to both.
//!
//! Knows nothing of publications, encodings or subscriptions.

/// The window of the rolling hash and the size of a source block.
const NHASH: usize = 16;

/// Base-64 digits in Fossil's order.
const DIGITS: &[u8; 64] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~";

/// The value of a digit byte, or `None` for any other byte.
fn digit_value(b: u8) -> Option<u32> {
    match b {
        b'0'..=b'9' => Some(u32::from(b - b'0')),
        b'A'..=b'Z' => Some(u32::from(b - b'A') + 10),
        b'_' => Some(36),
        b'a'..=b'z' => Some(u32::from(b - b'a') + 37),
        b'~' => Some(63),
        _ => None,
    }
}

/// Adler-like rolling hash over the last [`NHASH`] bytes.
struct RollingHash {
    a: u16,
    b: u16,
    i: usize,
    z: [u8; NHASH],
}

impl RollingHash {
    fn new(window: &[u8]) -> Self {
        let (mut a, mut b) = (0u16, 0u16);
        let mut z = [0u8; NHASH];
        for (i, &x) in window[..NHASH].iter().enumerate() {
            a = a.wrapping_add(u16::from(x));
            b = b.wrapping_add(((NHASH - i) as u16).wrapping_mul(u16::from(x)));
            z[i] = x;
        }
        Self { a, b, i: 0, z }
    }

    fn next(&mut self, c: u8) {
        let old = u16::from(self.z[self.i]);
        self.z[self.i] = c;
        self.i = (self.i + 1) & (NHASH - 1);
        self.a = self.a.wrapping_sub(old).wrapping_add(u16::from(c));
        self.b = self
            .b
            .wrapping_sub((NHASH as u16).wrapping_mul(old))
            .wrapping_add(self.a);
    }

    fn value(&self) -> u32 {
        u32::from(self.a) | (u32::from(self.b) << 16)
    }
}

fn put_int(out: &mut Vec<u8>, mut v: usize) {
    if v == 0 {
        out.push(b'0');
        return;
    }
    let start = out.len();
    while v > 0 {
        out.push(DIGITS[v & 0x3f]);
        v >>= 6;
    }
    out[start..].reverse();
}

/// Digits `put_int` writes for `v`.
fn digit_count(v: usize) -> usize {
    let (mut i, mut x) = (1, 64usize);
    while v >= x {
        i += 1;
        x = x.saturating_mul(64);
    }
    i
}

/// The 32-bit big-endian word sum of `z`, zero-padded to a multiple of 4.
fn checksum(z: &[u8]) -> u32 {
    let mut words = z.chunks_exact(4);
    let mut sum = 0u32;
    for w in &mut words {
        sum = sum.wrapping_add(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut last = [0u8; 4];
    last[..rest.len()].copy_from_slice(rest);
    sum.wrapping_add(u32::from_be_bytes(last))
}

fn insert(out: &mut Vec<u8>, literal: &[u8]) {
    put_int(out, literal.len());
    out.push(b':');
    out.extend_from_slice(literal);
}

/// The delta that turns `source` into `target`.
pub fn create(source: &[u8], target: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(target.len() / 4 + 16);
    put_int(&mut out, target.len());
    out.push(b'\n');
    if source.len() <= NHASH {
        insert(&mut out, target);
        put_int(&mut out, checksum(target) as usize);
        out.push(b';');
        return out;
    }

    // Landmarks: the hash of each whole source block (but a last one that
    // ends exactly at the end), chained by collision.
    let n_hash = source.len() / NHASH;
    let mut collide = vec![usize::MAX; n_hash];
    let mut landmark = vec![usize::MAX; n_hash];
    let mut i = 0;
    while i < source.len() - NHASH {
        let hv = RollingHash::new(&source[i..]).value() as usize % n_hash;
        collide[i / NHASH] = landmark[hv];
        landmark[hv] = i / NHASH;
        i += NHASH;
    }

    let mut base = 0;
    while base + NHASH < target.len() {
        let mut h = RollingHash::new(&target[base..]);
        let mut i = 0;
        let (mut best_cnt, mut best_ofst, mut best_litsz) = (0, 0, 0);
        loop {
            let mut limit = 250;
            let mut block = landmark[h.value() as usize % n_hash];
            while block != usize::MAX {
                limit -= 1;
                if limit == 0 {
                    break;
                }
                let src = block * NHASH;
                // Forward from source[src] / target[base + i]…
                let forward = source[src..]
                    .iter()
                    .zip(&target[base + i..])
                    .take_while(|(a, b)| a == b)
                    .count();
                let j = forward as isize - 1;
                // …and backward, not before target[base].
                let mut k = 1;
                while k < src && k <= i && source[src - k] == target[base + i - k] {
                    k += 1;
                }
                let k = k - 1;
                let ofst = src - k;
                let cnt = (j + k as isize + 1) as usize;
                let litsz = i - k;
                let sz = digit_count(litsz) + digit_count(cnt) + digit_count(ofst) + 3;
                if cnt >= sz && cnt > best_cnt {
                    best_cnt = cnt;
                    best_ofst = ofst;
                    best_litsz = litsz;
                }
                block = collide[block];
            }
            if best_cnt > 0 {
                if best_litsz > 0 {
                    insert(&mut out, &target[base..base + best_litsz]);
                    base += best_litsz;
                }
                base += best_cnt;
                put_int(&mut out, best_cnt);
                out.push(b'@');
                put_int(&mut out, best_ofst);
                out.push(b',');
                break;
            }
            if base + i + NHASH >= target.len() {
                insert(&mut out, &target[base..]);
                base = target.len();
                break;
            }
            h.next(target[base + i + NHASH]);
            i += 1;
        }
    }
    if base < target.len() {
        insert(&mut out, &target[base..]);
    }
    put_int(&mut out, checksum(target) as usize);
    out.push(b';');
    out
}

/// Why a delta does not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("malformed delta")]
    Malformed,
    #[error("delta copies outside its source")]
    CopyOutOfSource,
    #[error("delta writes more than its declared size")]
    TooLong,
    #[error("delta output has the wrong size")]
    WrongSize,
    #[error("delta checksum mismatch")]
    BadChecksum,
}

/// Reads a base-64 number; `None` when no digit is there or it overflows.
fn read_int(d: &[u8], pos: &mut usize) -> Option<usize> {
    let start = *pos;
    let mut v: usize = 0;
    while let Some(x) = d.get(*pos).copied().and_then(digit_value) {
        v = v.checked_mul(64)?.checked_add(x as usize)?;
        *pos += 1;
    }
    (*pos > start).then_some(v)
}

/// Applies `delta` to `source`, checking sizes, bounds and the checksum.
pub fn apply(source: &[u8], delta: &[u8]) -> Result<Vec<u8>, ApplyError> {
    let mut pos = 0;
    let limit = read_int(delta, &mut pos).ok_or(ApplyError::Malformed)?;
    if delta.get(pos) != Some(&b'\n') {
        return Err(ApplyError::Malformed);
    }
    pos += 1;
    let mut out = Vec::with_capacity(limit.min(delta.len().saturating_add(source.len())));
    while pos < delta.len() {
        let n = read_int(delta, &mut pos).ok_or(ApplyError::Malformed)?;
        let op = *delta.get(pos).ok_or(ApplyError::Malformed)?;
        pos += 1;
        match op {
            b'@' => {
                let ofst = read_int(delta, &mut pos).ok_or(ApplyError::Malformed)?;
                if delta.get(pos) != Some(&b',') {
                    return Err(ApplyError::Malformed);
                }
                pos += 1;
                if out.len() + n > limit {
                    return Err(ApplyError::TooLong);
                }
                let end = ofst.checked_add(n).ok_or(ApplyError::CopyOutOfSource)?;
                out.extend_from_slice(source.get(ofst..end).ok_or(ApplyError::CopyOutOfSource)?);
            }
            b':' => {
                if out.len() + n > limit {
                    return Err(ApplyError::TooLong);
                }
                let end = pos.checked_add(n).ok_or(ApplyError::Malformed)?;
                out.extend_from_slice(delta.get(pos..end).ok_or(ApplyError::Malformed)?);
                pos = end;
            }
            b';' => {
                if out.len() != limit {
                    return Err(ApplyError::WrongSize);
                }
                if n != checksum(&out) as usize {
                    return Err(ApplyError::BadChecksum);
                }
                return Ok(out);
            }
            _ => return Err(ApplyError::Malformed),
        }
    }
    Err(ApplyError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from the references: `scripts/fossil-vectors.mjs` runs the
    /// `fossil-delta` npm package (the algorithm the JS SDK applies) on
    /// sources and targets it builds and writes each delta in hex (`delta`);
    /// `scripts/fossil-vectors/` adds Centrifugo's encoder's delta for the
    /// same pair (`delta_centrifugo`).
    const VECTORS: &str = include_str!("../../tests/fixtures/fossil_vectors.json");

    #[derive(serde::Deserialize)]
    struct Vector {
        name: String,
        source: String,
        target: String,
        delta: String,
        delta_centrifugo: String,
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn create_matches_centrifugo_byte_for_byte_and_applies_both_references() {
        let vectors: Vec<Vector> = serde_json::from_str(VECTORS).unwrap();
        assert!(vectors.len() >= 20, "the fixture holds the vectors");
        let mut differing = 0;
        for v in vectors {
            let (source, target) = (hex(&v.source), hex(&v.target));
            let (npm, centrifugo) = (hex(&v.delta), hex(&v.delta_centrifugo));
            assert_eq!(create(&source, &target), centrifugo, "{}: create", v.name);
            assert_eq!(
                apply(&source, &centrifugo).unwrap(),
                target,
                "{}: apply",
                v.name
            );
            assert_eq!(
                apply(&source, &npm).unwrap(),
                target,
                "{}: apply npm's",
                v.name
            );
            differing += usize::from(npm != centrifugo);
        }
        assert!(differing > 0, "the vectors tell the two encoders apart");
    }

    #[test]
    fn a_small_change_in_a_json_state_gives_a_small_delta() {
        let a = br#"{"players":[{"id":1,"x":10,"y":20},{"id":2,"x":30,"y":40}],"tick":100,"score":"1-0"}"#;
        let b = br#"{"players":[{"id":1,"x":11,"y":20},{"id":2,"x":30,"y":40}],"tick":101,"score":"1-0"}"#;
        let d = create(a, b);
        assert!(d.len() < b.len() / 2, "{} vs {}", d.len(), b.len());
        assert_eq!(apply(a, &d).unwrap(), b);
    }

    #[test]
    fn bad_deltas_are_errors_not_panics() {
        let src = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let good = create(src, b"0123456789abcdefghij-klmnopqrstuvwxyz!");
        assert!(apply(src, &good).is_ok());
        for cut in 0..good.len() {
            assert!(apply(src, &good[..cut]).is_err(), "cut at {cut}");
        }
        let mut wrong_sum = good.clone();
        let n = wrong_sum.len();
        wrong_sum[n - 2] = if wrong_sum[n - 2] == b'0' { b'1' } else { b'0' };
        assert!(apply(src, &wrong_sum).is_err());
        assert_eq!(apply(src, b"3\n3@99,0;"), Err(ApplyError::CopyOutOfSource));
        assert_eq!(apply(src, b"1\n3:abc0;"), Err(ApplyError::TooLong));
        assert_eq!(apply(src, b"~~~~~~~~~~~~~~\n"), Err(ApplyError::Malformed));
        assert_eq!(apply(src, b"x"), Err(ApplyError::Malformed));
        assert_eq!(apply(b"", b"0\n0;"), Ok(Vec::new()));
    }
}
