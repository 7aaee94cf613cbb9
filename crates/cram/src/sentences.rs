//! A rule-based English sentence splitter.
//!
//! [`split_sentences`] cuts prose into sentences the way the paper's protocol
//! needs it (keep the second half of a chunk's sentences): it does not have to
//! be perfect, but it must not cut after `Mr.`, inside `3.14`, or between
//! `"Stop!"` and `she said.`, and it must be deterministic.
//!
//! The rules, in order:
//!
//! * A line break ends a sentence (paragraphs are separated by blank lines in
//!   the shipped data; a text with one paragraph per line splits the same
//!   way). Hard-wrapped text should be unwrapped first.
//! * Inside a line, a sentence can end only at a run of `.`, `!`, `?` or `…`,
//!   with any closing quotes and brackets right after it (`."`, `?')`, `!!`,
//!   `?!`), followed by whitespace or by `--` / `—`. `3.14`, `e.g.,`,
//!   `file.txt` and `Row._mapping` never end one.
//! * After `!` or `?` the sentence ends unless the next word starts with a
//!   lowercase letter (`"Oh!" said she.`, `Oh! mama, ...`). An ellipsis ends
//!   it only before an uppercase word.
//! * After a single `.` it depends on the word before it and on the next word:
//!   titles (`Mr.`, `Mrs.`, `Dr.`, `St.`, `Prof.`, ...), initials (`J. R. R.
//!   Tolkien`), dotted acronyms (`U.S.`, `A.D.`, `Ph.D.`), `e.g.`, `i.e.`,
//!   `vs.`, `cf.` and numbered references (`No. 5`, `Vol. II`, `Fig. 3`,
//!   `pp. 1-14`) do not end a sentence unless the next word is a common
//!   sentence opener (`The`, `He`, `It`, `But`, ...); `etc.`, `Jr.`, units
//!   (`lbs.`, `cm.`) and `per cent.` end one before an uppercase word. After
//!   any abbreviation, initial or number, a lowercase word continues the
//!   sentence; after an ordinary word the sentence ends whatever follows
//!   (technical prose starts sentences with lowercase names: `... effect.
//!   complete_object() is unaffected`).
//! * A number, single letter or Roman numeral that opens a sentence is a list
//!   marker (`1. First item`, `a. The trading corporation`, `IV. THE ...`).
//!
//! Sentences are trimmed slices of the input, in order, never empty; removing
//! all whitespace from their concatenation gives the input without whitespace.

/// Splits `text` into sentences: trimmed, non-empty slices of `text`, in
/// order. See the [module documentation](self) for the rules.
///
/// ```
/// use cram::sentences::split_sentences;
/// let s = split_sentences("\"Stop!\" she said. Mr. J. R. R. Tolkien paid $2.50... He left.");
/// assert_eq!(s, ["\"Stop!\" she said.", "Mr. J. R. R. Tolkien paid $2.50...", "He left."]);
/// ```
pub fn split_sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for line in text.split('\n') {
        split_line(line, &mut out);
    }
    out
}

/// Characters that can end a sentence.
fn is_terminal(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '…')
}

/// Closing quotes and brackets that belong to the sentence they follow.
fn is_closer(c: char) -> bool {
    matches!(c, '"' | '\'' | '”' | '’' | ')' | ']' | '}' | '»' | '›')
}

/// Opening quotes and brackets that can start a sentence.
fn is_opener(c: char) -> bool {
    matches!(
        c,
        '"' | '\'' | '“' | '‘' | '(' | '[' | '{' | '«' | '‹' | '¿' | '¡'
    )
}

/// Titles before a name: no break after them (case-insensitive).
const TITLES: &[&str] = &[
    "mr", "mrs", "ms", "messrs", "mme", "mlle", "dr", "prof", "rev", "hon", "capt", "col", "gen",
    "lt", "sgt", "maj", "gov", "pvt", "cpl", "adm", "lieut", "st", "mt", "sen", "supt", "insp",
];

/// Abbreviations that introduce what follows: never a break after them.
const NEVER: &[&str] = &[
    "e.g", "E.g", "i.e", "I.e", "vs", "Vs", "v", "cf", "Cf", "viz", "approx", "ca", "incl", "esp",
    "resp", "wrt",
];

