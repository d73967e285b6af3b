//! RandomX on real Monero mainnet data, under three seeds taken in turn (each switch
//! prepares the next seed's cache, as the pool does at a seed change):
//!
//! - two p2pool shares on mainnet templates whose hashing blob, seed and proof-of-work hash
//!   p2pool's own tests publish (`tests/src/pool_block_tests.cpp`, `block.dat` at its
//!   current and at an earlier revision);
//! - two mainnet blocks taken from p2pool's test dumps (`sidechain_dump.dat`), whose
//!   hashing blobs were rebuilt from their headers and transactions (the same rebuild gives
//!   the known ids of other mainnet blocks) and hashed with Debian's separately built
//!   `librandomx`; each hash meets the mainnet difficulty of its day, as a block's must.
//!
//! Each seed is the id of the block at the seed height (`(height - 65) & !2047`).

use otedama_kernels::randomx::{hash_difficulty, RandomXMode, RandomXSeed};

struct Vector {
    what: &'static str,
    seed: &'static str,
    hashing_blob: &'static str,
    pow: &'static str,
}

const VECTORS: [Vector; 4] = [
    Vector {
        what: "p2pool share at height 2845298 (seed: block 2844672)",
        seed: "6fc9c4a55eb513eb31955c084d9342e0082987f9e42da042449b7c9001176d3a",
        hashing_blob: "1010c0c8dba006b78e04571806733a74ef1014f404484d3358bfca889a75bb0fe9aff64a41c92bdf040000ecf0a11f83c6eced7d7cdfbdcd5a193f64d334b2c5491a9c595b4527e531ae7209",
        pow: "aa7a3c4a2d67cb6a728e244288219bf038024f3b511b0da197a19ec601000000",
    },
    Vector {
        what: "p2pool share at height 3258099 (seed: block 3256320)",
        seed: "bf513dbe52c22b09e65edae222ec902d6adb75585a0141b81a165f0fb0c9c0bc",
        hashing_blob: "1010c5b5aeb8062aaa1728867d88194c8866077942e8f4ca628c1989a316f72182eb4f4ea0e5da40080215dae0961941c1bb6471df5399f06b1db0a0ae621001961e3c6a02f160698ec1f215",
        pow: "0906c001cc0900098fe1b62593f8ba52bd1ae2a0806096aa361a9f1702000000",
    },
    Vector {
        what: "mainnet block 3258003 (seed: block 3256320)",
        seed: "bf513dbe52c22b09e65edae222ec902d6adb75585a0141b81a165f0fb0c9c0bc",
        hashing_blob: "1010dbe2adb8061c2c6f28f1b7b8ece6375c4846c1f7ed9c4669854359adb6c5f0872f800626455e0d3486ce4088c2446f35ee3b658367150a1d3963f7ffe3ef2b5c966c82b45d8221472803",
        pow: "d2a8102c84a250cd8cfa8b1610738626f6907ea768f58ac9a4f5980000000000",
    },
    Vector {
        what: "mainnet block 3456098 (seed: block 3454976)",
        seed: "11186f5a8473d8dc7a0d3a0bf25834a07b1dffe8741d53cd543a8708c2e8b2a9",
        hashing_blob: "1010c5fed8c306463a9d1a264ef7e82daf3ff45ca4c66c4df8fa8f3d2a43b735cf2da5b275144343083d00caa9d243ae12b374d9c0fcf710078adf906edfd068f05a59dee09ac4fbf8ad1901",
        pow: "aa1ade04f8266a5d9d0eb2c843dc87a27bc5ddb6f0f900682a46760000000000",
    },
];

/// Mainnet's difficulty was above this at both blocks' heights (about 3.7 × 10^11 and
/// 6.6 × 10^11): a block's hash proves at least that much.
const MAINNET_DIFFICULTY_FLOOR: f64 = 3.0e11;

#[test]
fn randomx_matches_monero_mainnet_across_seed_changes() {
    let mut prepared: Option<RandomXSeed> = None;
    let mut switches = 0;
    for vector in &VECTORS {
        let seed: [u8; 32] = hex::decode(vector.seed).unwrap().try_into().unwrap();
        if prepared.as_ref().map(|p| p.key()) != Some(&seed) {
            prepared = Some(RandomXSeed::prepare(&seed, RandomXMode::Light).unwrap());
            switches += 1;
        }
        let vm = prepared.as_ref().unwrap().vm().unwrap();
        let blob = hex::decode(vector.hashing_blob).unwrap();
        let pow = vm.hash(&blob).unwrap();
        assert_eq!(hex::encode(pow), vector.pow, "{}", vector.what);
        if vector.what.starts_with("mainnet block") {
            assert!(
                hash_difficulty(&pow) > MAINNET_DIFFICULTY_FLOOR,
                "{}: a block's hash proves the network's difficulty",
                vector.what
            );
        }
        // The nonce (blob bytes 39..43) is hashed: another nonce, another hash.
        let mut other = blob.clone();
        other[39] ^= 1;
        assert_ne!(vm.hash(&other).unwrap(), pow);
    }
    assert_eq!(switches, 3, "three seeds, each prepared once");
}
