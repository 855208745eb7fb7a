//! What the Linux node host reads from a call before it acts: the input of each built-in
//! capability (`echo`, `system.health`, `desktop.open_url`, `tern.certificate`) as its
//! handler parses and checks it, the registry's look-up and content-type check, and the
//! `/proc` files `system.health` reads. Only the checks run: no URL is opened, no file
//! is read or written, no handler's future is polled.
//!
//! The input is `[selector][bytes]`; the selector picks the capability name and content
//! type handed to the registry, and every parser sees the bytes.
#![no_main]

use std::sync::OnceLock;

use daemon::node_host::capabilities::{
    self, CallContext, MAX_URL_LEN, OpenUrlOptions, Registry, UrlPolicy,
};
use daemon::node_host::renewal::renewed_certificate;
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 5] = [
    "echo",
    "system.health",
    "desktop.open_url",
    "tern.certificate",
    "no.such",
];
const CONTENT_TYPES: [&str; 2] = ["application/json", "text/plain"];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };

    let _ = capabilities::echo_input(input);
    if let Ok(path) = capabilities::health_input(input) {
        assert!(path.is_absolute(), "a relative path passed: {path:?}");
    }
    if let Ok(url) = capabilities::open_url_input(input) {
        assert!(matches!(url.scheme(), "http" | "https"), "{url}");
        assert!(url.host_str().is_some_and(|h| !h.is_empty()), "{url}");
    }
    if let Ok(der) = renewed_certificate(input) {
        assert!(der.len() <= input.len() / 2, "more DER than hex");
    }
    if let Ok(text) = std::str::from_utf8(input) {
        if let Ok(url) = capabilities::check_url(text) {
            assert!(text.len() <= MAX_URL_LEN);
            assert!(matches!(url.scheme(), "http" | "https"), "{url}");
        }
        if let Ok(up) = capabilities::parse_uptime(text) {
            assert!(up.is_finite() && up >= 0.0);
        }
        if let Ok(load) = capabilities::parse_loadavg(text) {
            assert!(
                [load.one, load.five, load.fifteen]
                    .iter()
                    .all(|v| v.is_finite() && *v >= 0.0)
            );
        }
        let _ = capabilities::parse_meminfo(text);
    }

    // The registry's checks before a handler runs; the future is dropped unpolled, so
    // nothing is opened.
    let name = NAMES[usize::from(selector) % NAMES.len()];
    let content_type = CONTENT_TYPES[usize::from(selector >> 4) % CONTENT_TYPES.len()];
    let known = registry().get(name).is_some();
    match registry().call(name, content_type, input.to_vec(), CallContext::detached()) {
        Ok(_unpolled) => assert!(known && content_type == "application/json"),
        Err(e) => {
            let _ = e.to_outcome();
        }
    }
});

/// The built-in capabilities with URLs allowed and no opener: were a handler ever run,
/// it would fail rather than start a program.
fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        Registry::builtin(OpenUrlOptions {
            policy: UrlPolicy::Allow,
            prompter: None,
            opener: Vec::new(),
        })
    })
}
