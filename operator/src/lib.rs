//! srv6pipes-operator: reconciles ServiceChains into per-node programs with the shared pure
//! compiler, allocates node locators, writes chain status and Events.

pub mod check;
pub mod controller;
pub mod lease;
pub mod memory;
pub mod planner;
pub mod publisher;
pub mod slim;
pub mod world;

pub use srv6pipes_crds::client;