/// Abbreviations before a number or a name (`No. 5`, `Fig. 3`, `Op. Surg.`).
const NUMBERED: &[&str] = &[
    "Nos", "nos", "Vol", "vol", "Vols", "vols", "Fig", "fig", "Figs", "figs", "p", "pp", "Art",
    "art", "Ch", "ch", "Chap", "chap", "Sec", "sec", "Secs", "secs", "Op", "op", "Pt", "pt",
    "Para", "para", "Eq", "eq", "Eqs", "eqs", "Bk", "bk", "c",
];

/// Abbreviations that often end a sentence: a break before an uppercase word.
const AMBIGUOUS: &[&str] = &[
    "etc", "al", "Jr", "jr", "Sr", "sr", "Esq", "esq", "Inc", "inc", "Ltd", "ltd", "Co", "co",
    "Corp", "corp", "Bros", "bros", "cent", "ff", "lbs", "lb", "oz", "ft", "gr", "grs", "grm",
    "cm", "mm", "km", "kg", "mg", "ml", "hr", "hrs", "min", "mins", "yr", "yrs", "ed", "eds",
    "cit", "ibid", "Ibid", "&c",
];

/// Words that often open a sentence: after an initial, title or acronym they
/// mean the sentence did end (`... from P. I shall`, `in Bond St. The`).
const OPENERS: &[&str] = &[
    "The", "He", "She", "It", "I", "We", "They", "You", "His", "Her", "Its", "Our", "Their", "My",
    "Your", "This", "That", "These", "Those", "There", "Then", "But", "And", "Or", "So", "Yet",
    "In", "On", "At", "As", "If", "When", "While", "After", "Before", "Although", "Though",
    "However", "Thus", "Hence", "What", "Why", "How", "Who", "Where", "Which", "Yes", "Not", "All",
    "Some", "Such", "For", "To", "With", "Now", "Here",
];

/// What the word before a single `.` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Word {
    Title,
    Never,
    Numbered,
    /// `No.`: a reference before a digit, the word "no" otherwise.
    No,
    Ambiguous,
    Dotted,
    Initial,
    Number,
    LowerLetter,
    Plain,
}

/// What starts the next sentence candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Lower,
    Digit,
    /// An uppercase letter, another script, or a symbol.
    Other,
}

fn classify(word: &str) -> Word {
    let lower = word.to_lowercase();
    let mut chars = word.chars();
    let first = chars.next();
    let single = first.is_some() && chars.next().is_none();
    if TITLES.contains(&lower.as_str()) {
        Word::Title
    } else if NEVER.contains(&word) {
        Word::Never
    } else if lower == "no" {
        Word::No
    } else if NUMBERED.contains(&word) {
        Word::Numbered
    } else if AMBIGUOUS.contains(&word) {
        Word::Ambiguous
    } else if is_number(word) {
        Word::Number
    } else if single && first.is_some_and(|c| c.is_uppercase() && c != 'I') {
        Word::Initial
    } else if single && first.is_some_and(char::is_lowercase) {
        Word::LowerLetter
    } else if is_dotted(word) {
        Word::Dotted
    } else {
        Word::Plain
    }
}

/// `1850`, `3.14`, `$2.50`, `1,000`, `#3`, `5%`.
fn is_number(word: &str) -> bool {
    let body = word
        .trim_start_matches(['$', '£', '€', '#'])
        .trim_end_matches('%');
    body.chars().any(|c| c.is_ascii_digit())
        && body
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == ',')
}

/// `U.S`, `A.D`, `Ph.D`, `c.c`, `a.m`: letters in groups of at most three,
/// joined by dots.
fn is_dotted(word: &str) -> bool {
    word.contains('.')
        && word.split('.').all(|part| {
            (1..=3).contains(&part.chars().count()) && part.chars().all(char::is_alphabetic)
        })
}

fn is_roman(word: &str) -> bool {
    !word.is_empty() && word.len() <= 6 && word.chars().all(|c| "IVXLCDM".contains(c))
}

