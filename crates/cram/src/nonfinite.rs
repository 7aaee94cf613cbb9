//! JSON has no NaN or infinity: `serde_json` writes them as `null`. These
//! deserialisers read such a `null` back as NaN, so that every file cram
//! writes (vector metadata, exported cells) reads back whatever its numbers
//! were (a diverged text's losses are not finite).

use serde::{Deserialize, Deserializer};

/// An `f64`, `null` read as NaN.
pub fn f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// A list of `f32`, each `null` read as NaN.
pub fn vec_f32<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f32>, D::Error> {
    Ok(Vec::<Option<f32>>::deserialize(d)?
        .into_iter()
        .map(|x| x.unwrap_or(f32::NAN))
        .collect())
}

#[cfg(test)]
mod tests {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct T {
        #[serde(deserialize_with = "super::f64")]
        x: f64,
        #[serde(deserialize_with = "super::vec_f32")]
        v: Vec<f32>,
    }

    #[test]
    fn non_finite_numbers_round_trip_through_json_as_nan() {
        let t = T {
            x: f64::INFINITY,
            v: vec![1.5, f32::NAN],
        };
        let s = serde_json::to_string(&t).unwrap();
        assert_eq!(s, r#"{"x":null,"v":[1.5,null]}"#);
        let back: T = serde_json::from_str(&s).unwrap();
        assert!(back.x.is_nan() && back.v[0] == 1.5 && back.v[1].is_nan());
    }
}
