//! Test plugin with the wrong ABI version, written by hand (no `export_plugin!`, no dependency on
//! `patchbay-plugin-api`): `patchbay_plugin_abi_version` returns 999. The host must refuse it after
//! that first call, saying which versions differ, and never call anything else: the entry function
//! here aborts the process, so a host that called it would die.

/// The ABI version this library claims to speak.
#[unsafe(no_mangle)]
pub extern "C" fn patchbay_plugin_abi_version() -> u32 {
    999
}

/// Must never be called: the ABI version check comes first.
#[unsafe(no_mangle)]
pub extern "C" fn patchbay_plugin_entry() -> *const u8 {
    eprintln!("wrong-abi test plugin: patchbay_plugin_entry was called despite ABI version 999");
    std::process::abort()
}
