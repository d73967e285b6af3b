//! Otedama's benchmarks and, later, its load generator. Benchmarks print their figures
//! next to a baseline measured in the same run; nothing here asserts on speed.
