//! `cram_report` and `cram report` on synthetic results whose tables are
//! worked out by hand (the same cells as `tests/metrics.rs`), on the
//! paper's 14 models, and end to end through the command line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use cram::metrics::{Cell, MetricsConfig};
use cram_report::{
    read_jsonl_run, write_jsonl, write_report, CellSelector, CurveChoice, ReportCell, ReportConfig,
    RunData,
};

const EPS: f64 = 1e-9;

fn close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= EPS * b.abs().max(1.0),
        "{what}: got {a}, expected {b}"
    );
}

/// A cell under the paper's convention (`length - 1` predicted tokens), of
/// a model with hidden 64 and vocabulary 256: `64 * 16 / 8 = 128` tokens
/// per vector. Its curves fall from the original to the best values over
/// `length` steps.
fn cell(
    model: &str,
    n_mem: usize,
    id: &str,
    length: usize,
    (orig_loss, orig_acc): (f64, f64),
    (best_loss, best_acc): (f64, f64),
) -> ReportCell {
    let steps = length;
    let f = |a: f64, b: f64| -> Vec<f32> {
        (0..steps)
            .map(|s| (a + (b - a) * s as f64 / (steps - 1) as f64) as f32)
            .collect()
    };
    ReportCell {
        cell: Cell {
            model: model.into(),
            dataset: "d".into(),
            sample_id: id.into(),
            n_mem,
            length,
            hidden_size: 64,
            vocab_size: 256,
            original_loss: orig_loss,
            original_accuracy: orig_acc,
            original_n_predicted: length - 1,
            best_loss,
            best_accuracy: best_acc,
            n_predicted: length - 1,
        },
        loss_curve: f(orig_loss, best_loss),
        accuracy_curve: f(orig_acc, best_acc),
        n_tokens: None,
    }
}

/// Three lengths, two texts each (predicted tokens 10, 20, 40); see
/// `tests/metrics.rs` for the aggregates by hand.
fn synthetic() -> Vec<ReportCell> {
    vec![
        cell("m", 1, "a", 11, (3.0, 0.2), (0.0, 1.0)),
        cell("m", 1, "b", 11, (4.0, 0.1), (0.1, 1.0)),
        cell("m", 1, "a", 21, (3.5, 0.25), (0.5, 0.95)),
        cell("m", 1, "b", 21, (4.5, 0.15), (1.0, 1.0)),
        cell("m", 1, "a", 41, (3.0, 0.25), (1.5, 0.5)),
        cell("m", 1, "b", 41, (4.0, 0.2), (2.0, 0.25)),
    ]
}

/// The same texts with two vectors: lossless up to length 21.
fn two_vectors() -> Vec<ReportCell> {
    vec![
        cell("m", 2, "a", 21, (3.5, 0.25), (0.0, 1.0)),
        cell("m", 2, "b", 21, (4.5, 0.15), (0.0, 1.0)),
        cell("m", 2, "a", 41, (3.0, 0.25), (0.5, 0.9)),
        cell("m", 2, "b", 41, (4.0, 0.2), (1.0, 0.8)),
    ]
}

fn run(name: &str, config: &str, cells: Vec<ReportCell>) -> RunData {
    RunData {
        name: name.into(),
        config_toml: config.into(),
        cells,
        ablations: Default::default(),
    }
}