/// A list marker: a short number, a single letter or a Roman numeral.
fn is_list_marker(word: &str) -> bool {
    (word.len() <= 3 && word.chars().all(|c| c.is_ascii_digit()) && !word.is_empty())
        || (word.chars().count() == 1 && word.chars().all(char::is_alphabetic))
        || is_roman(word)
}

/// Splits one line (no `\n` inside) and pushes its sentences.
fn split_line<'a>(line: &'a str, out: &mut Vec<&'a str>) {
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let n = chars.len();
    let byte = |k: usize| if k < n { chars[k].0 } else { line.len() };
    // Index (into `chars`) where the current sentence starts.
    let mut start = 0;
    let mut k = 0;
    while k < n {
        if !is_terminal(chars[k].1) {
            k += 1;
            continue;
        }
        // The terminal run with its closers: `?!"`, `...)`, `."'`.
        let mut m = k;
        while m < n && (is_terminal(chars[m].1) || is_closer(chars[m].1)) {
            m += 1;
        }
        let run: String = chars[k..m]
            .iter()
            .map(|&(_, c)| c)
            .filter(|&c| is_terminal(c))
            .collect();
        // The gap to the next sentence: dashes (kept with this sentence), then
        // whitespace.
        let mut end = m;
        if m + 1 < n && chars[m].1 == '-' && chars[m + 1].1 == '-' {
            end = m + 2;
            while end < n && chars[end].1 == '-' {
                end += 1;
            }
        } else if m < n && chars[m].1 == '—' {
            end = m + 1;
        }
        let mut q = end;
        while q < n && chars[q].1.is_whitespace() {
            q += 1;
        }
        if q == n {
            break;
        }
        if q == end && end == m {
            // No gap: `3.14`, `e.g.,`, `Row._mapping`.
            k = m;
            continue;
        }
        // After `."`, `.)` or `.--` a lowercase word continues the sentence
        // (`"... Marianne." said she`), whatever the word before the stop.
        let attached = m > k + run.chars().count() || end > m;
        if is_break(line, &chars, start, k, &run, q, attached) {
            let sentence = line[byte(start)..byte(end)].trim();
            if !sentence.is_empty() {
                out.push(sentence);
            }
            start = q;
        }
        k = q;
    }
    let rest = line[byte(start)..].trim();
    if !rest.is_empty() {
        out.push(rest);
    }
}

