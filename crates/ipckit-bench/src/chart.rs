//! `ipckit bench --chart FILE.svg`: the figures of a run as an SVG chart, log scales.

use plotters::prelude::*;

use crate::harness::{Row, ScalePoint};

const IPCKIT: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const BASELINE: RGBColor = RGBColor(0xbb, 0xbb, 0xbb);
const PUSH: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const PALETTE: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
];

type Failure = Box<dyn std::error::Error>;

/// Checks that [`draw`] can write an SVG chart at `path`, so that a run is not measured
/// only to be lost for a typo: the name ends in `.svg`, it is not a directory, and its
/// directory exists and is writable (as is the file, if it exists). The error says what
/// is wrong and what to do.
///
/// ```
/// use std::path::Path;
/// let dir = std::env::temp_dir();
/// assert!(ipckit_bench::chart::check_path(&dir.join("bench.svg")).is_ok());
/// assert!(ipckit_bench::chart::check_path(&dir.join("bench.png")).is_err());
/// assert!(ipckit_bench::chart::check_path(Path::new("/no/such/dir/bench.svg")).is_err());
/// ```
pub fn check_path(path: &std::path::Path) -> Result<(), String> {
    use rustix::fs::{Access, AtFlags, CWD, accessat};
    let shown = path.display();
    if path.is_dir() {
        return Err(format!(
            "--chart {shown} is a directory; name a file in it, e.g. {}",
            path.join("bench.svg").display()
        ));
    }
    let is_svg = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    if !is_svg {
        return Err(format!(
            "--chart {shown}: the chart is an SVG drawing, so its name must end in .svg"
        ));
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "--chart {shown}: the directory {} does not exist; create it or choose another path",
            dir.display()
        ));
    }
    let writable = |p: &std::path::Path| accessat(CWD, p, Access::WRITE_OK, AtFlags::EACCESS);
    if path.exists() {
        writable(path)
            .map_err(|e| format!("--chart {shown} cannot be replaced ({e}); choose another path"))
    } else {
        writable(dir).map_err(|e| {
            format!(
                "--chart {shown}: cannot create a file in {} ({e}); choose another directory",
                dir.display()
            )
        })
    }
}

/// Draws the round-trip medians (ipckit beside the baseline) and the one-way throughput of
/// every transport, and, when `scaling` has points, latency against message size and
/// against the number of clients.
///
/// ```no_run
/// let rows = ipckit_bench::harness::run(&Default::default(), &mut |_| {})?;
/// ipckit_bench::chart::draw(&rows, &[], std::path::Path::new("bench.svg"))?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn draw(rows: &[Row], scaling: &[ScalePoint], path: &std::path::Path) -> Result<(), Failure> {
    let panels = if scaling.is_empty() { 2 } else { 4 };
    let root = SVGBackend::new(path, (1000, 360 * panels as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((panels, 1));
    let transports: Vec<&str> = rows
        .iter()
        .filter(|r| r.variant == "ipckit")
        .map(|r| r.transport.as_str())
        .collect();
    let value = |transport: &str, variant: &str, get: fn(&Row) -> Option<f64>| {
        rows.iter()
            .find(|r| r.transport == transport && r.variant == variant)
            .and_then(get)
    };
    let size = rows.first().map_or(crate::raw::SIZE, |r| r.size);
    bars(
        &areas[0],
        &format!(
            "{size}-byte round trip, median (log scale): ipckit's request (blue), its push where it pushes (orange), the hand-written baseline (grey)"
        ),
        &transports,
        nanoseconds,
        |t| {
            [
                (
                    value(t, "ipckit", |r| r.rtt_median_ns.map(|n| n as f64)),
                    IPCKIT,
                ),
                (
                    value(t, "push", |r| r.rtt_median_ns.map(|n| n as f64)),
                    PUSH,
                ),
                (
                    value(t, "baseline", |r| r.rtt_median_ns.map(|n| n as f64)),
                    BASELINE,
                ),
            ]
        },
    )?;
    bars(
        &areas[1],
        "one-way throughput, messages per second (log scale)",
        &transports,
        per_second,
        |t| {
            [
                (value(t, "ipckit", |r| r.msgs_per_sec), IPCKIT),
                (None, PUSH),
                (None, BASELINE),
            ]
        },
    )?;
    if !scaling.is_empty() {
        lines(
            &areas[2],
            "round trip against message size, log-log",
            scaling,
            "size",
        )?;
        lines(
            &areas[3],
            "round trip against concurrent clients, log-log",
            scaling,
            "clients",
        )?;
    }
    root.present()?;
    Ok(())
}

/// Grouped bars, three per transport (a gap where one has no value), on a log scale.
fn bars(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    caption: &str,
    transports: &[&str],
    unit: fn(&f64) -> String,
    values: impl Fn(&str) -> [(Option<f64>, RGBColor); 3],
) -> Result<(), Failure> {
    let all: Vec<f64> = transports
        .iter()
        .flat_map(|t| values(t).into_iter().filter_map(|(v, _)| v))
        .filter(|v| *v > 0.0)
        .collect();
    let (low, high) = bounds(&all);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..transports.len() as f64, (low..high).log_scale())?;
    let names: Vec<String> = transports.iter().map(|t| t.to_string()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_label_formatter(&unit)
        .x_labels(transports.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.01 && i < names.len() {
                names[i].clone()
            } else {
                String::new()
            }
        })
        .draw()?;
    for (i, transport) in transports.iter().enumerate() {
        for (k, (v, color)) in values(transport).into_iter().enumerate() {
            if let Some(v) = v.filter(|v| *v > 0.0) {
                let x = i as f64 + 0.1 + 0.27 * k as f64;
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(x, low), (x + 0.25, v)],
                    color.filled(),
                )))?;
            }
        }
    }
    Ok(())
}

