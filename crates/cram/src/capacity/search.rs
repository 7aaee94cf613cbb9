//! How a capacity search chooses its next target length.
//!
//! A text's search keeps `lo`, the longest prefix verified by greedy
//! decoding so far, and (gallop, climb) `hi`, the shortest target a stage
//! failed to reach. After each stage it is told the stage's target and the prefix
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
    /// `climb`: double the target while stages succeed; after a failure,
    /// climb from the longest verified prefix by 1, 2, 4, ... tokens (below
    /// the shortest failed target), back to 1 after every failure. Its
    /// probes stay just above the verified prefix, where a warm start
    /// succeeds in few steps, instead of the bracket's midpoint, where a
    /// failed stage costs at least the stage patience.
    Climb,
}

impl Search {
    /// The first target when `--start` is not given: K for `step:K`, 8
    /// tokens for `gallop` and `climb`.
    pub fn default_start(self) -> usize {
        match self {
            Self::Step(k) => k,
            Self::Gallop | Self::Climb => 8,
        }
    }
}

impl std::str::FromStr for Search {
    type Err = CramError;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        match s {
            "gallop" => return Ok(Self::Gallop),
            "climb" => return Ok(Self::Climb),
            _ => {}
        }
        match s.strip_prefix("step:").map(str::parse::<usize>) {
            Some(Ok(k)) if k > 0 => Ok(Self::Step(k)),
            _ => Err(CramError::Input(format!(
                "unknown search `{s}` (expected gallop, climb or step:K with K >= 1)"
            ))),
        }
    }
}

impl std::fmt::Display for Search {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Step(k) => write!(f, "step:{k}"),
            Self::Gallop => f.write_str("gallop"),
            Self::Climb => f.write_str("climb"),
        }
    }
}

serde_as_string!(Search);

