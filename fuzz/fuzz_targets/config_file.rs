//! The operator's config file (comments, trailing commas, case-insensitive keys, three node forms).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = v2sp_shared::config::strip_comments(text);
    let _ = v2sp_shared::config::parse_str(text, std::path::Path::new("/nonexistent/fuzz.json"));
});
