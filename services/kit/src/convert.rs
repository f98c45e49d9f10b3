//! Conversions between domain values and wire types shared by every adapter.

use chrono::{DateTime, Utc};

use crate::ApiError;

/// Converts a time to a protobuf timestamp.
pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// Converts an optional time to an optional protobuf timestamp.
pub fn opt_timestamp(t: Option<DateTime<Utc>>) -> Option<prost_types::Timestamp> {
    t.map(timestamp)
}

/// Reads a protobuf timestamp from field `field`, refusing out-of-range values.
pub fn from_timestamp(field: &str, t: &prost_types::Timestamp) -> Result<DateTime<Utc>, ApiError> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(ApiError::invalid(format!(
            "{field}.nanos must be in 0..1e9"
        )));
    }
    DateTime::from_timestamp(t.seconds, t.nanos as u32)
        .ok_or_else(|| ApiError::invalid(format!("{field} is out of range")))
}
