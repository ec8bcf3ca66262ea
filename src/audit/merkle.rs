//! RFC 6962 / RFC 9162 Merkle trees over a tenant's audit rows.
//!
//! Leaf `i` (0-based) of a tenant's tree is the row with `seq = i + 1`; its
//! leaf data is the 32 raw bytes of the row's chain hash (`hash`, hex-decoded).
//! `leaf = SHA-256(0x00 || data)`, `node = SHA-256(0x01 || left || right)`, and
//! the tree of `n` leaves splits at the largest power of two below `n`
//! (RFC 6962 §2.1). Inclusion proofs are RFC 9162 §2.1.3 audit paths and
//! consistency proofs RFC 9162 §2.1.4 proofs; the verification functions here
//! are the RFC's algorithms, so any CT library checks the same proofs.
//!
//! A prune deletes rows `1..=k` but keeps the tree: the prune's audit row
//! records the *frontier* of `k` (the hashes of the maximal aligned perfect
//! subtrees covering leaves `[0, k)`, at most 64 of them), from which the root
//! of any size `n >= k` and every proof of a leaf `>= k` can still be computed.

use sha2::{Digest, Sha256};

/// A 32-byte hash.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The leaf hash of an audit row, from its chain hash (64 hex chars).
pub fn row_leaf(chain_hash_hex: &str) -> Option<Hash> {
    Some(leaf_hash(&from_hex(chain_hash_hex)?))
}

/// Lowercase hex of 32 bytes.
pub fn to_hex(h: &Hash) -> String {
    super::chain::hex(h)
}

