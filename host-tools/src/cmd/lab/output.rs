//! What every experiment hands back besides its work: an aligned table on stdout, one JSON
//! object (`--json`), a line chart (`--plot`, SVG through `plotters`) and a progress bar.

use std::io::IsTerminal as _;
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use plotters::prelude::*;

use crate::cli::{Failure, io_err};

/// Columns padded to their widest cell: numbers right-aligned, text (and the first column)
/// left-aligned.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    let mut numeric = vec![true; headers.len()];
    numeric[0] = false;
    for r in rows {
        for (i, c) in r.iter().enumerate().take(widths.len()) {
            widths[i] = widths[i].max(c.chars().count());
            numeric[i] &= c.starts_with(|ch: char| ch.is_ascii_digit() || ch == '-');
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            let gap = if i == 0 { "" } else { "  " };
            if numeric[i] {
                out.push_str(&format!("{gap}{c:>w$}"));
            } else {
                out.push_str(&format!("{gap}{c:<w$}"));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// Write `value` and a newline to `path`, atomically ([`write_atomically`]).
pub(crate) fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).expect("a JSON value serializes") + "\n";
    write_atomically(path, &text)
}

/// Write `text` to `path` through a temporary file beside it, renamed over `path`: a run
/// killed while writing leaves the previous report whole, never half of one (`dqe lab
/// reuse` rewrites its report after each fraction).
pub(crate) fn write_atomically(path: &Path, text: &str) -> Result<(), Failure> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let fail = || {
        io_err(format!(
            "cannot write the JSON report to {}",
            path.display()
        ))
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(fail())?;
    // A temporary file is private (0600); a report is not.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::Permissions::from_mode(0o644);
        tmp.as_file().set_permissions(mode).map_err(fail())?;
    }
    std::io::Write::write_all(&mut tmp, text.as_bytes()).map_err(fail())?;
    tmp.persist(path).map_err(|e| e.error).map_err(fail())?;
    Ok(())
}

/// One line of a chart.
#[derive(Debug, Clone)]
pub(crate) struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A line chart: one line per series, a point marker at each measurement.
#[derive(Debug, Clone)]
pub(crate) struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Logarithmic x axis (for figures that span decades).
    pub log_x: bool,
}

/// Draw `chart` as SVG to `path`.
pub(crate) fn plot(path: &Path, chart: &Chart) -> Result<(), Failure> {
    draw(path, chart).map_err(|e| Failure::Io {
        what: format!("cannot draw the chart to {}", path.display()),
        source: std::io::Error::other(e.to_string()),
    })
}

fn draw(path: &Path, chart: &Chart) -> Result<(), Box<dyn std::error::Error>> {
    let all = chart.series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1) = (if chart.log_x { 1.0 } else { 0.0 }, 1.0);
    }
    if chart.log_x {
        x0 = x0.max(f64::MIN_POSITIVE);
    }
    if x1 <= x0 {
        x1 = x0 * 2.0 + 1.0;
    }
    let y1 = if y1 > 0.0 { y1 * 1.1 } else { 1.0 };
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(&chart.title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(72);
    let colours = [&BLUE, &RED, &GREEN, &MAGENTA, &CYAN, &BLACK];
    macro_rules! body {
        ($ctx:expr) => {{
            let mut ctx = $ctx;
            ctx.configure_mesh()
                .x_desc(chart.x_label.as_str())
                .y_desc(chart.y_label.as_str())
                .draw()?;
            for (i, s) in chart.series.iter().enumerate() {
                let c = colours[i % colours.len()];
                let style = ShapeStyle::from(c).stroke_width(2);
                ctx.draw_series(LineSeries::new(s.points.iter().copied(), style))?
                    .label(s.name.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
                ctx.draw_series(
                    s.points
                        .iter()
                        .map(|&(x, y)| Circle::new((x, y), 3, ShapeStyle::from(c).filled())),
                )?;
            }
            ctx.configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw()?;
        }};
    }
    if chart.log_x {
        body!(builder.build_cartesian_2d((x0..x1).log_scale(), 0.0..y1)?);
    } else {
        body!(builder.build_cartesian_2d(x0..x1, 0.0..y1)?);
    }
    root.present()?;
    Ok(())
}

/// A bar over the steps of an experiment, on stderr when it is a terminal.
pub(crate) fn progress(steps: u64, quiet: bool) -> ProgressBar {
    let target = if !quiet && std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(steps), target);
    bar.set_style(
        ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len} {msg}")
            .expect("valid progress template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// `--duration` as a `Duration`, or a usage error that says what was expected.
pub(crate) fn duration(secs: f64) -> Result<Duration, Failure> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero() && *d <= crate::u2::MAX_DURATION)
        .ok_or_else(|| {
            Failure::Usage(format!(
                "--duration {secs:?}: expected a number of seconds above 0 and at most {}",
                crate::u2::MAX_DURATION.as_secs()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["system", "ops/s", "from"],
            &[
                vec!["dqe".into(), "12".into(), "a".into()],
                vec!["redis".into(), "1234".into(), "bcd".into()],
            ],
        );
        // Numbers right-aligned, text left-aligned.
        assert_eq!(
            t,
            "system  ops/s  from\ndqe        12  a\nredis    1234  bcd\n"
        );
    }

    #[test]
    fn a_report_is_replaced_whole_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        write_atomically(&path, "{\"a\": 1}\n").unwrap();
        write_atomically(&path, "{\"a\": 2}\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"a\": 2}\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["r.json"]);
        let missing = dir.path().join("no/such/dir/r.json");
        assert!(write_atomically(&missing, "{}").is_err());
    }

    #[test]
    fn plot_writes_an_svg() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.svg");
        let chart = Chart {
            title: "t".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series: vec![Series {
                name: "a".into(),
                points: vec![(1.0, 2.0), (10.0, 3.0)],
            }],
            log_x: true,
        };
        plot(&path, &chart).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("<polyline"),
            "{svg}"
        );
    }
}
