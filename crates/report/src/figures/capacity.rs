//! Figures of capacity runs: the horizon of each text against the text's
//! cross-entropy without vectors, and the steps of each stage against its
//! target.

use super::*;

/// One series of a capacity scatter: a setting's label and its points
/// `(x, y, filled)`.
pub struct Series {
    /// The setting (legend label).
    pub label: String,
    /// The points; hollow ones are drawn as rings.
    pub points: Vec<(f64, f64, bool)>,
}

/// A scatter of series, one colour each, filled and hollow markers.
pub struct Scatter {
    /// X axis title.
    pub x_desc: &'static str,
    /// Y axis title.
    pub y_desc: &'static str,
    /// What a filled marker means (legend).
    pub filled: &'static str,
    /// What a hollow marker means (legend).
    pub hollow: &'static str,
    /// The series.
    pub series: Vec<Series>,
}

impl Scatter {
    fn entries(&self) -> Vec<Entry> {
        let mut e: Vec<Entry> = self
            .series
            .iter()
            .enumerate()
            .map(|(i, s)| Entry::dot(s.label.as_str(), color(i).filled()))
            .collect();
        let all = || self.series.iter().flat_map(|s| &s.points);
        let grey = BLACK.mix(0.6);
        if all().any(|p| p.2) {
            e.push(Entry::dot(self.filled, grey.filled()));
        }
        if all().any(|p| !p.2) {
            e.push(Entry::dot(self.hollow, grey.stroke_width(3)));
        }
        e
    }

    /// Draws the figure as `dir/<stem>.png` and `.svg`.
    pub fn render(&self, dir: &Path, stem: &str) -> Result<()> {
        render(dir, stem, self)
    }
}

/// Height of the one-column legend band of `n` entries.
fn band(n: usize) -> u32 {
    ROW as u32 * n as u32 + 20
}

impl Plot for Scatter {
    fn size(&self) -> (u32, u32) {
        (W, H + band(self.entries().len()))
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let entries = self.entries();
        let (plot, legend) = root.split_vertically(H);
        let pts = || self.series.iter().flat_map(|s| &s.points);
        let xmax = pts().map(|p| p.0).fold(1e-9, f64::max) * 1.08;
        let ymax = pts().map(|p| p.1).fold(1.0, f64::max) * 1.1;
        let x = Axis::linear(self.x_desc, 0.0, xmax);
        let y = Axis::linear(self.y_desc, 0.0, ymax).counts();
        let mut c = chart(&plot, "", &x, &y)?;
        for (i, s) in self.series.iter().enumerate() {
            let col = color(i);
            c.draw_series(s.points.iter().map(|&(px, py, filled)| {
                let style = if filled {
                    col.filled()
                } else {
                    col.stroke_width(3)
                };
                Circle::new((px, py), 8, style)
            }))?;
        }
        draw_legend_columns(&legend, &entries, 1)
    }
}
