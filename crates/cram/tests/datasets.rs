//! Text sources: loading each kind, error messages, built-in data sets, the
//! paper's chunk protocol and random texts.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use cram::datasets::{
    builtin, load_texts, paper_chunk, paper_chunk_text, random_texts, read_vocab, Sample,
    TextSource, BUILTIN_NAMES,
};
use cram::sentences::split_sentences;
use cram::tokenizer::TextTokenizer;
use cram::CramError;

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, content).unwrap();
    path
}

fn csv_source(path: &Path, column: &str) -> TextSource {
    TextSource::Csv {
        path: path.to_path_buf(),
        column: column.to_string(),
    }
}

fn ids(samples: &[Sample]) -> Vec<&str> {
    samples.iter().map(|s| s.id.as_str()).collect()
}

fn err_text(src: &TextSource) -> String {
    load_texts(src).unwrap_err().to_string()
}

// ---------------------------------------------------------------- CSV

#[test]
fn csv_with_id_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "d.csv",
        "id,source,text\nb1,book,\"First, with a comma.\n\nAnd a paragraph.\"\nb2,book,Second text.\n",
    );
    let samples = load_texts(&csv_source(&path, "text")).unwrap();
    assert_eq!(
        samples,
        [
            Sample {
                id: "b1".into(),
                text: "First, with a comma.\n\nAnd a paragraph.".into(),
                max_tokens: None
            },
            Sample {
                id: "b2".into(),
                text: "Second text.".into(),
                max_tokens: None
            },
        ]
    );
    // Another column of the same file.
    let sources = load_texts(&csv_source(&path, "source")).unwrap();
    assert_eq!(sources[1].text, "book");
}

#[test]
fn csv_without_id_column_uses_row_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "d.csv", "body\none\ntwo\nthree\n");
    let samples = load_texts(&csv_source(&path, "body")).unwrap();
    assert_eq!(ids(&samples), ["0", "1", "2"]);
    assert_eq!(samples[2].text, "three");
}

#[test]
fn csv_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();

    let missing = dir.path().join("nope.csv");
    let err = load_texts(&csv_source(&missing, "text")).unwrap_err();
    assert!(matches!(err, CramError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("nope.csv"), "{err}");

    let path = write(dir.path(), "cols.csv", "id,source,body\n1,x,hello\n");
    let msg = err_text(&csv_source(&path, "text"));
    assert!(msg.contains("cols.csv"), "{msg}");
    assert!(msg.contains("no column `text`"), "{msg}");
    assert!(msg.contains("`id`, `source`, `body`"), "{msg}");

    let empty = write(dir.path(), "empty.csv", "");
    let msg = err_text(&csv_source(&empty, "text"));
    assert!(
        msg.contains("empty.csv") && msg.contains("empty file"),
        "{msg}"
    );

    let header_only = write(dir.path(), "header.csv", "id,text\n");
    let msg = err_text(&csv_source(&header_only, "text"));
    assert!(
        msg.contains("header.csv") && msg.contains("no texts"),
        "{msg}"
    );

    let blank = write(dir.path(), "blank.csv", "id,text\na,fine\nb,\"  \"\n");
    let msg = err_text(&csv_source(&blank, "text"));
    assert!(
        msg.contains("line 3") && msg.contains("`b`") && msg.contains("empty text"),
        "{msg}"
    );

    let dup = write(dir.path(), "dup.csv", "id,text\na,one\na,two\n");
    let msg = err_text(&csv_source(&dup, "text"));
    assert!(msg.contains("duplicate id `a`"), "{msg}");

    let ragged = write(dir.path(), "ragged.csv", "id,text\na,one\nb,two,three\n");
    let msg = err_text(&csv_source(&ragged, "text"));
    assert!(msg.contains("ragged.csv"), "{msg}");
}

// ---------------------------------------------------------------- JSONL

