//! Path validation: the receiver's first line of defence against a hostile sender.
//!
//! A wire path is relative, uses `/` as its only separator, and every component must be a name
//! that both Windows and Unix can hold without surprises. Anything else is refused before it gets
//! near a file system call.

use crate::limits::{MAX_COMPONENT_LEN, MAX_PATH_LEN};

/// Why a wire path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    #[error("a component is longer than {MAX_COMPONENT_LEN} bytes")]
    ComponentTooLong,
    #[error("path is absolute")]
    Absolute,
    #[error("path contains a backslash (the wire separator is '/')")]
    Backslash,
    #[error("path has an empty component ('//' or a trailing '/')")]
    EmptyComponent,
    #[error("path has a '.' or '..' component")]
    DotComponent,
    #[error("path contains a control character or NUL")]
    ControlCharacter,
    #[error("path contains a character Windows forbids in names (one of <>:\"|?*)")]
    ForbiddenCharacter,
    #[error("component {0:?} is a reserved Windows device name")]
    ReservedName(String),
    #[error("component ends with a space or a dot, which Windows strips")]
    TrailingDotOrSpace,
}

/// Device names Windows resolves in every directory. `CONIN$`/`CONOUT$` are console devices;
/// `CLOCK$` is historical but still refused by some Windows APIs.
const RESERVED: [&str; 7] = ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$", "CLOCK$"];

fn is_reserved_device(component: &str) -> bool {
    // Windows treats "CON.txt" and "CON .txt" like "CON": only the part before the first dot,
    // without trailing spaces, counts.
    let stem = component
        .split('.')
        .next()
        .unwrap_or("")
        .trim_end_matches(' ');
    let upper = stem.to_ascii_uppercase();
    if RESERVED.contains(&upper.as_str()) {
        return true;
    }
    ["COM", "LPT"].iter().any(|prefix| {
        // COM0-9, LPT0-9 and the superscript forms ¹²³ that Windows also maps to devices.
        upper.strip_prefix(prefix).is_some_and(|rest| {
            matches!(
                rest,
                "0" | "1" | "2" | "3" | "4" | "5" | "6" | "7" | "8" | "9" | "¹" | "²" | "³"
            )
        })
    })
}

/// Checks one `/`-free name (not `.` or `..`). Shared with the link-target check.
pub(crate) fn validate_component(component: &str) -> Result<(), PathError> {
    if component.is_empty() {
        return Err(PathError::EmptyComponent);
    }
    if component == "." || component == ".." {
        return Err(PathError::DotComponent);
    }
    if component.len() > MAX_COMPONENT_LEN {
        return Err(PathError::ComponentTooLong);
    }
    if component.chars().any(|c| c.is_control()) {
        return Err(PathError::ControlCharacter);
    }
    if component
        .chars()
        .any(|c| matches!(c, '<' | '>' | ':' | '"' | '|' | '?' | '*'))
    {
        return Err(PathError::ForbiddenCharacter);
    }
    if component.ends_with(' ') || component.ends_with('.') {
        return Err(PathError::TrailingDotOrSpace);
    }
    if is_reserved_device(component) {
        return Err(PathError::ReservedName(component.to_string()));
    }
    Ok(())
}

/// Checks that `path` is a safe relative wire path. `':'` is refused, which rules out drive
/// letters (`C:`), alternate data streams (`file:stream`) and UNC prefixes along with absolute
/// paths; `\` is refused so no Windows separator can smuggle in a `..`.
pub fn validate_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    path.split('/').try_for_each(validate_component)
}
