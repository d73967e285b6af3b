//! RocksDB's C++ runtime. `librocksdb-sys` links it when it compiles RocksDB itself, but
//! not when `ROCKSDB_LIB_DIR` points it at a prebuilt static library, which is how
//! `cargo xtask` avoids compiling RocksDB twice (see xtask's `prebuilt_rocksdb`).

fn main() {
    println!("cargo:rerun-if-env-changed=ROCKSDB_LIB_DIR");
    if std::env::var_os("ROCKSDB_LIB_DIR").is_some() {
        println!("cargo:rustc-link-lib=stdc++");
    }
}
