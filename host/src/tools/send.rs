//! `patchbay send`. (SKELETON)
