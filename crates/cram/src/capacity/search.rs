//! How a capacity search chooses its next target length.
//!
//! A text's search keeps `lo`, the longest prefix verified by greedy
//! decoding so far, and (gallop) `hi`, the shortest target a stage failed
//! to reach. After each stage it is told the stage's target and the prefix
//! that greedy decoding of the stage's best vectors reproduced (the target
//! itself when the stage succeeded), and picks the next target or stops.

use serde::{Deserialize, Serialize};

use crate::error::{CramError, Result};

/// The search strategy of `cram capacity --search`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Search {
    /// `step:K`: grow the target by K tokens per stage and stop at the
    /// first stage that fails (progressive cramming's schedule).
    Step(usize),
    /// `gallop`: double the target while stages succeed, then bisect
    /// between the longest verified prefix and the shortest failed target.
    Gallop,
}

impl Search {
    /// The first target when `--start` is not given: K for `step:K`, 8
    /// tokens for `gallop`.
    pub fn default_start(self) -> usize {
        match self {
            Self::Step(k) => k,
            Self::Gallop => 8,
        }
    }
}

impl std::str::FromStr for Search {
    type Err = CramError;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s == "gallop" {
            return Ok(Self::Gallop);
        }
        match s.strip_prefix("step:").map(str::parse::<usize>) {
            Some(Ok(k)) if k > 0 => Ok(Self::Step(k)),
            _ => Err(CramError::Input(format!(
                "unknown search `{s}` (expected gallop or step:K with K >= 1)"
            ))),
        }
    }
}

impl std::fmt::Display for Search {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Step(k) => write!(f, "step:{k}"),
            Self::Gallop => f.write_str("gallop"),
        }
    }
}

serde_as_string!(Search);

/// Where one text's search stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchState {
    /// The longest prefix verified by greedy decoding (the horizon so far).
    pub lo: usize,
    /// The shortest target a stage failed to reach (gallop), if any.
    pub hi: Option<usize>,
    /// The next stage's target length.
    pub target: usize,
    /// Whether the search is over.
    pub done: bool,
}

impl SearchState {
    /// A search over a text of `len` tokens whose first stage targets
    /// `start` tokens (at most `len`, at least 1).
    pub fn new(start: usize, len: usize) -> Self {
        Self {
            lo: 0,
            hi: None,
            target: start.clamp(1, len.max(1)),
            done: len == 0,
        }
    }

    /// Records a stage that targeted `self.target` tokens and whose best
    /// vectors decode the first `prefix` tokens exactly (`prefix ==
    /// target`: the stage succeeded), then picks the next target or ends
    /// the search. `len` is the text's length.
    pub fn record(&mut self, search: Search, len: usize, prefix: usize) {
        let target = self.target;
        let prefix = prefix.min(target);
        self.lo = self.lo.max(prefix);
        if prefix >= target {
            if target >= len {
                self.done = true;
                return;
            }
            match (search, self.hi) {
                (Search::Step(k), _) => self.target = (self.lo + k).min(len),
                (Search::Gallop, None) => self.target = (2 * target).max(self.lo + 1).min(len),
                (Search::Gallop, Some(_)) => self.bisect(),
            }
        } else {
            match search {
                Search::Step(_) => self.done = true,
                Search::Gallop => {
                    self.hi = Some(self.hi.map_or(target, |h| h.min(target)));
                    self.bisect();
                }
            }
        }
    }

    /// The next target between `lo` and `hi`, or the end of the search when
    /// they are adjacent.
    fn bisect(&mut self) {
        let hi = self.hi.expect("bisect runs after a failure");
        if hi <= self.lo + 1 {
            self.done = true;
        } else {
            self.target = self.lo + (hi - self.lo) / 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a search against a text whose true horizon is `h` (every
    /// target up to `h` succeeds; a failed stage decodes `seen(target)`
    /// tokens) and returns the targets tried and the final state.
    fn simulate(
        search: Search,
        start: usize,
        len: usize,
        h: usize,
        seen: impl Fn(usize) -> usize,
    ) -> (Vec<usize>, SearchState) {
        let mut s = SearchState::new(start, len);
        let mut tried = Vec::new();
        while !s.done {
            tried.push(s.target);
            let prefix = if s.target <= h {
                s.target
            } else {
                seen(s.target)
            };
            s.record(search, len, prefix);
            assert!(tried.len() < 100, "the search must end");
        }
        (tried, s)
    }

    #[test]
    fn gallop_doubles_then_bisects_to_the_exact_horizon() {
        let (tried, s) = simulate(Search::Gallop, 8, 1000, 45, |_| 0);
        assert_eq!(tried, vec![8, 16, 32, 64, 48, 40, 44, 46, 45]);
        assert_eq!((s.lo, s.hi), (45, Some(46)));
    }

    #[test]
    fn a_failed_gallop_probe_raises_the_horizon_by_what_it_decodes() {
        // The 64-token probe decodes 44 tokens: the bracket is (44, 64).
        let (tried, s) = simulate(
            Search::Gallop,
            8,
            1000,
            45,
            |t| if t == 64 { 44 } else { 0 },
        );
        assert_eq!(tried, vec![8, 16, 32, 64, 54, 49, 46, 45]);
        assert_eq!(s.lo, 45);
    }

    #[test]
    fn step_search_stops_at_the_first_failed_stage() {
        let (tried, s) = simulate(Search::Step(4), 4, 1000, 13, |t| t - 2);
        assert_eq!(tried, vec![4, 8, 12, 16]);
        assert_eq!(s.lo, 14, "the failed stage decoded 14 tokens");
        let (tried, s) = simulate(Search::Step(1), 1, 1000, 5, |_| 0);
        assert_eq!(tried, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(s.lo, 5);
    }

    #[test]
    fn a_text_shorter_than_its_horizon_saturates() {
        let (tried, s) = simulate(Search::Gallop, 8, 20, 1000, |_| 0);
        assert_eq!(tried, vec![8, 16, 20]);
        assert_eq!(s.lo, 20);
        let (tried, s) = simulate(Search::Step(8), 8, 20, 1000, |_| 0);
        assert_eq!(tried, vec![8, 16, 20]);
        assert_eq!(s.lo, 20);
    }

    #[test]
    fn searches_parse_and_print() {
        for s in ["gallop", "step:1", "step:16"] {
            assert_eq!(s.parse::<Search>().unwrap().to_string(), s);
        }
        for bad in ["step:0", "step:", "bisect", "step:x"] {
            assert!(bad.parse::<Search>().is_err(), "{bad}");
        }
    }
}
