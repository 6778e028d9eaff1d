pub mod convert;
pub mod error;
pub mod ids;
