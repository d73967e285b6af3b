//! Turning block templates into Stratum jobs, and accepted shares back into blocks.

pub mod block;
pub mod builder;
pub mod scan;
pub mod store;
pub mod submit;

pub use block::{assemble_block, BlockAssemblyError};
pub use builder::{build_job, BuiltJob, JobBuildError};
