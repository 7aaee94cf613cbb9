//! cram: measure and exploit how much text fits into the input embeddings of
//! a causal language model.
//!
//! The pipeline runs one way: a text source ([`datasets`], [`texts`]) gives
//! texts, a model ([`model`], the `cram-models` crate) turns them into tokens,
//! the [`engine`] optimises batches of trainable `[mem]` vectors against the
//! frozen model, and the results go to `.safetensors` files ([`memfile`]) or,
//! for a grid of runs ([`sweep`]), to the results store ([`store`]), from
//! which the `cram-report` crate draws the paper's tables and figures.

#![warn(missing_docs)]

/// Implements `Serialize` as the type's `Display` string and `Deserialize`
/// through its `FromStr` (settings written as `--flag` values: `auto`,
/// `token:0`).
macro_rules! serde_as_string {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> std::result::Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// Implements `as_str`, `FromStr` and `Display` for an enum of unit
/// variants by the names they have on the command line and in files;
/// `what` names the setting in the error for an unknown name.
macro_rules! string_enum {
    ($t:ty, $what:literal, { $($v:ident => $name:literal),+ $(,)? }) => {
        impl $t {
            /// Name as written in files and on the command line.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$v => $name,)+
                }
            }
        }

        impl std::str::FromStr for $t {
            type Err = crate::error::CramError;
            fn from_str(s: &str) -> crate::error::Result<Self> {
                match s {
                    $($name => Ok(Self::$v),)+
                    other => Err(crate::error::CramError::Input(format!(
                        concat!("unknown ", $what, " `{}` (expected {})"),
                        other,
                        crate::one_of(&[$($name),+])
                    ))),
                }
            }
        }

        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// `a`, `a or b`, `a, b or c`: the names an error says were expected.
fn one_of(names: &[&str]) -> String {
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => (*last).to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

pub mod ablations;
pub mod capacity;
pub mod datasets;
pub mod engine;
pub mod layout;
pub mod lowdim;
pub mod memfile;
pub mod metrics;
pub mod nonfinite;
pub mod protocol;
pub mod sentences;
pub mod store;
pub mod sweep;
pub mod texts;

pub use cram_kernels as kernels;
pub use cram_kernels::{alloc, blas, fused, ops};
pub use cram_models as model;
pub use cram_models::{error, fetch, generate, source, tokenizer, weights};
pub use cram_models::{CramError, Result};

#[cfg(test)]
mod tests {
    use crate::capacity::{PatienceFrom, Schedule};
    use crate::engine::LossConvention;
    use crate::lowdim::ZStart;

    #[test]
    fn string_enums_round_trip_and_name_what_they_expect() {
        for s in [Schedule::Text, Schedule::Stage] {
            assert_eq!(s.to_string().parse::<Schedule>().unwrap(), s);
        }
        for p in [PatienceFrom::Start, PatienceFrom::Update] {
            assert_eq!(p.as_str().parse::<PatienceFrom>().unwrap(), p);
        }
        assert_eq!(
            "paper".parse::<LossConvention>().unwrap(),
            LossConvention::Paper
        );
        assert_eq!(ZStart::Fitted.to_string(), "fitted");
        let e = |r: Result<ZStart, crate::CramError>| r.unwrap_err().to_string();
        assert!(
            e("Fitted".parse()).contains("unknown z start `Fitted` (expected fitted or zero)"),
            "{}",
            e("Fitted".parse())
        );
        let e = "warm".parse::<PatienceFrom>().unwrap_err().to_string();
        assert!(
            e.contains("unknown patience baseline `warm` (expected update or start)"),
            "{e}"
        );
        assert_eq!(super::one_of(&["a"]), "a");
        assert_eq!(super::one_of(&["a", "b", "c"]), "a, b or c");
    }
}
