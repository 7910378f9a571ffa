//! srv6pipes-stream, SRv6 pipes' stream proxy: an SR-aware transparent TCP proxy in a pod whose
//! chain interface srv6pipes-cni wired. Its node delivers the connections of the pod's stream
//! SIDs (each SID: LOC:FUNCT of the pod, ARG = function id + argument handle) and gives it, over
//! a channel in the pod's own netns, which listener and which functions each SID has; the proxy
//! relays every connection to its server through those functions (`srv6pipes-functions`).

pub mod channel;
pub mod netns;
pub mod proxy;
pub mod relay;
