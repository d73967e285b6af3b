//! Merkle roots and branches in Bitcoin's layout: pairs are hashed with SHA256d, and an
//! odd last node is paired with itself. All hashes are in internal byte order.

use crate::sha256d::{sha256d, sha256d_64, sha256d_64_x2};

/// Folds a coinbase hash up a branch of sibling hashes to the merkle root. The coinbase is
/// always the first leaf, so every sibling sits on the right.
pub fn merkle_root_from_branch(coinbase_hash: &[u8; 32], branch: &[[u8; 32]]) -> [u8; 32] {
    let mut node = *coinbase_hash;
    let mut pair = [0u8; 64];
    for sibling in branch {
        pair[..32].copy_from_slice(&node);
        pair[32..].copy_from_slice(sibling);
        node = sha256d_64(&pair);
    }
    node
}

/// `merkle_root_from_branch` for two coinbases at once, their levels hashed interleaved.
/// The branches may differ (two jobs) but must be equally long.
pub fn merkle_roots_from_branches_x2(
    coinbase_hashes: [&[u8; 32]; 2],
    branches: [&[[u8; 32]]; 2],
) -> [[u8; 32]; 2] {
    assert_eq!(branches[0].len(), branches[1].len(), "equal depths");
    let mut nodes = [*coinbase_hashes[0], *coinbase_hashes[1]];
    let mut pairs = [[0u8; 64]; 2];
    for (left, right) in branches[0].iter().zip(branches[1]) {
        for (pair, (node, sibling)) in pairs.iter_mut().zip(nodes.iter().zip([left, right])) {
            pair[..32].copy_from_slice(node);
            pair[32..].copy_from_slice(sibling);
        }
        nodes = sha256d_64_x2(&pairs[0], &pairs[1]);
    }
    nodes
}

/// The siblings on the path from the first leaf to the root, for the transactions that
/// follow the coinbase (`other_txids`, without the coinbase itself).
pub fn merkle_branch_for_first_leaf(other_txids: &[[u8; 32]]) -> Vec<[u8; 32]> {
    let mut branch = Vec::new();
    // Level holds the nodes right of the first leaf's path; the path node itself is implied.
    let mut level: Vec<[u8; 32]> = other_txids.to_vec();
    while !level.is_empty() {
        branch.push(level[0]);
        let rest = &level[1..];
        let mut next = Vec::with_capacity(rest.len().div_ceil(2));
        for chunk in rest.chunks(2) {
            let right = if chunk.len() == 2 { chunk[1] } else { chunk[0] };
            let mut pair = [0u8; 64];
            pair[..32].copy_from_slice(&chunk[0]);
            pair[32..].copy_from_slice(&right);
            next.push(sha256d_64(&pair));
        }
        level = next;
    }
    branch
}

/// The merkle root of a full list of leaves, used to check branches and assembled blocks.
/// It hashes through the streaming `sha256d`, independent of the share path's helpers, so
/// tests that compare the two check one against the other.
pub fn merkle_root(leaves: &[[u8; 32]]) -> Option<[u8; 32]> {
    let mut level = leaves.to_vec();
    if level.is_empty() {
        return None;
    }
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|chunk| {
                let right = if chunk.len() == 2 { chunk[1] } else { chunk[0] };
                let mut pair = [0u8; 64];
                pair[..32].copy_from_slice(&chunk[0]);
                pair[32..].copy_from_slice(&right);
                sha256d(&pair)
            })
            .collect();
    }
    Some(level[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(i: u8) -> [u8; 32] {
        sha256d(&[i])
    }

    #[test]
    fn branch_reproduces_full_root_for_every_tree_size() {
        for count in 1..=33u8 {
            let leaves: Vec<[u8; 32]> = (0..count).map(leaf).collect();
            let branch = merkle_branch_for_first_leaf(&leaves[1..]);
            assert_eq!(
                merkle_root_from_branch(&leaves[0], &branch),
                merkle_root(&leaves).unwrap(),
                "{count} leaves"
            );
        }
    }

    #[test]
    fn single_transaction_root_is_the_txid() {
        let only = leaf(9);
        assert!(merkle_branch_for_first_leaf(&[]).is_empty());
        assert_eq!(merkle_root_from_branch(&only, &[]), only);
    }

    #[test]
    fn paired_roots_match_single_roots() {
        let branch_a: Vec<[u8; 32]> = (0..12u8).map(|i| sha256d(&[i, 1])).collect();
        let branch_b: Vec<[u8; 32]> = (0..12u8).map(|i| sha256d(&[i, 2])).collect();
        let (coinbase_a, coinbase_b) = (sha256d(b"a"), sha256d(b"b"));
        assert_eq!(
            merkle_roots_from_branches_x2([&coinbase_a, &coinbase_b], [&branch_a, &branch_b]),
            [
                merkle_root_from_branch(&coinbase_a, &branch_a),
                merkle_root_from_branch(&coinbase_b, &branch_b)
            ]
        );
    }
}