/// Rows of a CSV file as maps from column name to value.
fn read_csv(path: &Path) -> Vec<BTreeMap<String, String>> {
    let mut rd = csv::Reader::from_path(path).unwrap();
    let head = rd.headers().unwrap().clone();
    rd.records()
        .map(|r| {
            let r = r.unwrap();
            head.iter()
                .zip(r.iter())
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

fn num(row: &BTreeMap<String, String>, col: &str) -> f64 {
    row[col]
        .parse()
        .unwrap_or_else(|_| panic!("{col} = {:?} is not a number", row[col]))
}

/// Checks a PNG figure: 1000 pixels wide, mostly white but with at least
/// 2% drawn, text in the x-axis label band, and `colour` on at least
/// `min_colour` pixels. Returns (width, height).
fn check_png(path: &Path, colour: [u8; 3], min_colour: usize) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", path.display());
    let img = image::load_from_memory(&bytes).unwrap().to_rgb8();
    let (w, h) = img.dimensions();
    assert_eq!(w, 1000, "{}", path.display());
    let px: Vec<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    let drawn = px.iter().filter(|p| **p != [255, 255, 255]).count();
    assert!(
        drawn * 50 > px.len(),
        "{}: only {drawn} of {} pixels drawn",
        path.display(),
        px.len()
    );
    let hits = px.iter().filter(|p| **p == colour).count();
    assert!(
        hits >= min_colour,
        "{}: colour {colour:?} on {hits} pixels, expected at least {min_colour}",
        path.display()
    );
    // The x-axis title (and legends drawn under the plot) sit in the bottom
    // 30% of the image: dark glyph pixels there.
    let dark = (h - h * 3 / 10..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c < 100))
        .count();
    assert!(
        dark > 200,
        "{}: no text under the x axis ({dark} dark pixels)",
        path.display()
    );
    (w, h)
}

/// The contents of an SVG file's `<text>` elements, trimmed.
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let body = &t[t.find('>')? + 1..];
            Some(body[..body.find("</text>")?].trim().to_string())
        })
        .collect()
}

/// Checks an SVG figure: a whole `<svg>` element naming the bundled font's
/// family, a text containing each of `needles`, and enough circles.
fn check_svg(path: &Path, needles: &[&str], min_circles: usize) -> Vec<String> {
    let s = std::fs::read_to_string(path).unwrap();
    assert!(s.starts_with("<svg"), "{}", path.display());
    assert!(s.trim_end().ends_with("</svg>"), "{}", path.display());
    assert!(
        s.contains("font-family=\"sans-serif\""),
        "{}",
        path.display()
    );
    let texts = svg_texts(&s);
    for n in needles {
        assert!(
            texts.iter().any(|t| t.contains(n)),
            "{}: no text with {n:?} in {texts:?}",
            path.display()
        );
    }
    let circles = s.matches("<circle").count();
    assert!(
        circles >= min_circles,
        "{}: {circles} circles, expected at least {min_circles}",
        path.display()
    );
    texts
}

const BLUE: [u8; 3] = [31, 119, 180];
const ORANGE: [u8; 3] = [255, 127, 14];
const FIT_RED: [u8; 3] = [200, 30, 30];

