//! Transports. (SKELETON)
pub mod udp;
