//! The library side of srv6pipes-cni: what the node daemon shares with the installer.

pub mod conflist;