#[test]
fn jsonl_ids_and_fields() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "d.jsonl",
        "{\"id\": \"x\", \"text\": \"One.\"}\n\n{\"id\": 7, \"text\": \"Two.\", \"other\": 1}\n{\"text\": \"Three.\"}\n",
    );
    let src = TextSource::Jsonl {
        path: path.clone(),
        field: "text".into(),
    };
    let samples = load_texts(&src).unwrap();
    assert_eq!(ids(&samples), ["x", "7", "2"]);
    assert_eq!(samples[2].text, "Three.");
    assert!(samples.iter().all(|s| s.max_tokens.is_none()));

    let msg = err_text(&TextSource::Jsonl {
        path: path.clone(),
        field: "body".into(),
    });
    assert!(msg.contains("d.jsonl") && msg.contains("line 1"), "{msg}");
    assert!(
        msg.contains("no field `body` (fields: `id`, `text`)"),
        "{msg}"
    );

    let bad = write(dir.path(), "bad.jsonl", "{\"text\": \"ok\"}\n{not json\n");
    let msg = err_text(&TextSource::Jsonl {
        path: bad,
        field: "text".into(),
    });
    assert!(msg.contains("line 2: invalid JSON"), "{msg}");

    let empty = write(dir.path(), "empty.jsonl", "\n\n");
    let msg = err_text(&TextSource::Jsonl {
        path: empty,
        field: "text".into(),
    });
    assert!(
        msg.contains("empty.jsonl") && msg.contains("no texts"),
        "{msg}"
    );

    let err = load_texts(&TextSource::Jsonl {
        path: dir.path().join("missing.jsonl"),
        field: "text".into(),
    })
    .unwrap_err();
    assert!(matches!(err, CramError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.jsonl"));
}

// ---------------------------------------------------------------- files

#[test]
fn txt_folder_sorted_by_name() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "b.txt", "Bee.");
    write(dir.path(), "a.txt", "Ay.\n");
    write(dir.path(), "C.TXT", "Sea.");
    write(dir.path(), "notes.md", "ignored");
    fs::create_dir(dir.path().join("sub.txt")).unwrap();
    write(&dir.path().join("sub.txt"), "inner.txt", "not read");
    let samples = load_texts(&TextSource::TxtFolder {
        path: dir.path().to_path_buf(),
    })
    .unwrap();
    assert_eq!(ids(&samples), ["C.TXT", "a.txt", "b.txt"]);
    assert_eq!(samples[1].text, "Ay.\n");

    let empty = tempfile::tempdir().unwrap();
    write(empty.path(), "readme.md", "no texts here");
    let msg = err_text(&TextSource::TxtFolder {
        path: empty.path().to_path_buf(),
    });
    assert!(msg.contains("no .txt files"), "{msg}");

    let err = load_texts(&TextSource::TxtFolder {
        path: dir.path().join("nowhere"),
    })
    .unwrap_err();
    assert!(matches!(err, CramError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("nowhere"));

    let msg = err_text(&TextSource::TxtFolder {
        path: dir.path().join("a.txt"),
    });
    assert!(msg.contains("not a folder"), "{msg}");

    write(dir.path(), "d.txt", " \n");
    let msg = err_text(&TextSource::TxtFolder {
        path: dir.path().to_path_buf(),
    });
    assert!(msg.contains("d.txt") && msg.contains("empty text"), "{msg}");
}

#[test]
fn text_file_is_one_text() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "story.txt", "Once upon a time.\n\nThe end.\n");
    let samples = load_texts(&TextSource::TextFile { path: path.clone() }).unwrap();
    assert_eq!(samples.len(), 1);
    assert_eq!(samples[0].id, "story.txt");
    assert_eq!(samples[0].text, "Once upon a time.\n\nThe end.\n");

    let empty = write(dir.path(), "empty.txt", "");
    let msg = err_text(&TextSource::TextFile { path: empty });
    assert!(
        msg.contains("empty.txt") && msg.contains("empty text"),
        "{msg}"
    );

    let err = load_texts(&TextSource::TextFile {
        path: dir.path().join("gone.txt"),
    })
    .unwrap_err();
    assert!(matches!(err, CramError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("gone.txt"));
}

// ---------------------------------------------------------------- configs

#[test]
fn sources_deserialise_from_toml() {
    let parse = |s: &str| toml::from_str::<TextSource>(s);
    assert_eq!(
        parse("kind = \"csv\"\npath = \"a.csv\"").unwrap(),
        csv_source(Path::new("a.csv"), "text")
    );
    assert_eq!(
        parse("kind = \"csv\"\npath = \"a.csv\"\ncolumn = \"body\"").unwrap(),
        csv_source(Path::new("a.csv"), "body")
    );
    assert_eq!(
        parse("kind = \"jsonl\"\npath = \"a.jsonl\"").unwrap(),
        TextSource::Jsonl {
            path: "a.jsonl".into(),
            field: "text".into()
        }
    );
    assert_eq!(
        parse("kind = \"txt_folder\"\npath = \"texts\"").unwrap(),
        TextSource::TxtFolder {
            path: "texts".into()
        }
    );
    assert_eq!(
        parse("kind = \"text_file\"\npath = \"a.txt\"").unwrap(),
        TextSource::TextFile {
            path: "a.txt".into()
        }
    );
    assert_eq!(
        parse("kind = \"random\"\nn_texts = 3\nmax_len = 16").unwrap(),
        TextSource::Random {
            vocab: None,
            n_texts: 3,
            max_len: 16,
            variable_length: false,
            seed: 0
        }
    );
    assert_eq!(
        parse("kind = \"random\"\nvocab = \"v.txt\"\nn_texts = 3\nmax_len = 16\nvariable_length = true\nseed = 5")
            .unwrap(),
        TextSource::Random {
            vocab: Some("v.txt".into()),
            n_texts: 3,
            max_len: 16,
            variable_length: true,
            seed: 5
        }
    );
    // Typos and unknown kinds are errors, not silently ignored.
    assert!(parse("kind = \"csv\"\npath = \"a.csv\"\ncolum = \"body\"").is_err());
    assert!(parse("kind = \"parquet\"\npath = \"a.parquet\"").is_err());
    assert!(parse("kind = \"random\"\nn_texts = 3").is_err());
    // A source round-trips through JSON (for run manifests).
    let src = builtin("pg19").unwrap();
    let json = serde_json::to_string(&src).unwrap();
    assert_eq!(serde_json::from_str::<TextSource>(&json).unwrap(), src);
}