/// 64 hex chars to 32 bytes.
pub fn from_hex(s: &str) -> Option<Hash> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Largest power of two strictly below `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// A streaming tree: push leaf hashes in order; the root of the current size
/// is available at any time. Memory is O(log n).
#[derive(Debug, Clone, Default)]
pub struct CompactRange {
    /// Perfect subtrees covering `[0, size)`, largest first: `(height, hash)`.
    nodes: Vec<(u32, Hash)>,
    size: u64,
}

impl CompactRange {
    pub fn new() -> CompactRange {
        CompactRange::default()
    }

    /// Starts from a recorded frontier of `size` leaves (as `frontier()` returns).
    pub fn from_frontier(size: u64, frontier: &[Hash]) -> Option<CompactRange> {
        let heights: Vec<u32> = (0..64).rev().filter(|b| size & (1u64 << b) != 0).collect();
        if heights.len() != frontier.len() {
            return None;
        }
        Some(CompactRange {
            nodes: heights.into_iter().zip(frontier.iter().copied()).collect(),
            size,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The frontier: hashes of the maximal perfect subtrees, largest first.
    pub fn frontier(&self) -> Vec<Hash> {
        self.nodes.iter().map(|(_, h)| *h).collect()
    }

    pub fn push(&mut self, leaf: Hash) {
        let mut cur = (0u32, leaf);
        while let Some(&(h, left)) = self.nodes.last() {
            if h != cur.0 {
                break;
            }
            self.nodes.pop();
            cur = (h + 1, node_hash(&left, &cur.1));
        }
        self.nodes.push(cur);
        self.size += 1;
    }

    /// The RFC 6962 root of the leaves pushed so far.
    pub fn root(&self) -> Hash {
        let mut it = self.nodes.iter().rev();
        let Some(&(_, mut acc)) = it.next() else {
            return empty_root();
        };
        for (_, left) in it {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

/// Why a proof could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf {0} is not in a tree of size {1}")]
    OutOfRange(u64, u64),
    #[error("the proof needs leaves that were pruned")]
    Pruned,
    #[error("sizes must satisfy 0 < from <= to")]
    BadSizes,
}

/// A tree of `pruned + leaves.len()` leaves whose first `pruned` leaves are
/// known only through their frontier. Builds roots and proofs.
#[derive(Debug)]
pub struct Tree<'a> {
    pruned: u64,
    /// `(start, size, hash)` of each frontier subtree.
    frontier: Vec<(u64, u64, Hash)>,
    leaves: &'a [Hash],
}

impl<'a> Tree<'a> {
    /// `frontier` is the frontier of the first `pruned` leaves (empty when 0).
    pub fn new(pruned: u64, frontier: &[Hash], leaves: &'a [Hash]) -> Option<Tree<'a>> {
        let cr = CompactRange::from_frontier(pruned, frontier)?;
        let mut start = 0;
        let frontier = cr
            .nodes
            .iter()
            .map(|&(h, hash)| {
                let s = start;
                start += 1u64 << h;
                (s, 1u64 << h, hash)
            })
            .collect();
        Some(Tree {
            pruned,
            frontier,
            leaves,
        })
    }

    pub fn size(&self) -> u64 {
        self.pruned + self.leaves.len() as u64
    }

    /// The hash of `[lo, hi)` in the RFC 6962 shape (`lo` aligned as in the tree).
    fn range(&self, lo: u64, hi: u64) -> Result<Hash, ProofError> {
        if hi - lo == 1 && lo >= self.pruned {
            return Ok(self.leaves[(lo - self.pruned) as usize]);
        }
        if let Some(&(_, _, h)) = self
            .frontier
            .iter()
            .find(|&&(s, n, _)| s == lo && s + n == hi)
        {
            return Ok(h);
        }
        if hi - lo == 1 || (hi <= self.pruned && !self.frontier.iter().any(|&(s, _, _)| s == lo)) {
            return Err(ProofError::Pruned);
        }
        let k = split(hi - lo);
        Ok(node_hash(
            &self.range(lo, lo + k)?,
            &self.range(lo + k, hi)?,
        ))
    }

    /// The root of the first `n` leaves.
    pub fn root(&self, n: u64) -> Result<Hash, ProofError> {
        if n == 0 {
            return Ok(empty_root());
        }
        if n > self.size() {
            return Err(ProofError::OutOfRange(n, self.size()));
        }
        self.range(0, n)
    }

    /// RFC 9162 §2.1.3.1 audit path of leaf `m` in the tree of the first `n` leaves.
    pub fn inclusion(&self, m: u64, n: u64) -> Result<Vec<Hash>, ProofError> {
        if m >= n || n > self.size() {
            return Err(ProofError::OutOfRange(m, n));
        }
        if m < self.pruned {
            return Err(ProofError::Pruned);
        }
        let mut out = Vec::new();
        self.path(m, 0, n, &mut out)?;
        Ok(out)
    }

    fn path(&self, m: u64, lo: u64, hi: u64, out: &mut Vec<Hash>) -> Result<(), ProofError> {
        if hi - lo <= 1 {
            return Ok(());
        }
        let k = split(hi - lo);
        if m < lo + k {
            self.path(m, lo, lo + k, out)?;
            out.push(self.range(lo + k, hi)?);
        } else {
            self.path(m, lo + k, hi, out)?;
            out.push(self.range(lo, lo + k)?);
        }
        Ok(())
    }

    /// RFC 9162 §2.1.4.1 consistency proof between the first `m` and first `n` leaves.
    pub fn consistency(&self, m: u64, n: u64) -> Result<Vec<Hash>, ProofError> {
        if m == 0 || m > n {
            return Err(ProofError::BadSizes);
        }
        if n > self.size() {
            return Err(ProofError::OutOfRange(n, self.size()));
        }
        let mut out = Vec::new();
        self.subproof(m, 0, n, true, &mut out)?;
        Ok(out)
    }

    fn subproof(
        &self,
        m: u64,
        lo: u64,
        hi: u64,
        b: bool,
        out: &mut Vec<Hash>,
    ) -> Result<(), ProofError> {
        let n = hi - lo;
        if m == n {
            if !b {
                out.push(self.range(lo, hi)?);
            }
            return Ok(());
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, lo, lo + k, b, out)?;
            out.push(self.range(lo + k, hi)?);
        } else {
            self.subproof(m - k, lo + k, hi, false, out)?;
            out.push(self.range(lo, lo + k)?);
        }
        Ok(())
    }
}

/// RFC 9162 §2.1.3.2: does `proof` show leaf `m` with hash `leaf` in the tree
/// of size `n` with root `root`?
pub fn verify_inclusion(m: u64, n: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if m >= n {
        return false;
    }
    let (mut fnode, mut snode) = (m, n - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && r == *root
}

/// RFC 9162 §2.1.4.2: does `proof` show the tree `(n2, root2)` extends `(n1, root1)`?
pub fn verify_consistency(n1: u64, n2: u64, root1: &Hash, root2: &Hash, proof: &[Hash]) -> bool {
    if n1 == 0 || n1 > n2 {
        return false;
    }
    if n1 == n2 {
        return proof.is_empty() && root1 == root2;
    }
    let mut path: Vec<Hash> = proof.to_vec();
    if n1.is_power_of_two() {
        path.insert(0, *root1);
    }
    let (mut fnode, mut snode) = (n1 - 1, n2 - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && fr == *root1 && sr == *root2
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The RFC 6962 definition, literally (recursive over the data).
    fn reference_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
            }
        }
    }

    /// The leaves of the RFC 6962 / certificate-transparency test vectors.
    fn ct_leaves() -> Vec<Hash> {
        let data: [&[u8]; 8] = [
            b"",
            &[0x00],
            &[0x10],
            &[0x20, 0x21],
            &[0x30, 0x31],
            &[0x40, 0x41, 0x42, 0x43],
            &[0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
            &[
                0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d,
                0x6e, 0x6f,
            ],
        ];
        data.iter().map(|d| leaf_hash(d)).collect()
    }

    #[test]
    fn known_vectors_from_certificate_transparency() {
        // Roots of the first 1..=8 leaves, from the CT reference implementation's tests.
        let want = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let leaves = ct_leaves();
        let mut cr = CompactRange::new();
        for (i, w) in want.iter().enumerate() {
            cr.push(leaves[i]);
            assert_eq!(to_hex(&cr.root()), *w, "root of {} leaves", i + 1);
            let t = Tree::new(0, &[], &leaves).unwrap();
            assert_eq!(to_hex(&t.root(i as u64 + 1).unwrap()), *w);
        }
        // An inclusion path from the same tests: leaf 0 of 8.
        let t = Tree::new(0, &[], &leaves).unwrap();
        let p: Vec<String> = t.inclusion(0, 8).unwrap().iter().map(to_hex).collect();
        assert_eq!(
            p,
            [
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ]
        );
        // A consistency proof from the same tests: 6 -> 8.
        let p: Vec<String> = t.consistency(6, 8).unwrap().iter().map(to_hex).collect();
        assert_eq!(
            p,
            [
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ]
        );
        assert_eq!(
            to_hex(&empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&(i as u64).to_be_bytes()))
            .collect()
    }

    #[test]
    fn every_proof_in_small_trees_round_trips_and_matches_the_reference() {
        let all = leaves(33);
        let t = Tree::new(0, &[], &all).unwrap();
        for n in 1..=33u64 {
            let root = reference_root(&all[..n as usize]);
            assert_eq!(t.root(n).unwrap(), root);
            for m in 0..n {
                let p = t.inclusion(m, n).unwrap();
                assert!(verify_inclusion(m, n, &all[m as usize], &p, &root));
                assert!(!verify_inclusion(
                    m,
                    n,
                    &all[(m as usize + 1) % 33],
                    &p,
                    &root
                ));
            }
            for m in 1..=n {
                let p = t.consistency(m, n).unwrap();
                let r1 = reference_root(&all[..m as usize]);
                assert!(verify_consistency(m, n, &r1, &root, &p), "{m} -> {n}");
            }
        }
    }

    #[test]
    fn a_pruned_tree_keeps_its_roots_and_later_proofs() {
        let all = leaves(40);
        for k in 0..=40u64 {
            let mut cr = CompactRange::new();
            for l in &all[..k as usize] {
                cr.push(*l);
            }
            let t = Tree::new(k, &cr.frontier(), &all[k as usize..]).unwrap();
            let full = Tree::new(0, &[], &all).unwrap();
            for n in k.max(1)..=40 {
                assert_eq!(t.root(n).unwrap(), full.root(n).unwrap(), "k={k} n={n}");
                for m in k..n {
                    assert_eq!(t.inclusion(m, n).unwrap(), full.inclusion(m, n).unwrap());
                }
            }
            if k > 0 {
                assert_eq!(t.inclusion(k - 1, 40), Err(ProofError::Pruned));
            }
        }
    }

    proptest! {
        #[test]
        fn tampered_proofs_fail(n in 1u64..200, m_seed in any::<u64>(), m1_seed in any::<u64>(), which in any::<usize>(), bit in 0usize..256) {
            let all = leaves(n as usize);
            let t = Tree::new(0, &[], &all).unwrap();
            let root = t.root(n).unwrap();
            let m = m_seed % n;
            let mut p = t.inclusion(m, n).unwrap();
            prop_assert!(verify_inclusion(m, n, &all[m as usize], &p, &root));
            // Another index, another size, or a flipped bit: rejected.
            if n > 1 {
                prop_assert!(!verify_inclusion((m + 1) % n, n, &all[m as usize], &p, &root));
            }
            if !p.is_empty() {
                let i = which % p.len();
                p[i][bit / 8] ^= 1 << (bit % 8);
                prop_assert!(!verify_inclusion(m, n, &all[m as usize], &p, &root));
            }
            let m1 = m1_seed % n + 1;
            let mut c = t.consistency(m1, n).unwrap();
            let r1 = t.root(m1).unwrap();
            prop_assert!(verify_consistency(m1, n, &r1, &root, &c));
            let mut forged = r1;
            forged[0] ^= 1;
            prop_assert!(!verify_consistency(m1, n, &forged, &root, &c));
            if !c.is_empty() {
                let i = which % c.len();
                c[i][bit / 8] ^= 1 << (bit % 8);
                prop_assert!(!verify_consistency(m1, n, &r1, &root, &c));
            }
        }
    }
}
