//! Turning block templates into Stratum jobs, and accepted shares back into blocks.

pub mod block;
pub mod builder;
pub mod scan;
pub mod store;
pub mod submit;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;

pub use block::{assemble_block, BlockAssemblyError};
pub use builder::{build_job, BuiltJob, JobBuildError};
