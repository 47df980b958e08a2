//! Arbitrary text as an agent-sim `--config-file` in HCL: `config::read_file` must not panic
//! or overflow the stack, its errors must name the file, and what it reads must be plain JSON
//! (a JSON object that serializes and reads back).
//!
//! The control characters U+0001, U+0002 and U+0004 in the input expand to 5,000 levels of
//! `[`, `a { ` and block labels (`"l" `), so the fuzzer can probe where the nesting limit is
//! enforced; labels nest in the JSON a config file reads as, but not in the parser.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// Levels of nesting a marker expands to: enough to overflow a 2 MiB stack in this build.
const AMPLIFY: usize = 5_000;

fuzz_target!(|input: &str| {
    let text = input
        .replacen('\u{1}', &"[".repeat(AMPLIFY), 1)
        .replacen('\u{2}', &"a { ".repeat(AMPLIFY), 1)
        .replacen('\u{4}', &"\"l\" ".repeat(AMPLIFY), 1);
    let path = std::env::temp_dir().join(format!("agent-sim-fuzz-{}.hcl", std::process::id()));
    std::fs::write(&path, &text).expect("temp file");
    match agent_sim::config::read_file(&path) {
        Ok(value) => {
            assert!(value.is_object(), "{value:?}");
            let json = serde_json::to_string(&value).expect("serializes");
            // Not compared for equality: serde_json does not round floats from long decimals
            // exactly, so `1e39`-sized literals can come back one ulp apart.
            let back: serde_json::Value = serde_json::from_str(&json).expect("reads back");
            assert!(back.is_object());
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
        }
    }
});