/// One line per transport: median round trip against `axis` (`"size"` or `"clients"`).
fn lines(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    caption: &str,
    points: &[ScalePoint],
    axis: &str,
) -> Result<(), Failure> {
    let chosen: Vec<&ScalePoint> = points
        .iter()
        .filter(|p| p.axis == axis && p.rtt_median_ns.is_some())
        .collect();
    if chosen.is_empty() {
        return Ok(());
    }
    let xs: Vec<f64> = chosen.iter().map(|p| p.x as f64).collect();
    let ys: Vec<f64> = chosen
        .iter()
        .filter_map(|p| p.rtt_median_ns.map(|n| n as f64))
        .collect();
    let (x_low, x_high) = bounds(&xs);
    let (y_low, y_high) = bounds(&ys);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d((x_low..x_high).log_scale(), (y_low..y_high).log_scale())?;
    chart
        .configure_mesh()
        .y_label_formatter(&nanoseconds)
        .x_label_formatter(&|x| {
            if axis == "size" {
                bytes(x)
            } else {
                format!("{x:.0}")
            }
        })
        .draw()?;
    let mut transports: Vec<&str> = chosen.iter().map(|p| p.transport.as_str()).collect();
    transports.dedup();
    for (i, transport) in transports.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let series: Vec<(f64, f64)> = chosen
            .iter()
            .filter(|p| p.transport == *transport)
            .filter_map(|p| Some((p.x as f64, p.rtt_median_ns? as f64)))
            .collect();
        chart
            .draw_series(LineSeries::new(series, color.stroke_width(2)))?
            .label(transport.to_string())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn nanoseconds(ns: &f64) -> String {
    match *ns {
        n if n < 1e3 => format!("{n:.0} ns"),
        n if n < 1e6 => format!("{:.0} µs", n / 1e3),
        n if n < 1e9 => format!("{:.0} ms", n / 1e6),
        n => format!("{:.0} s", n / 1e9),
    }
}

fn per_second(rate: &f64) -> String {
    match *rate {
        r if r < 1e3 => format!("{r:.0}/s"),
        r if r < 1e6 => format!("{:.0} k/s", r / 1e3),
        r => format!("{:.0} M/s", r / 1e6),
    }
}

fn bytes(n: &f64) -> String {
    match *n {
        n if n < 1024.0 => format!("{n:.0} B"),
        n if n < 1024.0 * 1024.0 => format!("{:.0} KiB", n / 1024.0),
        n => format!("{:.0} MiB", n / 1024.0 / 1024.0),
    }
}

/// A log-scale range around `values`, with some room.
fn bounds(values: &[f64]) -> (f64, f64) {
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(0.0, f64::max);
    if !low.is_finite() || high <= 0.0 {
        return (1.0, 10.0);
    }
    (low / 2.0, high * 2.0)
}
