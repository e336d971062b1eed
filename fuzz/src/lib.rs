//! Helpers of the fuzz targets that are more than one call into the library under test.
//! Every parser is the library's own; this crate only feeds it.

pub mod kv_recovery;
