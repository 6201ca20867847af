//! How Raft data is encoded on disk and between members: MessagePack with field names, which is compact and
//! quick, and, like JSON, self-describing, so optional and defaulted fields of job specs survive the trip.
//! Snapshots stay JSON: they are written rarely and read by people debugging.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The content type of encoded bodies on the internal routes.
pub const CONTENT_TYPE: &str = "application/msgpack";

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(value)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(bytes)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use titan_api::job::{BodyFormat, JobSpec};

    use super::*;
    use crate::command::{Command, Meta};

    #[test]
    fn commands_round_trip_with_defaults_and_optional_fields() {
        let body = br#"{"name":"web","applicationName":"shop","locations":{"dc1":2},"cpus":0.5,"memory":64,
            "image":"busybox","healthCheck":{"type":"tcp","port":0},"ports":1}"#;
        let spec = JobSpec::parse(body, BodyFormat::Json).expect("valid");
        let cmd = Command::Batch(vec![Command::PutJob {
            id: "j1".into(),
            spec: Arc::new(crate::spec::Spec::from(&spec)),
            idempotency_key: None,
            meta: Meta { who: "a".into(), why: None, at_ms: 7, request: "r".into(), cell: String::new() },
        }]);
        let bytes = encode(&cmd).expect("encodes");
        assert_eq!(decode::<Command>(&bytes).expect("decodes"), cmd);
    }
}
