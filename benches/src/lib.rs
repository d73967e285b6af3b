//! Otedama's benchmarks and, later, its load generator. Benchmarks print their figures
//! and the ratio to a baseline measured in the same run; nothing here asserts on speed.
