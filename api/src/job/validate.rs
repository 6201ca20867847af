//! The checks a spec's strings must pass (names, labels, images, commands, attributes, mount paths), shared by
//! the spec and its parts.

use super::*;
use crate::error::ApiError;

/// `[a-z0-9]([a-z0-9-]*[a-z0-9])?`, at most 63 characters: a DNS label.
pub(super) fn check_dns_label(name: &str) -> Result<(), String> {
    check_name(name, |c| c == '-', "lowercase letters, digits or hyphens")
}

/// Like a job name, but `_` and `.` are allowed inside: Titan application names carry them.
pub(super) fn check_application_name(name: &str) -> Result<(), String> {
    check_name(name, |c| matches!(c, '-' | '_' | '.'), "lowercase letters, digits, `-`, `_` or `.`")
}

/// 1 to 63 characters from `[a-z0-9]` plus the `inner` punctuation, which may not start or end the name.
pub(super) fn check_name(name: &str, inner: impl Fn(char) -> bool, charset: &str) -> Result<(), String> {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let well_formed = name.starts_with(alnum) && name.ends_with(alnum) && name.chars().all(|c| alnum(c) || inner(c));
    if !well_formed || name.len() > MAX_NAME_LEN {
        return Err(format!("must be 1 to {MAX_NAME_LEN} {charset}, starting and ending with a letter or digit"));
    }
    Ok(())
}

/// A free-form label: printable, on one line, not empty.
pub(super) fn check_label(label: &str) -> Result<(), String> {
    if label.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(format!("must be at most {MAX_LABEL_LEN} bytes"));
    }
    if label.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    Ok(())
}

/// An image reference; the registry judges the rest when the agent pulls it.
pub(super) fn check_image(image: &str) -> Result<(), String> {
    if image.is_empty() {
        return Err("must name an image, e.g. busybox:latest".to_owned());
    }
    if image.len() > MAX_IMAGE_LEN {
        return Err(format!("must be at most {MAX_IMAGE_LEN} bytes"));
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace".to_owned());
    }
    Ok(())
}

/// A command line: at least the program, and no NUL, which `execve` cannot pass.
pub(super) fn check_command(command: &[String], at: &str) -> Result<(), ApiError> {
    match command.first() {
        None => {
            return Err(ApiError::field(at, "must name at least the program (omit it to use the default)"));
        }
        Some(program) if program.is_empty() => {
            return Err(ApiError::field(format!("{at}[0]"), "the program must not be empty"));
        }
        Some(_) => {}
    }
    if let Some(i) = command.iter().position(|arg| arg.contains('\0')) {
        return Err(ApiError::field(format!("{at}[{i}]"), "must not contain a NUL character"));
    }
    Ok(())
}

/// `[A-Za-z0-9_.-]+`, at most 128 characters.
pub(super) fn check_attribute(attribute: &str) -> Result<(), String> {
    let well_formed =
        !attribute.is_empty() && attribute.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !well_formed || attribute.len() > MAX_ATTRIBUTE_LEN {
        return Err(format!(
            "must be 1 to {MAX_ATTRIBUTE_LEN} letters, digits, `_`, `.` or `-` (`host` means the agent itself)"
        ));
    }
    Ok(())
}

/// An absolute path inside the container, never escaping upwards and never the root itself.
pub(super) fn check_mount_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("must be an absolute path".to_owned());
    }
    if path.len() > MAX_MOUNT_PATH_LEN {
        return Err(format!("must be at most {MAX_MOUNT_PATH_LEN} bytes"));
    }
    if path.contains('\0') {
        return Err("must not contain a NUL character".to_owned());
    }
    if path.split('/').any(|component| component == "..") {
        return Err("must not contain `..`".to_owned());
    }
    // Docker refuses a mount over the container's root, and the failure would only surface on the agent.
    if path.split('/').all(|component| component.is_empty() || component == ".") {
        return Err("cannot be the container's root".to_owned());
    }
    Ok(())
}
