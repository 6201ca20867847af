//! How a JSON or YAML body becomes a typed value: bounded first (`crate::body`), parsed once, and a value that
//! does not fit its type explained at the offending field's wire path.

use super::*;
use crate::error::{ApiError, ErrorCode};

/// The encoding of a request body, chosen from its Content-Type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    Json,
    Yaml,
}

impl BodyFormat {
    pub(crate) fn name(self) -> &'static str {
        match self {
            BodyFormat::Json => "JSON",
            BodyFormat::Yaml => "YAML",
        }
    }

    /// Decodes a body into `T` without validating it.
    ///
    /// A body that is not JSON (or YAML) at all is `MalformedBody`; one that is, but does not fit `T` (a wrong
    /// type, a missing, unknown or repeated field) is `InvalidSpec` naming the field's wire path.
    pub fn decode<T: DeserializeOwned>(self, body: &[u8]) -> Result<T, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::new(ErrorCode::MalformedBody, "the body is empty"));
        }
        crate::body::check(body, self)?;
        // The common case is a good body: decode it directly, and pay for path tracking only to explain a bad one.
        if let BodyFormat::Json = self {
            if let Ok(value) = serde_json::from_slice::<T>(body) {
                return Ok(value);
            }
        }
        // Syntax is checked over the whole body before any typing: a typed pass alone would blame the user's spec
        // for a type error in the first half of a body that was in fact cut short. YAML is parsed once, into a
        // value the typed pass then reads: parsing it is the expensive part.
        let malformed = |why: String| {
            ApiError::new(ErrorCode::MalformedBody, format!("the body is not valid {}: {why}", self.name()))
        };
        match self {
            BodyFormat::Json => {
                serde_json::from_slice::<IgnoredAny>(body).map_err(|e| malformed(e.to_string()))?;
                serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(body)).map_err(misfit)
            }
            BodyFormat::Yaml => {
                let value = serde_yaml::from_slice::<serde_yaml::Value>(body).map_err(|e| malformed(e.to_string()))?;
                serde_path_to_error::deserialize(value).map_err(misfit)
            }
        }
    }
}

/// Turns a body that parsed but does not fit the type into `InvalidSpec` at the offending field's wire path.
pub(super) fn misfit<E: Display>(err: serde_path_to_error::Error<E>) -> ApiError {
    let message = err.inner().to_string();
    let mut path = String::new();
    for segment in err.path() {
        match segment {
            Segment::Seq { index } => path += &format!("[{index}]"),
            Segment::Map { key } | Segment::Enum { variant: key } => path = join(&path, key),
            Segment::Unknown => path = join(&path, "?"),
        }
    }
    // An unknown field's path already ends with its key (serde_path_to_error records the key it was reading),
    // but serde reports missing and repeated fields at the struct that holds them: their name is only in the
    // message.
    if let Some(name) = named_field(&message, &["missing field `", "duplicate field `"]) {
        path = join(&path, name);
    }
    if path.is_empty() {
        // The body as a whole has the wrong shape (a list, a string): there is no field to name.
        ApiError::new(ErrorCode::InvalidSpec, message)
    } else {
        ApiError::field(path, message)
    }
}

/// The field name quoted after one of `prefixes` in a serde message (`missing field `name``).
pub(super) fn named_field<'m>(message: &'m str, prefixes: &[&str]) -> Option<&'m str> {
    prefixes.iter().find_map(|prefix| {
        let rest = &message[message.find(prefix)? + prefix.len()..];
        let end = rest.find("`, ").or_else(|| rest.rfind('`'))?;
        Some(&rest[..end])
    })
}