#[test]
fn tables_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ReportConfig::default();
    let s = write_report(&[run("r", "", synthetic())], dir.path(), &cfg).unwrap();
    assert_eq!((s.n_runs, s.n_cells, s.groups.len()), (1, 6, 1));

    // Table 1, full precision (values from tests/metrics.rs).
    let t1 = read_csv(&dir.path().join("table1.csv"));
    assert_eq!(t1.len(), 1);
    let r = &t1[0];
    assert_eq!((r["model"].as_str(), r["dataset"].as_str()), ("m", "d"));
    assert_eq!(r["n_mem"], "1");
    assert_eq!(
        (r["n_cells"].as_str(), r["n_at_capacity"].as_str()),
        ("6", "3")
    );
    assert_eq!(r["max_lossless_length"], "11");
    close(num(r, "token_gain_mean"), 26.0 / 3.0, "token gain");
    close(
        num(r, "token_gain_std"),
        (336.0f64 / 9.0).sqrt(),
        "token gain std",
    );
    close(num(r, "info_gain_nats_mean"), 200.0 / 3.0, "info gain");
    close(
        num(r, "info_gain_nats_std"),
        (1200.0f64 / 9.0).sqrt(),
        "std",
    );
    let ln2 = std::f64::consts::LN_2;
    close(num(r, "info_gain_bits_mean"), 200.0 / 3.0 / ln2, "bits");
    close(num(r, "capacity_tokens"), 128.0, "capacity");
    close(num(r, "capacity_utilisation"), 13.0 / 192.0, "utilisation");
    close(
        num(r, "ce_fit_unit_slope_intercept"),
        -200.0 / 3.0,
        "intercept",
    );
    close(num(r, "threshold"), 0.99, "threshold");
    close(num(r, "bits"), 16.0, "bits per component");

    // The same row rounded for pasting: 26/3 = 8.67, sqrt(336/9) = 6.11;
    // 66.67 ± 11.55 nats = 96.18 ± 16.66 bits; 13/192 = 0.0677.
    let md = std::fs::read_to_string(dir.path().join("table1.md")).unwrap();
    let lines: Vec<&str> = md.lines().collect();
    assert_eq!(lines.len(), 3, "{md}");
    assert!(
        lines[0].starts_with("| Model | Dataset | Vectors |"),
        "{md}"
    );
    assert!(lines[1].starts_with("|---|---|---:|"), "{md}");
    assert_eq!(
        lines[2],
        "| m | d | 1 | 6 (3 at capacity) | 11 | 8.7 ± 6.1 | 66.7 ± 11.5 | 96.2 ± 16.7 | 128 | 0.068 | -66.7 |"
    );

    // Fits: slope 1 r² 35/39; free slope 48/61, intercept -2550/61, r² 768/793.
    let f = read_csv(&dir.path().join("fits.csv"));
    assert_eq!(f[0]["n_points"], "3");
    close(num(&f[0], "unit_slope_intercept"), -200.0 / 3.0, "fit");
    close(num(&f[0], "unit_slope_r_squared"), 35.0 / 39.0, "r²");
    close(num(&f[0], "free_slope"), 48.0 / 61.0, "slope");
    close(num(&f[0], "free_intercept"), -2550.0 / 61.0, "intercept");
    close(num(&f[0], "free_r_squared"), 768.0 / 793.0, "r²");

    // Lengths: mean best accuracy 1, 0.975, 0.375; without 0.15, 0.2, 0.225.
    let l = read_csv(&dir.path().join("lengths.csv"));
    let got: Vec<(String, f64, f64)> = l
        .iter()
        .map(|r| {
            (
                r["length"].clone(),
                num(r, "mean_best_accuracy"),
                num(r, "mean_original_accuracy"),
            )
        })
        .collect();
    for (g, (len, b, o)) in
        got.iter()
            .zip([("11", 1.0, 0.15), ("21", 0.975, 0.2), ("41", 0.375, 0.225)])
    {
        assert_eq!(g.0, len);
        close(g.1, b, "mean best accuracy");
        close(g.2, o, "mean original accuracy");
    }

    // Cells: (a, 21) has H = 70, H' = 10, gain 60 nats, 14 tokens.
    let c = read_csv(&dir.path().join("cells.csv"));
    assert_eq!(c.len(), 6);
    let a21 = c
        .iter()
        .find(|r| r["sample_id"] == "a" && r["length"] == "21")
        .unwrap();
    close(num(a21, "original_ce_nats"), 70.0, "H");
    close(num(a21, "compressed_ce_nats"), 10.0, "H'");
    close(num(a21, "info_gain_nats"), 60.0, "gain");
    close(num(a21, "info_gain_bits"), 60.0 / ln2, "gain bits");
    close(num(a21, "token_gain"), 14.0, "token gain");
    close(num(a21, "capacity_tokens"), 128.0, "capacity");

    // Threshold and bits reach the tables: at 8 bits capacity 64,
    // utilisation 13/96; at threshold 0.95 length 21 (mean 0.975) is
    // lossless and the cells at capacity are those <= 0.95.
    let dir8 = tempfile::tempdir().unwrap();
    let cfg8 = ReportConfig {
        metrics: MetricsConfig {
            threshold: 0.95,
            bits: 8.0,
        },
        ..ReportConfig::default()
    };
    write_report(&[run("r", "", synthetic())], dir8.path(), &cfg8).unwrap();
    let r = &read_csv(&dir8.path().join("table1.csv"))[0];
    close(num(r, "capacity_tokens"), 64.0, "capacity at 8 bits");
    assert_eq!(r["max_lossless_length"], "21");
    // (21, a) at 0.95, (41, a), (41, b): the same three cells.
    assert_eq!(r["n_at_capacity"], "3");
    close(num(r, "capacity_utilisation"), 13.0 / 96.0, "utilisation");
    let md = std::fs::read_to_string(dir8.path().join("table1.md")).unwrap();
    assert!(
        md.contains("acc ≥ 0.95") && md.contains("Capacity (8 bits)"),
        "{md}"
    );
}

