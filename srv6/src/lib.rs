//! SRv6 for srv6pipes, free of I/O: the IPv6 + SRH codec (RFC 8754), locator and SID arithmetic
//! (RFC 8986 LOC:FUNCT:ARG), label selectors, the pure chain compiler, the replica flow hash, plus the wire types of
//! the node daemon's API (shared by the CNI plugin, the lab and the daemon).

pub mod classifier;
pub mod codec;
pub mod compiler;
pub mod flow;
pub mod node_api;
pub mod pipes;
pub mod plan;
pub mod selector;
pub mod sid;
pub mod slices;

/// Most segments an srv6pipes segment list may hold (functions + the decapsulation SID).
/// The eBPF datapath sizes its header buffers from the same number (`SP_MAX_SEGS`).
pub const MAX_SEGMENTS: usize = 8;