// ---------------------------------------------------------------- built-ins

#[test]
fn builtin_data_sets_load() {
    for name in BUILTIN_NAMES {
        assert!(builtin(name).is_some(), "{name}");
    }
    assert_eq!(builtin("no-such-set"), None);

    let pg19 = load_texts(&builtin("pg19").unwrap()).unwrap();
    assert_eq!(pg19.len(), 300);
    assert_eq!(pg19[0].id, "sensesensibility_0000");
    assert!(pg19.iter().all(|s| s.text.split_whitespace().count() > 500));
    let books: HashSet<&str> = pg19
        .iter()
        .map(|s| s.id.rsplit_once('_').unwrap().0)
        .collect();
    assert_eq!(books.len(), 12, "{books:?}");

    let modern = load_texts(&builtin("modern").unwrap()).unwrap();
    assert_eq!(modern.len(), 63);
    assert_eq!(load_texts(&builtin("fanfic").unwrap()).unwrap(), modern);

    let random = load_texts(&builtin("random").unwrap()).unwrap();
    assert_eq!(random.len(), 50);
    assert_eq!(random[0].max_tokens, Some(1568));
    assert_eq!(random[0].text.split(' ').count(), 5 * 1568);
}

// ---------------------------------------------------------------- paper chunks

fn fixture_tokenizer() -> TextTokenizer {
    let dir = Path::new(cram_testkit::REPO_ROOT).join("tests/fixtures/llama_gqa_tied");
    TextTokenizer::from_hf_files(
        &dir.join("tokenizer.json"),
        Some(&dir.join("tokenizer_config.json")),
        Some(&dir.join("config.json")),
        Some(&dir.join("generation_config.json")),
    )
    .unwrap()
}

#[test]
fn paper_chunk_text_keeps_the_second_half() {
    assert_eq!(
        paper_chunk_text("One. Two. Three. Four. Five.").unwrap(),
        "Three. Four. Five."
    );
    assert_eq!(
        paper_chunk_text("Mr. A. went.\n\nDr. B. came! \"Why?\" asked he. Fine.").unwrap(),
        "\"Why?\" asked he. Fine."
    );
    assert_eq!(paper_chunk_text("Only one.").unwrap(), "Only one.");
    assert!(paper_chunk_text(" \n\n ").is_err());
}

#[test]
fn paper_chunk_on_a_real_chunk() {
    let tok = fixture_tokenizer();
    let bos = tok.bos_id().expect("the fixture tokenizer has BOS");
    assert!(tok.adds_bos());
    let pg19 = load_texts(&builtin("pg19").unwrap()).unwrap();
    let modern = load_texts(&builtin("modern").unwrap()).unwrap();
    for sample in [&pg19[0], &pg19[150], &modern[0]] {
        let sentences = split_sentences(&sample.text);
        assert!(sentences.len() > 10, "{}", sample.id);
        let half = sentences[sentences.len() / 2..].join(" ");
        assert_eq!(paper_chunk_text(&sample.text).unwrap(), half);
        // The second half starts with the middle sentence and ends the text.
        assert!(half.starts_with(sentences[sentences.len() / 2]));
        assert!(sample.text.trim_end().ends_with(sentences.last().unwrap()));

        let ids = paper_chunk(&sample.text, &tok, 128).unwrap();
        assert_eq!(ids.len(), 128, "{}", sample.id);
        assert_eq!(ids[0], bos);
        let full = tok.encode(&half, true).unwrap();
        assert!(full.len() > 128);
        assert_eq!(ids, full[..128]);

        // Untruncated, the tokens decode back to the second half.
        let all = paper_chunk(&sample.text, &tok, usize::MAX).unwrap();
        assert_eq!(all, full);
        assert_eq!(tok.decode(&all, true).unwrap(), half);
    }
    // A short text is not padded.
    let short = paper_chunk("Hello there. How are you?", &tok, 1000).unwrap();
    assert_eq!(short, tok.encode("How are you?", true).unwrap());
    assert!(paper_chunk("  ", &tok, 10).is_err());
    assert!(paper_chunk("Some text.", &tok, 0).is_err());
}