#[test]
fn figures_and_page() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[sweep]\nnote = \"a < b & c\"\nlengths = [11, 21, 41]\n";
    let mut cells = synthetic();
    cells.extend(two_vectors());
    let s = write_report(
        &[run("sweep-1", config, cells)],
        dir.path(),
        &ReportConfig::default(),
    )
    .unwrap();
    let stems: Vec<&str> = s.figures.iter().map(|f| f.stem.as_str()).collect();
    assert_eq!(
        stems,
        [
            "max_lossless",
            "accuracy_vs_length",
            "ce_m-d-1",
            "ce_m-d-2",
            "vectors",
            "capacity",
            "curves"
        ]
    );
    for f in &s.figures {
        for ext in ["png", "svg"] {
            let name = PathBuf::from(format!("{}.{ext}", f.stem));
            assert!(s.files.contains(&name), "{name:?} not listed");
        }
    }
    let p = |stem: &str, ext: &str| dir.path().join(format!("{stem}.{ext}"));

    // Two groups (1 and 2 vectors): blue and orange series; the CE plots
    // show the red slope-1 fit; every figure has text under its x axis.
    check_png(&p("accuracy_vs_length", "png"), ORANGE, 200);
    check_png(&p("max_lossless", "png"), BLUE, 2000);
    check_png(&p("ce_m-d-1", "png"), FIT_RED, 200);
    check_png(&p("vectors", "png"), BLUE, 200);
    check_png(&p("capacity", "png"), BLUE, 100);
    let (_, h) = check_png(&p("curves", "png"), ORANGE, 200);
    assert!(h > 1000, "curves: two panels, height {h}");

    check_svg(
        &p("accuracy_vs_length", "svg"),
        &["Text length, tokens", "threshold 0.99"],
        5,
    );
    // 6 cells, 3 below the threshold coloured, 3 lossless hollow; legend dots.
    check_svg(
        &p("ce_m-d-1", "svg"),
        &[
            "Original cross-entropy H, nats",
            "fit, slope 1: y = x − 66.7",
        ],
        6,
    );
    // Figure 1 shows each model at its fewest vectors: 11 tokens.
    let bars = check_svg(
        &p("max_lossless", "svg"),
        &["Max lossless length, tokens"],
        0,
    );
    assert!(bars.iter().any(|t| t == "11") && bars.iter().any(|t| t == "m"));
    assert!(!bars.iter().any(|t| t.contains("vectors")), "{bars:?}");
    check_svg(&p("vectors", "svg"), &["Number of [mem] vectors"], 2);
    check_svg(&p("capacity", "svg"), &["Theoretical capacity, tokens"], 2);
    check_svg(
        &p("curves", "svg"),
        &["Optimisation step", "text a, 41 tokens"],
        0,
    );

    // Auto curves: one text of the first group at its lengths.
    assert_eq!(s.curve_cells, ["m/d/a/1/11", "m/d/a/1/21", "m/d/a/1/41"]);

    // The page: every figure embedded as a PNG data URI equal to the file,
    // the configuration escaped, the tables, and nothing from the network.
    let html = std::fs::read_to_string(dir.path().join("index.html")).unwrap();
    assert_eq!(html.matches("<img ").count(), s.figures.len());
    for f in &s.figures {
        let png = std::fs::read(p(&f.stem, "png")).unwrap();
        let uri = format!(
            "src=\"data:image/png;base64,{}\"",
            base64::engine::general_purpose::STANDARD.encode(png)
        );
        assert!(html.contains(&uri), "{} not embedded", f.stem);
    }
    assert!(html.contains("<h3>sweep-1</h3>"));
    assert!(html.contains("note = &quot;a &lt; b &amp; c&quot;"));
    assert!(html.contains("8.7 ± 6.1") && html.contains("0.068"));
    assert!(!html.contains("http://") && !html.contains("https://"));
    assert!(!html.contains("<script") && !html.contains("<link"));
    assert_eq!(s.files.last().unwrap(), &PathBuf::from("index.html"));
}

