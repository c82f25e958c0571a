//! Conversion between `google.protobuf.Struct` (how resource specs travel and are stored) and
//! `serde_json::Value` (how specs are validated and shown).
//!
//! Protobuf numbers are f64; whole numbers come back as JSON integers so that a spec written as
//! `weight: 100` reads back as `100`, not `100.0`.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};

/// A spec that is not a JSON object cannot become a `google.protobuf.Struct`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a spec must be a JSON object, found {found}")]
pub struct SpecNotObject {
    pub found: &'static str,
}

pub fn json_to_struct(v: &serde_json::Value) -> Result<Struct, SpecNotObject> {
    match v {
        serde_json::Value::Object(map) => Ok(Struct {
            fields: map
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        }),
        serde_json::Value::Null => Ok(Struct::default()),
        other => Err(SpecNotObject {
            found: json_type_name(other),
        }),
    }
}

pub fn struct_to_json(s: &Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

pub fn json_to_value(v: &serde_json::Value) -> Value {
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(m) => Kind::StructValue(Struct {
            fields: m
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        }),
    };
    Value { kind: Some(kind) }
}

pub fn value_to_json(v: &Value) -> serde_json::Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(n)) => number_to_json(*n),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.iter().map(value_to_json).collect())
        }
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

/// Whole numbers within the exactly representable range become integers; a non-finite
/// number becomes null.
fn number_to_json(n: f64) -> serde_json::Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if n.is_finite() && n.fract() == 0.0 && n.abs() <= EXACT {
        if n < 0.0 {
            return serde_json::Value::from(n as i64);
        }
        return serde_json::Value::from(n as u64);
    }
    serde_json::Number::from_f64(n)
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}

/// How a JSON value's type reads in an error message (`a list`, `an object`).
pub fn json_type_name(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip_with_integers_kept_as_integers() {
        let v = serde_json::json!({
            "targets": [{"url": "http://127.0.0.1:9001", "weight": 100}],
            "ratio": 0.5, "neg": -3, "on": true, "none": null, "nested": {"a": []}
        });
        assert_eq!(struct_to_json(&json_to_struct(&v).unwrap()), v);
    }

    #[test]
    fn a_spec_that_is_not_a_mapping_is_refused() {
        let err = json_to_struct(&serde_json::json!([1])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a spec must be a JSON object, found an array"
        );
    }
}
