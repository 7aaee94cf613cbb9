//! What stands in front of the trainable vectors: the layout of a crammed
//! sequence.
//!
//! A model without a BOS token (SmolLM2) puts the first vector at position 0,
//! the position Llama-style models turn into an attention sink, and there one
//! vector cannot steer the first prediction. A fixed token in front of the
//! vectors (the *sink*) fixes that. It is the same token for every text, so it
//! carries no information about the text: the vectors still hold all of it.
//!
//! The setting is a [`Sink`]: `auto`, `none`, or a token (its text or id).
//! [`Sink::resolve`] turns it into a [`Layout`] for a tokenizer, and the
//! layout is what the engine, the decoders, the `.safetensors` metadata and
//! the results store use. When the sink is the BOS token that the tokenizer
//! itself prepends (Gemma), BOS moves in front of the vectors:
//! `[BOS, mem, text]` instead of the paper's `[mem, BOS, text]`.

use serde::{Deserialize, Serialize};

use crate::error::{CramError, Result};
use crate::tokenizer::TextTokenizer;

/// The sink setting, as written on the command line and in configurations.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Sink {
    /// The layout the convergence study found best for the model's tokenizer
    /// (see [`Sink::resolve`]).
    #[default]
    Auto,
    /// Nothing in front of the vectors (the paper's layout).
    None,
    /// This token: its id (`0`) or, if not a number, its text
    /// (`<|endoftext|>`).
    Token(String),
}

impl std::str::FromStr for Sink {
    type Err = CramError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "" => Err(CramError::Input(
                "empty sink (expected auto, none, a token or a token id)".into(),
            )),
            "auto" => Ok(Self::Auto),
            "none" => Ok(Self::None),
            t => Ok(Self::Token(t.to_string())),
        }
    }
}

impl std::fmt::Display for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::None => f.write_str("none"),
            Self::Token(t) => f.write_str(t),
        }
    }
}

serde_as_string!(Sink);

impl Sink {
    /// No sink: the layout of files and stores written before sinks existed.
    pub fn none() -> Self {
        Self::None
    }

    /// The layout for `tok`.
    ///
    /// `auto` chooses from the convergence study (`docs/convergence.md`):
    /// where the tokenizer prepends BOS, BOS moves in front of the vectors
    /// (`[BOS, mem, text]`); otherwise the end-of-text token
    /// (`<|endoftext|>` where the vocabulary has it, else the declared EOS,
    /// else the declared BOS) goes in front; with none of these, nothing.
    ///
    /// # Errors
    ///
    /// [`CramError::Input`] for a token that is not in the vocabulary.
    pub fn resolve(&self, tok: &TextTokenizer) -> Result<Layout> {
        let inner = tok.inner();
        let named = |id: u32| Layout::with_sink(tok, id);
        match self {
            Self::None => Ok(Layout::default()),
            Self::Auto => {
                if tok.adds_bos() {
                    if let Some(b) = tok.bos_id() {
                        return Ok(named(b));
                    }
                }
                let eot = inner
                    .token_to_id("<|endoftext|>")
                    .or(tok.eos_id())
                    .or(tok.bos_id());
                Ok(eot.map(named).unwrap_or_default())
            }
            Self::Token(t) => {
                // A number is an id (digit strings are tokens too, but
                // nobody means the token "0" by `--sink 0`).
                let vocab = inner.get_vocab_size(true);
                match t.parse::<u32>() {
                    Ok(id) if (id as usize) < vocab => Ok(named(id)),
                    Ok(id) => Err(CramError::Input(format!(
                        "sink token id {id} is outside the vocabulary ({vocab} tokens)"
                    ))),
                    Err(_) => inner.token_to_id(t).map(named).ok_or_else(|| {
                        CramError::Input(format!(
                            "sink `{t}` is not a token of this model's vocabulary (give auto, none, a token's text or its id)"
                        ))
                    }),
                }
            }
        }
    }
}

/// The resolved layout: `[sink?, mem × n, text]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Layout {
    /// The token id in front of the vectors, if any.
    #[serde(default)]
    pub sink: Option<u32>,
    /// Its text, for people reading the metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink_token: Option<String>,
    /// Whether the sink is the BOS the tokenizer prepends, moved from the
    /// front of the text to the front of the vectors.
    #[serde(default)]
    pub moves_bos: bool,
}

impl Layout {
    fn with_sink(tok: &TextTokenizer, id: u32) -> Self {
        Self {
            sink: Some(id),
            sink_token: tok.inner().id_to_token(id),
            moves_bos: tok.adds_bos() && tok.bos_id() == Some(id),
        }
    }

    /// Positions in front of the vectors (0 or 1).
    pub fn prefix_len(&self) -> usize {
        usize::from(self.sink.is_some())
    }

    /// The token ids the vectors must reproduce, from the tokenizer's
    /// `encode(text, true)`: the same ids, except that a BOS which moved in
    /// front of the vectors is dropped from the text.
    pub fn text_ids(&self, mut ids: Vec<u32>) -> Vec<u32> {
        if self.moves_bos && ids.first().copied() == self.sink {
            ids.remove(0);
        }
        ids
    }

    /// A short description: `none` or `<token> (id N)`, with `, BOS moved`
    /// where it applies.
    pub fn describe(&self) -> String {
        match self.sink {
            None => "none".into(),
            Some(id) => format!(
                "{} (id {id}){}",
                self.sink_token.as_deref().unwrap_or("?"),
                if self.moves_bos {
                    ", BOS moved in front of the vectors"
                } else {
                    ""
                }
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_settings_parse_and_print_back() {
        for s in ["auto", "none", "<|endoftext|>", "0"] {
            assert_eq!(s.parse::<Sink>().unwrap().to_string(), s);
        }
        assert!("".parse::<Sink>().is_err());
        assert_eq!(
            serde_json::to_string(&Sink::Token("<bos>".into())).unwrap(),
            "\"<bos>\""
        );
    }

    #[test]
    fn a_moved_bos_leaves_the_text() {
        let l = Layout {
            sink: Some(2),
            sink_token: Some("<bos>".into()),
            moves_bos: true,
        };
        assert_eq!(l.text_ids(vec![2, 5, 6]), [5, 6]);
        assert_eq!(l.text_ids(vec![5, 6]), [5, 6]);
        let kept = Layout {
            moves_bos: false,
            ..l
        };
        assert_eq!(kept.text_ids(vec![2, 5, 6]), [2, 5, 6]);
        assert_eq!(kept.prefix_len(), 1);
        assert_eq!(Layout::default().prefix_len(), 0);
    }
}