#[test]
fn runs_merge_into_one_report() {
    // Shards of one sweep and a second model's run, in three runs.
    let all = synthetic();
    let (first, second) = all.split_at(3);
    let mut other: Vec<ReportCell> = synthetic();
    for c in &mut other {
        c.cell.model = "other".into();
        c.cell.hidden_size = 128;
    }
    let runs = [
        run("shard-0", "shard = 0\n", first.to_vec()),
        run("shard-1", "shard = 1\n", second.to_vec()),
        run("other-model", "model = \"other\"\n", other),
    ];
    let dir = tempfile::tempdir().unwrap();
    let s = write_report(&runs, dir.path(), &ReportConfig::default()).unwrap();
    assert_eq!((s.n_runs, s.n_cells, s.groups.len()), (3, 12, 2));

    // The shards' group equals the single run's, line for line.
    let one = tempfile::tempdir().unwrap();
    write_report(
        &[run("r", "", synthetic())],
        one.path(),
        &ReportConfig::default(),
    )
    .unwrap();
    let merged = std::fs::read_to_string(dir.path().join("table1.md")).unwrap();
    let single = std::fs::read_to_string(one.path().join("table1.md")).unwrap();
    let row = single.lines().nth(2).unwrap();
    assert_eq!(merged.lines().nth(2).unwrap(), row);
    // The other model: hidden 128 doubles the capacity to 256.
    let t1 = read_csv(&dir.path().join("table1.csv"));
    assert_eq!(t1[1]["model"], "other");
    close(num(&t1[1], "capacity_tokens"), 256.0, "capacity");
    close(
        num(&t1[1], "capacity_utilisation"),
        26.0 / 3.0 / 256.0,
        "utilisation",
    );
    let html = std::fs::read_to_string(dir.path().join("index.html")).unwrap();
    for (name, cfg) in [
        ("shard-0", "shard = 0"),
        ("shard-1", "shard = 1"),
        ("other-model", "model = &quot;other&quot;"),
    ] {
        assert!(html.contains(&format!("<h3>{name}</h3>")), "{name}");
        assert!(html.contains(cfg), "{cfg}");
    }

    // A cell in two runs is an error naming both.
    let dup = [
        run("a", "", synthetic()),
        run("b", "", synthetic()[..1].to_vec()),
    ];
    let e = write_report(&dup, dir.path(), &ReportConfig::default()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("m/d/a/1/11") && msg.contains("`a`") && msg.contains("`b`"),
        "{msg}"
    );
    // No cells at all.
    let e = write_report(
        &[run("empty", "", vec![])],
        dir.path(),
        &ReportConfig::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("nothing to report"), "{e}");
}

#[test]
fn curve_selection() {
    let dir = tempfile::tempdir().unwrap();
    let mut cells = synthetic();
    cells.extend(two_vectors());
    let runs = [run("r", "", cells)];
    let with = |curves: CurveChoice| {
        let cfg = ReportConfig {
            curves,
            ..ReportConfig::default()
        };
        write_report(&runs, dir.path(), &cfg).unwrap()
    };
    // Auto(2): shortest and longest length of text a.
    assert_eq!(
        with(CurveChoice::Auto(2)).curve_cells,
        ["m/d/a/1/11", "m/d/a/1/41"]
    );
    let s = with(CurveChoice::Auto(0));
    assert!(s.curve_cells.is_empty());
    assert!(!s.figures.iter().any(|f| f.stem == "curves"));
    assert!(!s.files.contains(&PathBuf::from("curves.png")));

    let sel: CellSelector = "mem=2,length=41".parse().unwrap();
    assert_eq!(sel.n_mem, Some(2));
    assert_eq!(sel.to_string(), "mem=2,length=41");
    assert_eq!(
        with(CurveChoice::Select(vec![
            sel,
            "sample=b,length=11".parse().unwrap()
        ]))
        .curve_cells,
        ["m/d/b/1/11", "m/d/a/2/41", "m/d/b/2/41"]
    );
    for bad in ["", "length=x", "colour=red", "sample"] {
        assert!(bad.parse::<CellSelector>().is_err(), "{bad:?} parsed");
    }
}

