//! The hand tools behind `patchbay send` and `patchbay dump`. (SKELETON: the tools helper fills in.)
pub mod dump;
pub mod peers;
pub mod send;
