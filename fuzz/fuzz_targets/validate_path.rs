//! Any string as a wire path and as a link target: no panic, and an accepted path has none of
//! the shapes the receiver relies on being refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use swrepl_proto::{check_link_target, validate_path};

fuzz_target!(|input: (&str, &str)| {
    let (path, target) = input;
    if validate_path(path).is_ok() {
        assert!(!path.is_empty() && !path.starts_with('/'));
        assert!(!path.contains('\\') && !path.contains(':') && !path.contains('\0'));
        assert!(path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".."));
    }
    if check_link_target(path, target).is_ok() {
        assert!(validate_path(path).is_ok());
        assert!(!target.starts_with('/') && !target.contains('\\') && !target.contains(':'));
        // Leading `..` may climb at most to the root.
        let ups = target.split('/').filter(|c| *c == "..").count();
        assert!(ups < path.split('/').count());
    }
});