// ---------------------------------------------------------------- random texts

fn random_source(vocab: Option<PathBuf>, n: usize, len: usize, var: bool, seed: u64) -> TextSource {
    TextSource::Random {
        vocab,
        n_texts: n,
        max_len: len,
        variable_length: var,
        seed,
    }
}

#[test]
fn random_texts_fixed_length() {
    let vocab = read_vocab(&cram::datasets::data_file("vocab_100k.txt")).unwrap();
    assert_eq!(vocab.len(), 100_000);
    let set: HashSet<&str> = vocab.iter().map(String::as_str).collect();

    let a = load_texts(&random_source(None, 4, 32, false, 1)).unwrap();
    assert_eq!(ids(&a), ["random-0", "random-1", "random-2", "random-3"]);
    for s in &a {
        assert_eq!(s.max_tokens, Some(32));
        let words: Vec<&str> = s.text.split(' ').collect();
        assert_eq!(words.len(), 5 * 32);
        assert!(words.iter().all(|w| set.contains(w)), "{}", s.text);
    }
    // Reproducible, prefix-stable, seed-dependent.
    assert_eq!(
        load_texts(&random_source(None, 4, 32, false, 1)).unwrap(),
        a
    );
    assert_eq!(
        load_texts(&random_source(None, 2, 32, false, 1)).unwrap(),
        a[..2]
    );
    let b = load_texts(&random_source(None, 4, 32, false, 2)).unwrap();
    assert!(a.iter().zip(&b).all(|(x, y)| x.text != y.text));
    // The texts differ from each other, and words repeat only by chance.
    assert_ne!(a[0].text, a[1].text);
    let distinct: HashSet<&str> = a[0].text.split(' ').collect();
    assert!(distinct.len() > 150, "{}", distinct.len());
}

#[test]
fn random_texts_variable_length() {
    let dir = tempfile::tempdir().unwrap();
    let vocab_path = write(dir.path(), "v.txt", "alpha\nbeta\n\n  gamma  \ndelta\n");
    let src = random_source(Some(vocab_path.clone()), 40, 20, true, 3);
    let samples = load_texts(&src).unwrap();
    assert_eq!(samples.len(), 40);
    let mut lens = HashSet::new();
    for s in &samples {
        let len = s.max_tokens.unwrap();
        assert!((2..=20).contains(&len), "{len}");
        let words: Vec<&str> = s.text.split(' ').collect();
        assert_eq!(words.len(), 5 * len);
        assert!(words
            .iter()
            .all(|w| ["alpha", "beta", "gamma", "delta"].contains(w)));
        lens.insert(len);
    }
    assert!(lens.len() > 5, "{lens:?}");
    assert_eq!(load_texts(&src).unwrap(), samples);
    let other = load_texts(&random_source(Some(vocab_path), 40, 20, true, 4)).unwrap();
    assert_ne!(other, samples);

    // The smallest budgets are allowed.
    let words: Vec<String> = vec!["x".into()];
    let two = random_texts(&words, 10, 2, true, 0).unwrap();
    assert!(two
        .iter()
        .all(|s| s.max_tokens == Some(2) && s.text == "x x x x x x x x x x"));
}

#[test]
fn random_text_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no_vocab.txt");
    let err = load_texts(&random_source(Some(missing), 2, 8, false, 0)).unwrap_err();
    assert!(matches!(err, CramError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("no_vocab.txt"));

    let empty = write(dir.path(), "empty.txt", "\n \n");
    let msg = err_text(&random_source(Some(empty.clone()), 2, 8, false, 0));
    assert!(
        msg.contains("empty.txt") && msg.contains("empty vocabulary"),
        "{msg}"
    );

    let vocab = write(dir.path(), "v.txt", "a\nb\n");
    for (n, len, var) in [(0, 8, false), (2, 0, false), (2, 1, true)] {
        let err = load_texts(&random_source(Some(vocab.clone()), n, len, var, 0)).unwrap_err();
        assert!(matches!(err, CramError::Input(_)), "{err:?}");
    }
    assert!(load_texts(&random_source(Some(vocab), 2, 1, false, 0)).is_ok());
}
