//! Protocols: named, complete sets of engine settings.
//!
//! `paper` reproduces Kuratov et al. (2025) exactly: nothing in front of the
//! vectors, the `paper` loss (the first text token is given), AdamW with lr
//! 1e-2, betas (0.9, 0.9), weight decay 0.01, at most 5000 steps, patience
//! 2000, no schedule, `randn * std` initialisation. `cram`, the default, is
//! what the convergence study (`docs/convergence.md`) found decodes the most
//! texts exactly in the fewest steps. A program starts from a protocol and
//! overrides single settings ([`CramArgs`] on the command line).

use serde::{Deserialize, Serialize};

use crate::engine::{CramConfig, Init, LossConvention, OptimizerConfig};
use crate::layout::Sink;

/// A named set of engine settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Protocol {
    /// The paper's settings and layout.
    Paper,
    /// cram's default: a sink in front of the vectors, the mean token
    /// embedding as the start, lr 0.3 with warm-up and cosine decay, the
    /// `full` loss.
    #[default]
    Cram,
}

impl Protocol {
    /// Every protocol.
    pub const ALL: [Protocol; 2] = [Protocol::Paper, Protocol::Cram];

    /// Name as written in files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Paper => "paper",
            Self::Cram => "cram",
        }
    }

    /// The protocol's settings, with one vector.
    pub fn config(self) -> CramConfig {
        match self {
            Self::Paper => CramConfig {
                protocol: Some(self),
                n_mem: 1,
                sink: Sink::None,
                init: Init::Randn,
                optimizer: OptimizerConfig::default(),
                loss: LossConvention::Paper,
                seed: 42,
                low_dim: None,
            },
            Self::Cram => CramConfig {
                protocol: Some(self),
                n_mem: 1,
                sink: Sink::Auto,
                init: Init::Mean,
                optimizer: OptimizerConfig {
                    lr: 0.3,
                    beta1: 0.9,
                    beta2: 0.9,
                    eps: 1e-8,
                    weight_decay: 0.01,
                    warmup_steps: 10,
                    min_lr: Some(0.03),
                    max_steps: 500,
                    patience: 500,
                },
                loss: LossConvention::Full,
                seed: 42,
                low_dim: None,
            },
        }
    }

    /// One line listing the protocol's settings (for `--help`).
    pub fn describe(self) -> String {
        let c = self.config();
        let o = &c.optimizer;
        let schedule = match o.min_lr {
            Some(m) => format!(
                "warm-up {} steps, cosine to {m} over max_steps",
                o.warmup_steps
            ),
            None if o.warmup_steps > 0 => {
                format!("warm-up {} steps, then constant", o.warmup_steps)
            }
            None => "constant".into(),
        };
        format!(
            "{}: sink {}, loss {}, init {}, lr {} ({schedule}), betas {}/{}, weight decay {}, max_steps {}, patience {}",
            self.as_str(),
            c.sink,
            c.loss,
            c.init,
            o.lr,
            o.beta1,
            o.beta2,
            o.weight_decay,
            o.max_steps,
            o.patience
        )
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Protocol {
    type Err = crate::error::CramError;
    fn from_str(s: &str) -> crate::error::Result<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                crate::error::CramError::Input(format!(
                    "unknown protocol `{s}` (expected paper or cram)"
                ))
            })
    }
}

/// The `--help` text of `--protocol`: every protocol's settings.
#[cfg(feature = "clap")]
fn protocol_help() -> String {
    let mut s = String::from(
        "Start from this protocol's settings; the flags below override single settings.",
    );
    for p in Protocol::ALL {
        s.push_str("\n  ");
        s.push_str(&p.describe());
    }
    s
}

