//! `patchbay dump`. (SKELETON)