/// The report's capacity column is the paper's "Max capacity, tokens" for
/// all 14 models of `tests/fixtures/paper_models_table.csv`.
#[test]
fn paper_capacity_column() {
    let path = PathBuf::from(cram_testkit::REPO_ROOT).join("tests/fixtures/paper_models_table.csv");
    let rows = read_csv(&path);
    assert_eq!(rows.len(), 14);
    let cells: Vec<ReportCell> = rows
        .iter()
        .map(|r| {
            // A text at capacity that gains the table's PG-19 gain.
            let gain = num(r, "PG-19, Gain, tokens");
            ReportCell {
                cell: Cell {
                    model: r["Model name"].clone(),
                    dataset: "pg19".into(),
                    sample_id: "0".into(),
                    n_mem: 1,
                    length: 10001,
                    hidden_size: r["Input hidden size"].parse().unwrap(),
                    vocab_size: r["Vocabulary size"].parse().unwrap(),
                    original_loss: 5.0,
                    original_accuracy: 0.0,
                    original_n_predicted: 10000,
                    best_loss: 1.0,
                    best_accuracy: gain / 10000.0,
                    n_predicted: 10000,
                },
                loss_curve: vec![],
                accuracy_curve: vec![],
                n_tokens: None,
            }
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let s = write_report(
        &[run("paper", "", cells)],
        dir.path(),
        &ReportConfig::default(),
    )
    .unwrap();
    // No curves to draw.
    assert!(!s.figures.iter().any(|f| f.stem == "curves"));

    let md = std::fs::read_to_string(dir.path().join("table1.md")).unwrap();
    let md_rows: BTreeMap<String, Vec<String>> = md
        .lines()
        .skip(2)
        .map(|l| {
            let v: Vec<String> = l
                .trim_matches('|')
                .split(" | ")
                .map(|x| x.trim().to_string())
                .collect();
            (v[0].clone(), v)
        })
        .collect();
    let head: Vec<&str> = md
        .lines()
        .next()
        .unwrap()
        .trim_matches('|')
        .split(" | ")
        .map(str::trim)
        .collect();
    let cap_col = head
        .iter()
        .position(|h| *h == "Capacity (16 bits), tokens")
        .unwrap();
    let csv_rows = read_csv(&dir.path().join("table1.csv"));
    for r in &rows {
        let name = &r["Model name"];
        let paper = &r["Max capacity, tokens"];
        assert_eq!(&md_rows[name][cap_col], paper, "{name}: markdown capacity");
        let c = csv_rows.iter().find(|c| &c["model"] == name).unwrap();
        assert_eq!(
            format!("{:.0}", num(c, "capacity_tokens")),
            *paper,
            "{name}: CSV capacity"
        );
        // Utilisation = gain / unrounded capacity.
        close(
            num(c, "capacity_utilisation"),
            num(r, "PG-19, Gain, tokens") / num(c, "capacity_tokens"),
            "utilisation",
        );
    }
    // One bar per model, each at least 50 pixels apart.
    let (_, h) = check_png(&dir.path().join("max_lossless.png"), BLUE, 0);
    assert!(h >= 50 * 14, "bar chart height {h}");
    let names = svg_texts(&std::fs::read_to_string(dir.path().join("max_lossless.svg")).unwrap());
    for r in &rows {
        assert!(
            names.contains(&r["Model name"]),
            "{} not labelled",
            r["Model name"]
        );
    }
}

#[test]
fn jsonl_runs_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run-7");
    std::fs::create_dir(&run_dir).unwrap();
    write_jsonl(&run_dir.join("cells.jsonl"), &synthetic()).unwrap();
    std::fs::write(run_dir.join("config.toml"), "seed = 7\n").unwrap();
    let r = read_jsonl_run(&run_dir).unwrap();
    assert_eq!(r.name, "run-7");
    assert_eq!(r.config_toml, "seed = 7\n");
    assert_eq!(r.cells, synthetic());
    // The cell's fields are flat in each line.
    let line = std::fs::read_to_string(run_dir.join("cells.jsonl")).unwrap();
    let v: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(v["best_accuracy"], 1.0);
    assert_eq!(v["loss_curve"].as_array().unwrap().len(), 11);
    // A .jsonl file alone: named after it, no configuration.
    let r = read_jsonl_run(&run_dir.join("cells.jsonl")).unwrap();
    assert_eq!((r.name.as_str(), r.config_toml.as_str()), ("cells", ""));
    // Curves may be left out.
    let bare = dir.path().join("bare.jsonl");
    let mut v = serde_json::to_value(&synthetic()[0]).unwrap();
    let o = v.as_object_mut().unwrap();
    o.remove("loss_curve");
    o.remove("accuracy_curve");
    std::fs::write(&bare, format!("{v}\n\n")).unwrap();
    let r = read_jsonl_run(&bare).unwrap();
    assert_eq!(r.cells.len(), 1);
    assert!(r.cells[0].loss_curve.is_empty());
    // A bad line is named.
    std::fs::write(&bare, format!("{v}\n{{\"model\": 3}}\n")).unwrap();
    let e = read_jsonl_run(&bare).unwrap_err().to_string();
    assert!(e.contains("bare.jsonl") && e.contains("line 2"), "{e}");
}

#[test]
fn cli_report() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("shard-a"), dir.path().join("shard-b"));
    for (d, cells) in [(&a, synthetic()), (&b, two_vectors())] {
        std::fs::create_dir(d).unwrap();
        write_jsonl(&d.join("cells.jsonl"), &cells).unwrap();
        std::fs::write(d.join("config.toml"), "lr = 0.1\n").unwrap();
    }
    let out = dir.path().join("report");
    let o = Command::new(env!("CARGO_BIN_EXE_cram"))
        .args(["report", a.to_str().unwrap(), b.to_str().unwrap(), "-o"])
        .arg(&out)
        .args(["--bits", "8", "--curve", "mem=2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("2 run(s), 10 texts, 2 group(s)"),
        "{stdout}"
    );
    let t1 = read_csv(&out.join("table1.csv"));
    close(num(&t1[0], "capacity_tokens"), 64.0, "--bits 8");
    assert_eq!(t1[1]["max_lossless_length"], "21");
    let svg = std::fs::read_to_string(out.join("curves.svg")).unwrap();
    let texts = svg_texts(&svg);
    assert!(
        texts.iter().any(|t| t.ends_with("text a, 21 tokens")),
        "{texts:?}"
    );
    assert!(!texts.iter().any(|t| t.contains("11 tokens")), "{texts:?}");
    assert!(out.join("index.html").exists());

    // Errors: one line, exit 2.
    for (args, needle) in [
        (vec![dir.path().join("nope")], "no such file"),
        (vec![a.clone(), a.clone()], "appears twice"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_cram"))
            .arg("report")
            .args(&args)
            .arg("-o")
            .arg(dir.path().join("bad"))
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.starts_with("error: ") && err.contains(needle), "{err}");
    }
}