/// Engine settings on the command line: a protocol, and flags that override
/// its single settings (unset flags keep the protocol's values).
#[cfg(feature = "clap")]
#[derive(Debug, Clone, clap::Args)]
pub struct CramArgs {
    /// Start from this protocol's settings.
    #[arg(long, value_enum, default_value_t = Protocol::Cram, long_help = protocol_help())]
    pub protocol: Protocol,
    /// Number of trainable vectors per text [default: 1].
    #[arg(long = "mem", value_name = "N")]
    pub n_mem: Option<usize>,
    /// What stands in front of the vectors: auto, none, a token or a token id.
    #[arg(long)]
    pub sink: Option<Sink>,
    /// How the vectors start: randn (× the embeddings' std), mean (the mean
    /// token embedding) or token:ID (that token's embedding).
    #[arg(long)]
    pub init: Option<Init>,
    /// Which positions the loss covers: full (the vectors alone decode the
    /// text) or paper (the first text token is given).
    #[arg(long)]
    pub loss: Option<LossConvention>,
    /// Seed of the initial vectors [default: 42].
    #[arg(long)]
    pub seed: Option<u64>,
    /// AdamW learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// AdamW first-moment decay.
    #[arg(long)]
    pub beta1: Option<f64>,
    /// AdamW second-moment decay.
    #[arg(long)]
    pub beta2: Option<f64>,
    /// AdamW epsilon.
    #[arg(long)]
    pub eps: Option<f64>,
    /// AdamW decoupled weight decay.
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Linear learning-rate warm-up over this many steps (0: none).
    #[arg(long = "warmup", value_name = "STEPS")]
    pub warmup_steps: Option<usize>,
    /// Cosine decay of the learning rate down to this value over max_steps
    /// (after the warm-up); `none`: constant.
    #[arg(long, value_parser = parse_min_lr)]
    pub min_lr: Option<MinLr>,
    /// Most optimisation steps per text.
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Stop a text after this many steps without an accuracy improvement.
    #[arg(long)]
    pub patience: Option<usize>,
}

/// A `--min-lr` value: a number, or `none` for a constant learning rate.
#[cfg(feature = "clap")]
#[derive(Debug, Clone, Copy)]
pub struct MinLr(pub Option<f64>);

#[cfg(feature = "clap")]
fn parse_min_lr(s: &str) -> Result<MinLr, String> {
    if s == "none" {
        return Ok(MinLr(None));
    }
    s.parse::<f64>()
        .map(|x| MinLr(Some(x)))
        .map_err(|e| format!("{e} (expected a number or none)"))
}

#[cfg(feature = "clap")]
impl CramArgs {
    /// The protocol's settings with the given flags applied.
    pub fn config(&self) -> CramConfig {
        let mut c = self.protocol.config();
        let o = &mut c.optimizer;
        macro_rules! set {
            ($dst:expr, $src:expr) => {
                if let Some(v) = $src {
                    $dst = v;
                }
            };
        }
        set!(c.n_mem, self.n_mem);
        set!(c.sink, self.sink.clone());
        set!(c.init, self.init);
        set!(c.loss, self.loss);
        set!(c.seed, self.seed);
        set!(o.lr, self.lr);
        set!(o.beta1, self.beta1);
        set!(o.beta2, self.beta2);
        set!(o.eps, self.eps);
        set!(o.weight_decay, self.weight_decay);
        set!(o.warmup_steps, self.warmup_steps);
        set!(o.min_lr, self.min_lr.map(|m| m.0));
        set!(o.max_steps, self.max_steps);
        set!(o.patience, self.patience);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paper_protocol_is_the_papers_settings() {
        let c = Protocol::Paper.config();
        assert_eq!(c.loss, LossConvention::Paper);
        assert_eq!(c.sink, Sink::None);
        assert_eq!(c.optimizer, OptimizerConfig::default());
        assert_eq!(c.optimizer.lr, 1e-2);
        assert_eq!((c.optimizer.beta1, c.optimizer.beta2), (0.9, 0.9));
        assert_eq!(c.optimizer.max_steps, 5000);
        assert_eq!(c.optimizer.patience, 2000);
        assert_eq!(c.optimizer.min_lr, None);
        assert_eq!(c.optimizer.warmup_steps, 0);
    }

    #[test]
    fn protocols_parse_and_describe_themselves() {
        for p in Protocol::ALL {
            assert_eq!(p.as_str().parse::<Protocol>().unwrap(), p);
            assert!(p.describe().starts_with(p.as_str()));
            assert!(p.config().optimizer.invalid().is_none());
        }
        assert!("fast".parse::<Protocol>().is_err());
    }
}
