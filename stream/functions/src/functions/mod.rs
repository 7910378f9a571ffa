//! The built-in bytestream functions, one file each.

pub mod base64;
pub mod compress;
pub mod identity;
mod inflate;
pub mod replace;
pub mod xor;
