//! Every input the fuzz target once failed on (`fuzz/regressions/`), replayed through the same checks.

use std::path::Path;

#[test]
fn kept_fuzz_inputs_still_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/regressions exists") {
        let path = entry.expect("readable entry").path();
        let data = std::fs::read(&path).expect("readable input");
        let result = std::panic::catch_unwind(|| patchbay::fuzzing::check_datagram(&data));
        assert!(
            result.is_ok(),
            "fuzz regression {} fails again",
            path.display()
        );
        count += 1;
    }
    assert!(count > 0, "no regression inputs found in {}", dir.display());
}

#[test]
fn kept_framing_fuzz_inputs_still_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions-framing");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/regressions-framing exists") {
        let path = entry.expect("readable entry").path();
        let data = std::fs::read(&path).expect("readable input");
        let result = std::panic::catch_unwind(|| patchbay::fuzzing::check_framing(&data));
        assert!(
            result.is_ok(),
            "framing fuzz regression {} fails again",
            path.display()
        );
        count += 1;
    }
    assert!(count > 0, "no regression inputs found in {}", dir.display());
}
