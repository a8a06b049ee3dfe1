//! Any frame body, as the receiver decodes it: when it is a registry message, the conversion to
//! the registry model (`swrepl_registry::wire::from_wire_*`, which checks shape, limits, parent
//! order and duplicates) must not panic, and what it accepts must convert back and forth
//! unchanged and export to a `.reg` file that reads back as the same registry.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/registry_wire.rs"]
mod registry_wire;

fuzz_target!(|body: &[u8]| registry_wire::check(body));
