//! Fuzz target `wal`: see `laminar_core::fuzz::wal`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        // libfuzzer-sys aborts on any panic, caught or not; LaminarDB catches panics of the
        // libraries it embeds on purpose (a damaged Arrow IPC stream, an operator), so only a
        // panic that escapes the entry point is a finding: libfuzzer-sys still aborts on that.
        std::panic::set_hook(Box::new(|_| {}));
    },
    |data: &[u8]| laminar_core::fuzz::wal(data)
);