/// Where one text's search stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchState {
    /// The longest prefix verified by greedy decoding (the horizon so far).
    pub lo: usize,
    /// The shortest target a stage failed to reach (gallop, climb), if any.
    pub hi: Option<usize>,
    /// The next stage's target length.
    pub target: usize,
    /// Whether the search is over.
    pub done: bool,
    /// `climb`: how far above the verified prefix the next probe after a
    /// success goes (1 after a failure, doubled by every success; 0 before
    /// the first failure). Stores written before `climb` existed have none.
    #[serde(default)]
    pub climb: usize,
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
            climb: 0,
        }
    }

    /// Records a stage that targeted `self.target` tokens and whose best
    /// vectors decode the first `prefix` tokens exactly (`prefix ==
    /// target`: the stage succeeded), then picks the next target or ends
    /// the search. `len` is the text's length; gallop and climb stop once
    /// the shortest failed target is within `tolerance` percent of the
    /// verified prefix (0: at adjacent lengths).
    pub fn record(&mut self, search: Search, tolerance: usize, len: usize, prefix: usize) {
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
                (Search::Gallop | Search::Climb, None) => {
                    self.target = (2 * target).max(self.lo + 1).min(len)
                }
                (_, Some(_)) => {
                    if search == Search::Climb {
                        self.climb = (2 * self.climb).max(1);
                    }
                    self.within_bracket(search, tolerance);
                }
            }
        } else if let Search::Step(_) = search {
            self.done = true;
        } else {
            self.hi = Some(self.hi.map_or(target, |h| h.min(target)));
            if search == Search::Climb {
                self.climb = 1;
            }
            self.within_bracket(search, tolerance);
        }
    }

    /// The next target between `lo` and `hi` (gallop: the middle; climb:
    /// `climb` tokens above `lo`, below `hi`), or the end of the search when
    /// they are adjacent or `hi` is within `tolerance` percent of `lo`.
    fn within_bracket(&mut self, search: Search, tolerance: usize) {
        let hi = self.hi.expect("the bracket exists after a failure");
        if hi <= self.lo + 1 || (hi - self.lo) * 100 <= self.lo * tolerance {
            self.done = true;
        } else if search == Search::Climb {
            self.target = (self.lo + self.climb).min(hi - 1);
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
        simulate_within(search, 0, start, len, h, seen)
    }

    /// [`simulate`] with a `tolerance` in percent.
    fn simulate_within(
        search: Search,
        tolerance: usize,
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
            s.record(search, tolerance, len, prefix);
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
    fn climb_doubles_then_climbs_from_the_horizon_and_restarts_after_failures() {
        // Failed stages decode nothing: after the 64-token failure the climb
        // goes +1, +2, +4, +8 from 32 and fails at 47, climbs again from 39
        // by +1, +2, +4 and fails at 46, then from 42 by +1, +2 to 45, next
        // to the failed 46.
        let (tried, s) = simulate(Search::Climb, 8, 1000, 45, |_| 0);
        assert_eq!(
            tried,
            vec![8, 16, 32, 64, 33, 35, 39, 47, 40, 42, 46, 43, 45]
        );
        assert_eq!((s.lo, s.hi), (45, Some(46)));
        // A failed probe that decodes up to the horizon leaves one probe.
        let (tried, s) = simulate(Search::Climb, 8, 1000, 45, |t| 45.min(t - 1));
        assert_eq!(tried, vec![8, 16, 32, 64, 46]);
        assert_eq!((s.lo, s.hi), (45, Some(46)));
    }

    #[test]
    fn searches_end_with_the_horizon_bracketed() {
        // Whatever the horizon and what failed stages decode, both searches
        // end with a verified `lo` equal to the horizon and `hi` just above.
        for search in [Search::Gallop, Search::Climb] {
            for h in 1..90 {
                for frac in [0, 1, 2] {
                    let seen = |t: usize| (h * frac / 2).min(t - 1).min(h);
                    let (_, s) = simulate(search, 8, 80, h, seen);
                    assert_eq!(s.lo, h.min(80), "{search} h={h}");
                    assert!(h >= 80 || s.hi == Some(h + 1), "{search} h={h}");
                }
            }
        }
    }

    #[test]
    fn a_tolerance_stops_the_bracket_within_that_fraction_of_the_horizon() {
        // 12 %: (32, 64) → 48 succeeds; (48, 64) is 16 > 5.76 → 56 fails;
        // (48, 56) is 8 > 5.76 → 52 fails; (48, 52) is 4 <= 5.76: done.
        let (tried, s) = simulate_within(Search::Gallop, 12, 8, 1000, 50, |_| 0);
        assert_eq!(tried, vec![8, 16, 32, 64, 48, 56, 52]);
        assert_eq!((s.lo, s.hi), (48, Some(52)));
        // 0 keeps the exact bisection.
        let (tried, _) = simulate_within(Search::Gallop, 0, 8, 1000, 50, |_| 0);
        assert_eq!(tried, vec![8, 16, 32, 64, 48, 56, 52, 50, 51]);
        // Whatever the horizon, it is verified and within the tolerance.
        for search in [Search::Gallop, Search::Climb] {
            for tol in [5, 12, 25, 50] {
                for h in 1..90 {
                    let (_, s) = simulate_within(search, tol, 8, 80, h, |_| 0);
                    assert!(s.lo <= h.min(80), "{search} {tol} h={h}");
                    if h < 80 {
                        let hi = s.hi.unwrap();
                        assert!(hi > h, "{search} {tol} h={h}");
                        assert!(
                            hi <= s.lo + 1 || (hi - s.lo) * 100 <= s.lo * tol,
                            "{search} {tol} h={h}: {s:?}"
                        );
                    }
                }
            }
        }
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
    fn a_state_stored_before_climb_existed_loads() {
        let s: SearchState =
            serde_json::from_str(r#"{"lo":5,"hi":9,"target":7,"done":false}"#).unwrap();
        assert_eq!((s.lo, s.hi, s.target, s.climb), (5, Some(9), 7, 0));
    }

    #[test]
    fn searches_parse_and_print() {
        for s in ["gallop", "climb", "step:1", "step:16"] {
            assert_eq!(s.parse::<Search>().unwrap().to_string(), s);
        }
        for bad in ["step:0", "step:", "bisect", "step:x", "climb:2"] {
            assert!(bad.parse::<Search>().is_err(), "{bad}");
        }
    }
}
