//! Durations in shipper's JSON forms (control replies, `--json` output) are seconds as
//! a float, not serde's `{secs, nanos}`: what a script reading them expects.

use serde::{Deserialize, Deserializer, Serializer};
use std::time::Duration;

/// Serializes a duration as float seconds.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Reads float seconds; negative or non-finite values are refused.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = f64::deserialize(d)?;
    Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
}

/// The same for an optional duration (`null` when absent).
pub mod option {
    use super::*;

    /// Serializes `Some(d)` as float seconds, `None` as null.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    /// Reads float seconds or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<f64>::deserialize(d)?
            .map(|v| Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct T {
        #[serde(with = "super")]
        a: Duration,
        #[serde(with = "super::option")]
        b: Option<Duration>,
    }

    #[test]
    fn durations_are_float_seconds_both_ways() {
        let t = T {
            a: Duration::from_millis(1500),
            b: None,
        };
        let j = serde_json::to_string(&t).unwrap();
        assert_eq!(j, r#"{"a":1.5,"b":null}"#);
        assert_eq!(serde_json::from_str::<T>(&j).unwrap(), t);
        assert!(serde_json::from_str::<T>(r#"{"a":-1,"b":null}"#).is_err());
    }
}