/// The five sections of the paper's other experiments on rows whose
/// tables are worked out by hand, beside the synthetic cells.
#[test]
fn ablation_sections_by_hand() {
    use cram::ablations::{AblationKey, AblationRow, Kind};
    use cram::sweep::CellKey;
    let row = |kind, sample: &str, length, param, values: &[(&str, f64)], vectors: Vec<f32>| {
        AblationRow {
            key: AblationKey {
                kind,
                model: "m".into(),
                dataset: "d".into(),
                sample_id: sample.into(),
                length,
                n_mem: usize::from(kind == Kind::Pca),
                param,
            },
            values: values.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            vectors,
        }
    };
    let mut rows = vec![
        // Context: at length 11 the vectors' mean CE is (0 + 0.1) / 2 = 0.05;
        // p = 4 gives 1.5, p = 8 gives 0.015: 8 tokens reach it.
        row(
            Kind::Context,
            "a",
            11,
            4,
            &[("ce", 2.0), ("base_ce", 3.0), ("n_context", 4.0)],
            vec![],
        ),
        row(
            Kind::Context,
            "b",
            11,
            4,
            &[("ce", 1.0), ("base_ce", 3.0), ("n_context", 4.0)],
            vec![],
        ),
        row(
            Kind::Context,
            "a",
            11,
            8,
            &[("ce", 0.01), ("base_ce", 3.0), ("n_context", 8.0)],
            vec![],
        ),
        row(
            Kind::Context,
            "b",
            11,
            8,
            &[("ce", 0.02), ("base_ce", 3.0), ("n_context", 8.0)],
            vec![],
        ),
        // Copy: reductions 20 and 10; the vectors' gains are 30 and 39.
        row(
            Kind::Copy,
            "a",
            11,
            0,
            &[("base_ce_sum", 30.0), ("ce_sum", 10.0), ("accuracy", 1.0)],
            vec![],
        ),
        row(
            Kind::Copy,
            "b",
            11,
            0,
            &[("base_ce_sum", 40.0), ("ce_sum", 30.0), ("accuracy", 0.5)],
            vec![],
        ),
        row(
            Kind::BitsPerByte,
            "",
            0,
            0,
            &[
                ("texts", 2.0),
                ("tokens", 100.0),
                ("bytes", 400.0),
                ("tokens_per_byte", 0.25),
            ],
            vec![],
        ),
    ];
    // Entropy: required = gain / 2 + 1 on every text.
    for c in synthetic() {
        let c = c.cell;
        let need = 0.5 * c.info_gain_nats() + 1.0;
        let h = c.original_ce();
        rows.push(row(
            Kind::EntropyBound,
            &c.sample_id,
            c.length,
            0,
            &[
                ("h", h),
                ("h_opt", h - need),
                ("h_eq", h - need + 0.5),
                ("h_max", h - need - 0.5),
            ],
            vec![],
        ));
    }
    // PCA: two texts, three seeds each, tight clusters far apart.
    for (t, base) in [("a", [1.0f32, 0.0, 0.0, 0.0]), ("b", [0.0, 1.0, 0.0, 0.0])] {
        for r in 0..3 {
            let mut v = base.to_vec();
            v[2] = 0.01 * r as f32;
            v[3] = -0.01 * r as f32;
            rows.push(row(Kind::Pca, t, 11, r, &[], v));
        }
    }
    let pca_cells = vec![(
        CellKey {
            model: "m".into(),
            dataset: "d".into(),
            sample_id: "c".into(),
            n_mem: 1,
            length: 11,
        },
        vec![0.0, 0.0, 1.0, 0.0],
    )];
    let mut r = run("r", "", synthetic());
    r.ablations = cram::store::RunAblations { rows, pca_cells };
    let dir = tempfile::tempdir().unwrap();
    let s = write_report(&[r], dir.path(), &ReportConfig::default()).unwrap();
    let stems: Vec<&str> = s.figures.iter().map(|f| f.stem.as_str()).collect();
    for stem in cram_report::ablations::SECTION_STEMS {
        assert!(stems.contains(&stem), "{stems:?}");
        check_png(&dir.path().join(format!("{stem}.png")), [31, 119, 180], 1);
        assert!(dir.path().join(format!("{stem}.svg")).is_file());
    }
    let ctx = s
        .figures
        .iter()
        .find(|f| f.stem == "context_baseline")
        .unwrap();
    assert!(
        ctx.caption
            .contains("d at length 11: 8 context tokens reach the CE of 1 vector(s)"),
        "{}",
        ctx.caption
    );

    let copy = read_csv(&dir.path().join("copy_baseline.csv"));
    let c11 = copy.iter().find(|r| r["length"] == "11").unwrap();
    close(num(c11, "copy CE reduction"), 15.0, "copy reduction");
    close(num(c11, "vectors CE reduction"), 34.5, "vectors reduction");
    assert_eq!(c11["reproduced (acc ≥ 0.99)"], "2");

    let bpb = read_csv(&dir.path().join("bits_per_byte.csv"));
    assert_eq!(bpb[0]["max lossless tokens"], "11");
    close(num(&bpb[0], "max lossless bytes"), 44.0, "bytes");

    let eb = read_csv(&dir.path().join("entropy_bound.csv"));
    let opt = eb.iter().find(|r| r["bound"] == "H − H_opt").unwrap();
    assert_eq!(opt["converged"], "3");
    close(num(opt, "fit conv.: slope"), 0.5, "slope");
    close(num(opt, "intercept"), 1.0, "intercept");

    let pca = read_csv(&dir.path().join("pca_solutions.csv"));
    assert_eq!(
        (
            pca[0]["texts from seeds"].as_str(),
            pca[0]["other texts"].as_str()
        ),
        ("2", "1")
    );
    assert!(num(&pca[0], "between / within") > 20.0, "{:?}", pca[0]);

    let html = std::fs::read_to_string(dir.path().join("index.html")).unwrap();
    for title in [
        "Context baseline",
        "Copy baseline",
        "Bits per byte",
        "PCA of the solutions",
        "Entropy bound H_opt",
    ] {
        assert!(html.contains(&format!("{title}</h2>")), "{title}");
    }
    assert!(dir.path().join("ablations.csv").is_file());
}
