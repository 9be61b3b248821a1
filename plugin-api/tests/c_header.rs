//! `include/patchbay_plugin.h` describes the same ABI as `abi.rs`: the C compiler's sizes and
//! offsets of every struct field equal Rust's, the constants agree, and the C example plugin builds
//! against the header without a warning. (Loading that plugin is the host's end-to-end test.)

use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::Command;

use patchbay_plugin_api::abi::{
    code, host_code, log_level, HostVtable, PbBuffer, PluginVtable, ABI_VERSION,
};

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("patchbay-c-header-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn cc(args: &[&std::ffi::OsStr]) {
    let out = Command::new("cc")
        .args(args)
        .output()
        .expect("the system C compiler `cc` runs");
    assert!(
        out.status.success(),
        "cc {:?} failed:\n{}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "cc {:?} warned:\n{}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every size, offset and constant the header defines, as `name value` lines from C.
const C_LAYOUT: &str = r#"
#include <stdio.h>
#include "patchbay_plugin.h"
#define SIZE(t) printf("sizeof %s %zu\n", #t, sizeof(t))
#define OFF(t, f) printf("offset %s.%s %zu\n", #t, #f, offsetof(t, f))
#define CONST(c) printf("const %s %lld\n", #c, (long long)(c))
int main(void) {
    SIZE(PbBuffer); OFF(PbBuffer, ptr); OFF(PbBuffer, len); OFF(PbBuffer, cap);
    SIZE(PbHostVtable); OFF(PbHostVtable, abi_version); OFF(PbHostVtable, send);
    OFF(PbHostVtable, reply_osc); OFF(PbHostVtable, reply_bytes); OFF(PbHostVtable, close);
    OFF(PbHostVtable, log); OFF(PbHostVtable, count); OFF(PbHostVtable, schedule);
    SIZE(PbPluginVtable); OFF(PbPluginVtable, abi_version); OFF(PbPluginVtable, name);
    OFF(PbPluginVtable, version); OFF(PbPluginVtable, panic_unwind); OFF(PbPluginVtable, create);
    OFF(PbPluginVtable, on_message); OFF(PbPluginVtable, on_timer);
    OFF(PbPluginVtable, on_unload); OFF(PbPluginVtable, free_buffer);
    CONST(PATCHBAY_ABI_VERSION); CONST(PB_OK); CONST(PB_ERROR); CONST(PB_PANIC);
    CONST(PB_HOST_OK); CONST(PB_HOST_UNKNOWN); CONST(PB_HOST_REFUSED); CONST(PB_HOST_DROPPED);
    CONST(PB_LOG_ERROR); CONST(PB_LOG_WARN); CONST(PB_LOG_INFO); CONST(PB_LOG_DEBUG);
    return 0;
}
"#;

fn rust_layout() -> String {
    let mut lines = Vec::new();
    macro_rules! size {
        ($c:literal, $t:ty) => {
            lines.push(format!("sizeof {} {}", $c, size_of::<$t>()))
        };
    }
    macro_rules! off {
        ($c:literal, $t:ty, $($f:ident)*) => {
            $(lines.push(format!("offset {}.{} {}", $c, stringify!($f), offset_of!($t, $f)));)*
        };
    }
    macro_rules! constant {
        ($($c:literal = $v:expr),*) => {
            $(lines.push(format!("const {} {}", $c, $v as i64));)*
        };
    }
    size!("PbBuffer", PbBuffer);
    off!("PbBuffer", PbBuffer, ptr len cap);
    size!("PbHostVtable", HostVtable);
    off!("PbHostVtable", HostVtable, abi_version send reply_osc reply_bytes close log count schedule);
    size!("PbPluginVtable", PluginVtable);
    off!("PbPluginVtable", PluginVtable, abi_version name version panic_unwind create on_message on_timer on_unload free_buffer);
    constant!(
        "PATCHBAY_ABI_VERSION" = ABI_VERSION,
        "PB_OK" = code::OK,
        "PB_ERROR" = code::ERROR,
        "PB_PANIC" = code::PANIC,
        "PB_HOST_OK" = host_code::OK,
        "PB_HOST_UNKNOWN" = host_code::UNKNOWN,
        "PB_HOST_REFUSED" = host_code::REFUSED,
        "PB_HOST_DROPPED" = host_code::DROPPED,
        "PB_LOG_ERROR" = log_level::ERROR,
        "PB_LOG_WARN" = log_level::WARN,
        "PB_LOG_INFO" = log_level::INFO,
        "PB_LOG_DEBUG" = log_level::DEBUG
    );
    lines.join("\n") + "\n"
}

#[test]
fn the_header_has_the_rust_layout_and_constants() {
    let dir = scratch_dir("layout");
    let source = dir.join("layout.c");
    let exe = dir.join("layout");
    std::fs::write(&source, C_LAYOUT).unwrap();
    let include = manifest_dir().join("include");
    cc(&[
        "-std=c99".as_ref(),
        "-Wall".as_ref(),
        "-Wextra".as_ref(),
        "-I".as_ref(),
        include.as_os_str(),
        source.as_os_str(),
        "-o".as_ref(),
        exe.as_os_str(),
    ]);
    let out = Command::new(&exe).output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), rust_layout());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_c_example_plugin_builds_against_the_header_without_warnings() {
    let dir = scratch_dir("echo");
    let lib = dir.join("echo_plugin.so");
    let include = manifest_dir().join("include");
    let source = manifest_dir().join("examples/c/echo_plugin.c");
    cc(&[
        "-shared".as_ref(),
        "-fPIC".as_ref(),
        "-std=c99".as_ref(),
        "-pedantic".as_ref(),
        "-Wall".as_ref(),
        "-Wextra".as_ref(),
        "-I".as_ref(),
        include.as_os_str(),
        source.as_os_str(),
        "-o".as_ref(),
        lib.as_os_str(),
    ]);
    assert!(lib.exists());
    std::fs::remove_dir_all(dir).unwrap();
}