/// Whether the terminal run `run` starting at `chars[k]` ends the sentence
/// that started at `chars[start]`, given that the next one would start at
/// `chars[q]`.
fn is_break(
    line: &str,
    chars: &[(usize, char)],
    start: usize,
    k: usize,
    run: &str,
    q: usize,
    attached: bool,
) -> bool {
    let n = chars.len();
    // The next word, past opening quotes and brackets.
    let mut w = q;
    while w < n && is_opener(chars[w].1) {
        w += 1;
    }
    let Some(&(w_byte, first)) = chars.get(w) else {
        // Only stray quotes left on the line: they stay with this sentence.
        return false;
    };
    let next = if first.is_lowercase() {
        Next::Lower
    } else if first.is_ascii_digit() {
        Next::Digit
    } else {
        Next::Other
    };
    let w_end = chars[w..]
        .iter()
        .find(|&&(_, c)| !c.is_alphanumeric())
        .map_or(line.len(), |&(b, _)| b);
    let opener = OPENERS.contains(&&line[w_byte..w_end]);

    if run.contains(['!', '?']) || (attached && next == Next::Lower) {
        return next != Next::Lower;
    }
    if run.chars().count() > 1 || run.contains('…') {
        // An ellipsis: `I was... thinking`, `Wait... What?`.
        return next == Next::Other && first.is_uppercase();
    }

    // A single `.`: look at the word before it.
    let mut b = k;
    while b > start {
        let c = chars[b - 1].1;
        let digit_comma = c == ','
            && b >= 2
            && chars[b - 2].1.is_ascii_digit()
            && chars.get(b).is_some_and(|&(_, d)| d.is_ascii_digit());
        if c.is_alphanumeric()
            || matches!(c, '.' | '&' | '$' | '£' | '€' | '#' | '%')
            || digit_comma
        {
            b -= 1;
        } else {
            break;
        }
    }
    while b < k
        && !(chars[b].1.is_alphanumeric() || matches!(chars[b].1, '&' | '$' | '£' | '€' | '#'))
    {
        b += 1;
    }
    let word = &line[chars[b].0..chars[k].0];
    let first_token = chars[start..b]
        .iter()
        .all(|&(_, c)| c.is_whitespace() || is_opener(c));
    if first_token && is_list_marker(word) {
        return false;
    }
    let kind = classify(word);
    match next {
        Next::Lower => matches!(kind, Word::Plain | Word::No),
        Next::Digit => matches!(
            kind,
            Word::Plain | Word::Ambiguous | Word::Number | Word::LowerLetter
        ),
        Next::Other => match kind {
            Word::Never => false,
            Word::Title | Word::Numbered | Word::Dotted | Word::Initial => opener,
            Word::No | Word::Ambiguous | Word::Number | Word::LowerLetter | Word::Plain => true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: &[&str]) {
        assert_eq!(split_sentences(text), expected, "text: {text:?}");
    }

    #[test]
    fn basic_rules() {
        check("", &[]);
        check("   \n\n  ", &[]);
        check("One. Two! Three? Four", &["One.", "Two!", "Three?", "Four"]);
        check("What?! Really!! Yes.", &["What?!", "Really!!", "Yes."]);
        check(
            "Pi is 3.14 here. It costs $2.50. Done.",
            &["Pi is 3.14 here.", "It costs $2.50.", "Done."],
        );
        check(
            "Para one\n\nPara two.\nLine three",
            &["Para one", "Para two.", "Line three"],
        );
        check(
            "I was... thinking. Wait... What?",
            &["I was... thinking.", "Wait...", "What?"],
        );
        check("So… Then… and", &["So…", "Then… and"]);
    }

    #[test]
    fn abbreviations_and_initials() {
        check(
            "Mr. and Mrs. Smith met Dr. Jones. They left.",
            &["Mr. and Mrs. Smith met Dr. Jones.", "They left."],
        );
        check(
            "J. R. R. Tolkien wrote it. So did C. S. Lewis.",
            &["J. R. R. Tolkien wrote it.", "So did C. S. Lewis."],
        );
        check(
            "Apples, pears, etc. The rest, etc. are fine.",
            &["Apples, pears, etc.", "The rest, etc. are fine."],
        );
        check(
            "Use a tool, e.g. Python. Or i.e. Rust.",
            &["Use a tool, e.g. Python.", "Or i.e. Rust."],
        );
        check(
            "Marbury vs. Madison was decided. See No. 5 and Vol. II today.",
            &[
                "Marbury vs. Madison was decided.",
                "See No. 5 and Vol. II today.",
            ],
        );
        check("\"No. Only to Honiton.\"", &["\"No.", "Only to Honiton.\""]);
        check(
            "He lived in the U.S. The end.",
            &["He lived in the U.S.", "The end."],
        );
        check(
            "In 890 A.D. King Alfred ruled.",
            &["In 890 A.D. King Alfred ruled."],
        );
        check(
            "as well as I. What can it be?",
            &["as well as I.", "What can it be?"],
        );
    }

    #[test]
    fn quotes_and_brackets() {
        check(
            "\"Stop!\" she said. He left.",
            &["\"Stop!\" she said.", "He left."],
        );
        check(
            "\"Is it?\" asked he. \"Yes.\" (It was.) Fine.",
            &["\"Is it?\" asked he.", "\"Yes.\"", "(It was.)", "Fine."],
        );
        check(
            "He said 'go.' Then he went.",
            &["He said 'go.'", "Then he went."],
        );
        check(
            "it is so bad!--so far off!--and the air so bad!",
            &["it is so bad!--so far off!--and the air so bad!"],
        );
        check(
            "\"In a few months, my dear Marianne.\" said she. 'Night.' said he.",
            &[
                "\"In a few months, my dear Marianne.\" said she.",
                "'Night.' said he.",
            ],
        );
        check(
            "Only three of us.--besides dear Jane.--Yes.",
            &["Only three of us.--besides dear Jane.--", "Yes."],
        );
        check(
            "than he goes.--Yours affectionately, M. C.",
            &["than he goes.--", "Yours affectionately, M. C."],
        );
    }

    #[test]
    fn lists_and_technical_prose() {
        check(
            "1. Mexican relations. a. Mexican independence.",
            &["1. Mexican relations.", "a. Mexican independence."],
        );
        check(
            "It has no effect. complete_object() is unaffected.",
            &["It has no effect.", "complete_object() is unaffected."],
        );
        check(
            "Fixed Row._mapping and file.txt handling. Done.",
            &["Fixed Row._mapping and file.txt handling.", "Done."],
        );
        check(
            "three per cent. within the year.",
            &["three per cent. within the year."],
        );
    }

    /// Excerpts from the shipped stand-in texts (`data/`), split by hand.
    #[test]
    fn real_prose_cases() {
        // Sense and Sensibility: titles before names.
        check(
            "His attachment to them all increased. The constant attention of Mr. and Mrs. Henry \
             Dashwood to his wishes gave him every degree of solid comfort.",
            &[
                "His attachment to them all increased.",
                "The constant attention of Mr. and Mrs. Henry Dashwood to his wishes gave him \
                 every degree of solid comfort.",
            ],
        );
        // Dialogue: the closing quote stays with its sentence, attribution follows.
        check(
            "\"How horrid all this is!\" said he. \"Such weather makes every thing and every body \
             disgusting. Dullness is as much produced within doors as without, by rain.",
            &[
                "\"How horrid all this is!\" said he.",
                "\"Such weather makes every thing and every body disgusting.",
                "Dullness is as much produced within doors as without, by rain.",
            ],
        );
        // Exclamations before lowercase words and dashes.
        check(
            "\"Oh! beyond anything great! What brother on earth would do half so much for his \
             sisters, even if REALLY his sisters! And as it is--only half blood!--But you have \
             such a generous spirit!\"",
            &[
                "\"Oh! beyond anything great!",
                "What brother on earth would do half so much for his sisters, even if REALLY his \
                 sisters!",
                "And as it is--only half blood!--",
                "But you have such a generous spirit!\"",
            ],
        );
        check(
            "\"Is this,\" thought Elizabeth, \"meant for me?\" and she coloured at the idea.",
            &["\"Is this,\" thought Elizabeth, \"meant for me?\" and she coloured at the idea."],
        );
        // Emma: `.--` before a lowercase word, initials.
        check(
            "Only three of us.--besides dear Jane at present--and she really eats nothing. I dare \
             not let my mother know.",
            &[
                "Only three of us.--besides dear Jane at present--and she really eats nothing.",
                "I dare not let my mother know.",
            ],
        );
        check(
            "perhaps you may guess where;--in the building in which N. takes M. for better, for \
             worse.\" I honestly said as much to Mr. E. when he was speaking of my future home.",
            &[
                "perhaps you may guess where;--in the building in which N. takes M. for better, \
                 for worse.\"",
                "I honestly said as much to Mr. E. when he was speaking of my future home.",
            ],
        );
        check(
            "The letter, with a direction hardly legible, to \"Miss A. E.--,\" was evidently the \
             one. While supposed to be writing only to Captain Benwick, he had been also \
             addressing her!",
            &[
                "The letter, with a direction hardly legible, to \"Miss A. E.--,\" was evidently \
                 the one.",
                "While supposed to be writing only to Captain Benwick, he had been also addressing \
                 her!",
            ],
        );
        // Moby Dick: `per cent.`, `A.D.`, `Mr.` after a real stop.
        check(
            "good white cedar plank is raised full three per cent. within the year. Don't forget \
             your prayers, either. Mr. Starbuck, mind that cooper don't waste the spare staves.",
            &[
                "good white cedar plank is raised full three per cent. within the year.",
                "Don't forget your prayers, either.",
                "Mr. Starbuck, mind that cooper don't waste the spare staves.",
            ],
        );
        check(
            "He said that he was one of six who had killed sixty in two days.\" --OTHER OR \
             OTHER'S VERBAL NARRATIVE TAKEN DOWN FROM HIS MOUTH BY KING ALFRED, A.D. 890.",
            &[
                "He said that he was one of six who had killed sixty in two days.\"",
                "--OTHER OR OTHER'S VERBAL NARRATIVE TAKEN DOWN FROM HIS MOUTH BY KING ALFRED, \
                 A.D. 890.",
            ],
        );
        // Sherlock Holmes: an uppercase title; `I.` as a pronoun.
        check(
            "\"DEAR MR. HOLMES:--I am very anxious to consult you. I shall call at half-past ten.",
            &[
                "\"DEAR MR. HOLMES:--I am very anxious to consult you.",
                "I shall call at half-past ten.",
            ],
        );
        check(
            "Holmes was for the moment as startled as I. His hand closed like a vice upon my \
             wrist in his agitation.",
            &[
                "Holmes was for the moment as startled as I.",
                "His hand closed like a vice upon my wrist in his agitation.",
            ],
        );
        // Beard: page references, initials, outline markers.
        check(
            "Analyze the first and second Massachusetts charters in Macdonald, pp. 22-84. \
             Special reference: W.A.S. Hewins, English Trading Companies.",
            &[
                "Analyze the first and second Massachusetts charters in Macdonald, pp. 22-84.",
                "Special reference: W.A.S. Hewins, English Trading Companies.",
            ],
        );
        check(
            "I. Development of the American system of government. 1. Origin and growth of state \
             government. a. The trading corporation (2-4), religious congregation (4-5), and \
             proprietary system (5-6). b. Government of the colonies (48-53).",
            &[
                "I. Development of the American system of government.",
                "1. Origin and growth of state government.",
                "a. The trading corporation (2-4), religious congregation (4-5), and proprietary \
                 system (5-6).",
                "b. Government of the colonies (48-53).",
            ],
        );
        check(
            "The Republicans nominated James G. Blaine of Maine, a vigorous and popular leader. \
             The Democrats on their side were able to find an able candidate.",
            &[
                "The Republicans nominated James G. Blaine of Maine, a vigorous and popular leader.",
                "The Democrats on their side were able to find an able candidate.",
            ],
        );
        // Manual of Surgery: units, `cf. Fig.`, `Op. Surg., p. 37.)`.
        check(
            "Baccelli recommends the injection of 20 c.c. of a 1 in 100 solution of carbolic acid. \
             Opinions vary as to the efficiency of this treatment.",
            &[
                "Baccelli recommends the injection of 20 c.c. of a 1 in 100 solution of carbolic \
                 acid.",
                "Opinions vary as to the efficiency of this treatment.",
            ],
        );
        check(
            "showing great oedema of upper extremity and pectoral region (cf. Fig. 29).] \
             (See article on Transfusion, Op. Surg., p. 37.) Treatment.",
            &[
                "showing great oedema of upper extremity and pectoral region (cf. Fig. 29).]",
                "(See article on Transfusion, Op. Surg., p. 37.)",
                "Treatment.",
            ],
        );
        // War and Peace: ellipses.
        check(
            "\"Well, this is strange! Do you suppose I... who could think?... I know very \
             well...\" \"Good news!... Go on!\" he shouted to the driver.",
            &[
                "\"Well, this is strange!",
                "Do you suppose I... who could think?...",
                "I know very well...\"",
                "\"Good news!...",
                "Go on!\" he shouted to the driver.",
            ],
        );
        // Modern prose: versions, `e.g.`, `etc.)`, sentences that open with an identifier.
        check(
            "Django 5.2 supports Python 3.10, 3.11, 3.12, 3.13, and 3.14 (as of 5.2.8). We highly \
             recommend the latest release, e.g. to opt into database-dependent checks.",
            &[
                "Django 5.2 supports Python 3.10, 3.11, 3.12, 3.13, and 3.14 (as of 5.2.8).",
                "We highly recommend the latest release, e.g. to opt into database-dependent \
                 checks.",
            ],
        );
        check(
            "the keys of a result set (e.g. named tuple names, dictionary keys in Row._mapping, \
             etc.) to be exactly what was delivered. so reconnecting could wipe your history. \
             get_tail now treats n=None as the default count of 10.",
            &[
                "the keys of a result set (e.g. named tuple names, dictionary keys in \
                 Row._mapping, etc.) to be exactly what was delivered.",
                "so reconnecting could wipe your history.",
                "get_tail now treats n=None as the default count of 10.",
            ],
        );
    }

    fn stand_in_texts() -> Vec<(String, String)> {
        let root = std::path::Path::new(crate::datasets::REPO_ROOT);
        let mut files = vec![
            root.join("data/pg19_standin_sample.csv"),
            root.join("data/modern_prose.csv"),
        ];
        // The full stand-in, where the workspace has it.
        let full = root.join("../shared/data/pg19_standin.csv");
        if full.exists() {
            files.push(full);
        }
        let mut out = Vec::new();
        for file in files {
            let mut rdr = csv::Reader::from_path(&file).unwrap();
            for rec in rdr.records() {
                let rec = rec.unwrap();
                out.push((rec[0].to_string(), rec[2].to_string()));
            }
        }
        assert!(out.len() >= 363, "{} texts", out.len());
        out
    }

    /// The word before a sentence's final `.`, as `is_break` sees it.
    fn last_word(sentence: &str) -> &str {
        let body = sentence.trim_end_matches(|c: char| is_closer(c) || c == '-' || c == '—');
        let Some(body) = body.strip_suffix('.') else {
            return "";
        };
        let start = body
            .rfind(|c: char| !(c.is_alphanumeric() || matches!(c, '.' | '&')))
            .map_or(0, |i| i + body[i..].chars().next().unwrap().len_utf8());
        body[start..].trim_start_matches('.')
    }

    #[test]
    fn invariants_on_stand_in_texts() {
        let strip = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
        let (mut sentences, mut words) = (0usize, 0usize);
        for (id, text) in stand_in_texts() {
            let split = split_sentences(&text);
            assert!(!split.is_empty(), "{id}");
            // In-order, trimmed, non-empty slices of the text, one line each.
            let mut pos = 0;
            for s in &split {
                assert!(
                    !s.is_empty() && s.trim() == *s && !s.contains('\n'),
                    "{id}: {s:?}"
                );
                let offset = s.as_ptr() as usize - text.as_ptr() as usize;
                assert!(
                    offset >= pos && offset + s.len() <= text.len(),
                    "{id}: {s:?}"
                );
                pos = offset + s.len();
            }
            // Nothing is lost: the text is the sentences, modulo whitespace.
            assert_eq!(strip(&split.concat()), strip(&text), "{id}");
            // No split after an abbreviation, initial or number before a
            // lowercase word, nor after a title before a name.
            for pair in split.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                let a_end = a.as_ptr() as usize - text.as_ptr() as usize + a.len();
                let b_start = b.as_ptr() as usize - text.as_ptr() as usize;
                if text[a_end..b_start].contains('\n') {
                    continue;
                }
                let kind = classify(last_word(a));
                let b_first = b
                    .trim_start_matches(is_opener)
                    .chars()
                    .next()
                    .unwrap_or('-');
                if b_first.is_lowercase() {
                    assert!(
                        !a.ends_with('.') || matches!(kind, Word::Plain | Word::No),
                        "{id}: split after an abbreviation: {a:?} | {b:?}"
                    );
                }
                if a.ends_with('.') {
                    assert_ne!(kind, Word::Never, "{id}: {a:?} | {b:?}");
                    if kind == Word::Title {
                        let next: String = b.chars().take_while(|c| c.is_alphanumeric()).collect();
                        assert!(OPENERS.contains(&next.as_str()), "{id}: {a:?} | {b:?}");
                    }
                }
            }
            sentences += split.len();
            words += text.split_whitespace().count();
        }
        // Plausible sentence lengths overall (about 20 words).
        let mean = words as f64 / sentences as f64;
        assert!((12.0..35.0).contains(&mean), "{mean} words per sentence");
    }
}
