//! The figures of `ipckit bench` as text: aligned tables, each column of figures in one
//! unit named in its header, and CSV.

use std::time::Duration;

use crate::events::{EventsPoint, EventsReport, FanOut};
use crate::harness::{BroadcastPoint, ContractPoint, Row, STREAM_SIZE, ScalePoint};

mod spool;
pub use spool::{spool_csv, spool_table};

/// The results as an aligned table, each column of figures in one unit, named in its
/// header.
pub fn table(rows: &[Row]) -> String {
    let nanos = |get: fn(&Row) -> Option<u64>| {
        rows.iter()
            .map(|r| get(r).map(|n| n as f64))
            .collect::<Vec<_>>()
    };
    let columns = [
        column("rtt p50", &nanos(|r| r.rtt_median_ns), &DURATION),
        column("p99", &nanos(|r| r.rtt_p99_ns), &DURATION),
        column("p99.9", &nanos(|r| r.rtt_p999_ns), &DURATION),
        fixed_column("ratio", rows.iter().map(|r| r.ratio), 2),
        column("cpu/rtt", &nanos(|r| r.cpu_ns_per_rtt), &DURATION),
        column(
            "msg/s",
            &rows.iter().map(|r| r.msgs_per_sec).collect::<Vec<_>>(),
            &RATE,
        ),
        fixed_column("GB/s", rows.iter().map(|r| r.gb_per_sec), 2),
    ];
    let mut lines = vec![header(&["transport", "variant"], &columns)];
    for (i, row) in rows.iter().enumerate() {
        let note = match (&row.reason, row.stream_size) {
            (Some(reason), _) => format!("{}: {reason}", row.status),
            (None, _) if row.variant == "push" => {
                "server pushes, client answers; ratio over the request's".to_owned()
            }
            (None, _) if row.transport == "spool" && row.variant == "ipckit" => {
                "?sync=false; with fsync: the spool table".to_owned()
            }
            (None, _) if row.rtt_median_ns.is_none() && row.msgs_per_sec.is_some() => {
                "one way, no replies: what one listener process received".to_owned()
            }
            (None, s) if s > 0 && s < STREAM_SIZE => format!("GB/s with {s}-byte messages"),
            _ => String::new(),
        };
        lines.push(line(
            [row.transport.clone(), row.variant.to_owned()],
            &columns,
            i,
            note,
        ));
    }
    aligned(&lines, 2)
}

/// `lines` as a table: the first `names` columns and the last left-aligned, the figures
/// between right-aligned, two spaces apart.
fn aligned(lines: &[Vec<String>], names: usize) -> String {
    let count = lines.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..count)
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in lines {
        let cells: Vec<String> = line
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                if c < names || c == count - 1 {
                    format!("{cell:<w$}", w = widths[c])
                } else {
                    format!("{cell:>w$}", w = widths[c])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Units of time, from nanoseconds.
const DURATION: [(f64, &str); 4] = [(1.0, "ns"), (1e3, "µs"), (1e6, "ms"), (1e9, "s")];
/// Units of a rate, from one per second.
const RATE: [(f64, &str); 3] = [(1.0, ""), (1e3, "k"), (1e6, "M")];

/// A column of figures in one unit: the smallest of `units` (scale, name; ascending) in
/// which the column's largest value has at most five digits before the point (so that a
/// round trip of 127 µs reads as such, not as 127448 ns, and a scaling run's 34 ms beside
/// shm's 0.4 µs keeps both), with the decimals that give its smallest value three
/// significant digits (at most three). The header names the unit; an absent value is `-`.
///
/// ```text
/// [850 ns, 12.3 µs, 2.5 ms] -> "rtt p50 (µs)": 0.850, 12.345, 2500.000
/// ```
/// A table's first line: its `keys`, then its columns' names, then "note".
fn header(keys: &[&str], columns: &[(String, Vec<String>)]) -> Vec<String> {
    keys.iter()
        .map(|k| k.to_string())
        .chain(columns.iter().map(|c| c.0.clone()))
        .chain(["note".to_owned()])
        .collect()
}

/// A table's line `i`: the cells that name it, then each column's cell, then the note.
fn line<const N: usize>(
    lead: [String; N],
    columns: &[(String, Vec<String>)],
    i: usize,
    note: String,
) -> Vec<String> {
    lead.into_iter()
        .chain(columns.iter().map(|c| c.1[i].clone()))
        .chain([note])
        .collect()
}

fn column(name: &str, values: &[Option<f64>], units: &[(f64, &str)]) -> (String, Vec<String>) {
    let present = || values.iter().flatten().copied();
    let largest = present().fold(0.0, f64::max);
    let (scale, unit) = units
        .iter()
        .copied()
        .find(|&(scale, _)| largest / scale < 1e5)
        .unwrap_or(units[units.len() - 1]);
    let smallest = present().filter(|&v| v > 0.0).fold(f64::INFINITY, f64::min) / scale;
    let decimals = if smallest.is_finite() {
        (2 - smallest.log10().floor() as i32).clamp(0, 3) as usize
    } else {
        0
    };
    let header = if unit.is_empty() {
        name.to_owned()
    } else {
        format!("{name} ({unit})")
    };
    let cells = values
        .iter()
        .map(|v| v.map_or("-".to_owned(), |v| format!("{:.decimals$}", v / scale)))
        .collect();
    (header, cells)
}

/// A column of figures with a fixed number of decimals, in the unit its name says.
fn fixed_column(
    name: &str,
    values: impl Iterator<Item = Option<f64>>,
    decimals: usize,
) -> (String, Vec<String>) {
    let cells = values
        .map(|v| v.map_or("-".to_owned(), |v| format!("{v:.decimals$}")))
        .collect();
    (name.to_owned(), cells)
}

/// The results as CSV, one row per line, with a header; every figure of the table.
pub fn csv(rows: &[Row]) -> String {
    let mut out = String::from(
        "transport,variant,status,reason,size,rtt_median_ns,rtt_p99_ns,rtt_p999_ns,ratio,cpu_ns_per_rtt,msgs_per_sec,msgs_ratio,stream_size,gb_per_sec,gb_ratio\n",
    );
    for r in rows {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            r.transport,
            r.variant,
            r.status,
            quoted(r.reason.as_deref()),
            r.size,
            cell(r.rtt_median_ns),
            cell(r.rtt_p99_ns),
            cell(r.rtt_p999_ns),
            fixed(r.ratio, 4),
            cell(r.cpu_ns_per_rtt),
            fixed(r.msgs_per_sec, 0),
            fixed(r.msgs_ratio, 4),
            r.stream_size,
            fixed(r.gb_per_sec, 4),
            fixed(r.gb_ratio, 4),
        ));
    }
    out
}

/// A CSV text field, always quoted; empty when absent.
fn quoted(text: Option<&str>) -> String {
    text.map(|t| format!("\"{}\"", t.replace('"', "\"\"")))
        .unwrap_or_default()
}

/// A CSV number; empty when absent.
fn cell(n: Option<u64>) -> String {
    n.map(|n| n.to_string()).unwrap_or_default()
}

/// A CSV number with `digits` decimals; empty when absent.
fn fixed(x: Option<f64>, digits: usize) -> String {
    x.map(|x| format!("{x:.digits$}")).unwrap_or_default()
}

/// A scaling run as an aligned table, each column of figures in one unit, named in its
/// header.
pub fn scaling_table(points: &[ScalePoint]) -> String {
    let nanos = |get: fn(&ScalePoint) -> Option<u64>| {
        points
            .iter()
            .map(|p| get(p).map(|n| n as f64))
            .collect::<Vec<_>>()
    };
    let columns = [
        column("rtt p50", &nanos(|p| p.rtt_median_ns), &DURATION),
        column("p99", &nanos(|p| p.rtt_p99_ns), &DURATION),
        column(
            "rtt/s",
            &points
                .iter()
                .map(|p| p.round_trips_per_sec)
                .collect::<Vec<_>>(),
            &RATE,
        ),
        fixed_column("GB/s", points.iter().map(|p| p.gb_per_sec), 3),
    ];
    let mut lines = vec![header(&["transport", "axis", "x"], &columns)];
    for (i, p) in points.iter().enumerate() {
        let note = p
            .reason
            .as_deref()
            .map_or(String::new(), |r| format!("failed: {r}"));
        lines.push(line(
            [p.transport.clone(), p.axis.to_owned(), p.x.to_string()],
            &columns,
            i,
            note,
        ));
    }
    aligned(&lines, 2)
}

/// Broadcast throughput as an aligned table: one line per transport and number of
/// subscribers.
pub fn broadcast_table(points: &[BroadcastPoint]) -> String {
    let columns = [
        column(
            "msg/s",
            &points.iter().map(|p| p.msgs_per_sec).collect::<Vec<_>>(),
            &RATE,
        ),
        column(
            "delivered/s",
            &points
                .iter()
                .map(|p| p.delivered_per_sec)
                .collect::<Vec<_>>(),
            &RATE,
        ),
        fixed_column(
            "dropped",
            points.iter().map(|p| p.dropped.map(|n| n as f64)),
            0,
        ),
    ];
    let mut lines = vec![header(&["transport", "subscribers"], &columns)];
    for (i, p) in points.iter().enumerate() {
        let note = match &p.reason {
            Some(r) => format!("failed: {r}"),
            None => format!("{} broadcasts of {} bytes", p.messages, p.size),
        };
        lines.push(line(
            [p.transport.clone(), p.subscribers.to_string()],
            &columns,
            i,
            note,
        ));
    }
    aligned(&lines, 1)
}

/// The events table: throughput per contender and listener count, the cost of an event
/// nobody receives, and fan-out latency; each part an aligned table under a line saying
/// what it shows. Empty when there is nothing to show.
pub fn events_table(report: &EventsReport) -> String {
    if report.is_empty() {
        return String::new();
    }
    let points = &report.points;
    let rates = |get: fn(&EventsPoint) -> Option<f64>| points.iter().map(get).collect::<Vec<_>>();
    let columns = [
        column("writer cpu/event", &rates(|p| p.writer_ns), &DURATION),
        column("events/s per listener", &rates(|p| p.per_listener), &RATE),
        column("slowest", &rates(|p| p.slowest), &RATE),
        fixed_column(
            "received %",
            points.iter().map(|p| p.received.map(|r| 100.0 * r)),
            1,
        ),
    ];
    let mut lines = vec![header(&["transport", "listeners", "variant"], &columns)];
    for (i, p) in points.iter().enumerate() {
        let note = match (&p.reason, p.variant) {
            (Some(r), _) => format!("{}: {r}", p.status),
            (None, _) if i > 0 && points[i - 1].listeners == p.listeners => String::new(),
            (None, _) => format!("{}-byte events, back to back", p.size),
        };
        lines.push(line(
            [
                p.transport.clone(),
                p.listeners.to_string(),
                p.variant.to_owned(),
            ],
            &columns,
            i,
            note,
        ));
    }
    let mut out = format!(
        "one writer, listeners in processes of their own; baseline: a bare broadcast ring \
         (no levels, checksum or lock); iceoryx2: publish/subscribe, a queue per subscriber\n{}",
        aligned(&lines, 3)
    );
    if !report.costs.is_empty() {
        let costs = &report.costs;
        let columns = [column(
            "per call",
            &costs.iter().map(|c| c.ns_per_call).collect::<Vec<_>>(),
            &DURATION,
        )];
        let mut lines = vec![header(&["transport", "an event nobody receives"], &columns)];
        for (i, c) in costs.iter().enumerate() {
            let note = match &c.reason {
                Some(r) => format!("{}: {r}", c.status),
                None => format!("{} calls back to back", c.calls),
            };
            lines.push(line(
                [c.transport.clone(), c.case.to_owned()],
                &columns,
                i,
                note,
            ));
        }
        out.push('\n');
        out.push_str(&aligned(&lines, 2));
    }
    if !report.latency.is_empty() {
        let latency = &report.latency;
        let nanos = |get: fn(&FanOut) -> Option<u64>| {
            latency
                .iter()
                .map(|f| get(f).map(|n| n as f64))
                .collect::<Vec<_>>()
        };
        let columns = [
            column("p50", &nanos(|f| f.median_ns), &DURATION),
            column("p99", &nanos(|f| f.p99_ns), &DURATION),
            column("first p50", &nanos(|f| f.first_median_ns), &DURATION),
        ];
        let mut lines = vec![header(&["transport", "to the last listener"], &columns)];
        for (i, f) in latency.iter().enumerate() {
            let gap = Duration::from_nanos(f.gap_ns);
            let note = match &f.reason {
                Some(r) => format!("{}: {r}", f.status),
                None => format!(
                    "{} listeners, an event every {gap:?}; {} of {} reached all",
                    f.listeners, f.complete, f.events
                ),
            };
            lines.push(line(
                [f.transport.clone(), f.case.to_owned()],
                &columns,
                i,
                note,
            ));
        }
        out.push('\n');
        out.push_str(&aligned(&lines, 2));
    }
    out
}

/// The events table as CSV: its three parts one after the other, each with a header.
pub fn events_csv(report: &EventsReport) -> String {
    let mut out = String::from(
        "transport,listeners,variant,status,reason,size,events,writer_ns,per_listener,slowest,received\n",
    );
    for p in &report.points {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{}\n",
            p.transport,
            p.listeners,
            p.variant,
            p.status,
            quoted(p.reason.as_deref()),
            p.size,
            p.events,
            fixed(p.writer_ns, 2),
            fixed(p.per_listener, 0),
            fixed(p.slowest, 0),
            fixed(p.received, 4),
        ));
    }
    out.push_str("\ntransport,case,status,reason,calls,ns_per_call\n");
    for c in &report.costs {
        out.push_str(&format!(
            "{},{},{},{},{},{}\n",
            c.transport,
            quoted(Some(c.case)),
            c.status,
            quoted(c.reason.as_deref()),
            c.calls,
            fixed(c.ns_per_call, 2),
        ));
    }
    out.push_str(
        "\ntransport,case,listeners,gap_ns,status,reason,events,complete,median_ns,p99_ns\n",
    );
    for f in &report.latency {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{}\n",
            f.transport,
            f.case,
            f.listeners,
            f.gap_ns,
            f.status,
            quoted(f.reason.as_deref()),
            f.events,
            f.complete,
            cell(f.median_ns),
            cell(f.p99_ns),
            cell(f.first_median_ns),
        ));
    }
    out
}

/// Typed calls against raw requests as an aligned table: one line per transport and
/// codec, the typed call's figures, the raw request's, and their ratios.
pub fn contract_table(points: &[ContractPoint]) -> String {
    let nanos = |get: fn(&ContractPoint) -> Option<u64>| {
        points
            .iter()
            .map(|p| get(p).map(|n| n as f64))
            .collect::<Vec<_>>()
    };
    // The typed and raw figures of a kind in one unit, to be read side by side.
    let pair = |names: [&str; 2], typed: Vec<Option<f64>>, raw: Vec<Option<f64>>| {
        let both: Vec<Option<f64>> = typed.iter().chain(&raw).copied().collect();
        let (typed_header, mut cells) = column(names[0], &both, &DURATION);
        let raw_cells = cells.split_off(typed.len());
        let (raw_header, _) = column(names[1], &both, &DURATION);
        [(typed_header, cells), (raw_header, raw_cells)]
    };
    let [typed_p50, raw_p50] = pair(
        ["typed p50", "raw p50"],
        nanos(|p| p.typed_median_ns),
        nanos(|p| p.raw_median_ns),
    );
    let [typed_p99, raw_p99] = pair(
        ["p99", "p99"],
        nanos(|p| p.typed_p99_ns),
        nanos(|p| p.raw_p99_ns),
    );
    let [typed_cpu, raw_cpu] = pair(
        ["typed cpu", "raw cpu"],
        nanos(|p| p.typed_cpu_ns),
        nanos(|p| p.raw_cpu_ns),
    );
    let columns = [
        typed_p50,
        typed_p99,
        raw_p50,
        raw_p99,
        fixed_column("ratio", points.iter().map(|p| p.ratio), 2),
        typed_cpu,
        raw_cpu,
        fixed_column("cpu ratio", points.iter().map(|p| p.cpu_ratio), 2),
    ];
    let mut lines = vec![header(&["transport", "codec"], &columns)];
    for (i, p) in points.iter().enumerate() {
        let note = match &p.reason {
            Some(r) => format!("{}: {r}", p.status),
            None => format!(
                "add(2, 3): {}-byte call, {}-byte reply",
                p.call_bytes, p.reply_bytes
            ),
        };
        lines.push(line(
            [p.transport.clone(), p.codec.to_owned()],
            &columns,
            i,
            note,
        ));
    }
    aligned(&lines, 2)
}

/// Typed calls against raw requests as CSV.
pub fn contract_csv(points: &[ContractPoint]) -> String {
    let mut out = String::from(
        "transport,codec,status,reason,call_bytes,reply_bytes,calls,typed_median_ns,typed_p99_ns,typed_cpu_ns,raw_median_ns,raw_p99_ns,raw_cpu_ns,ratio,cpu_ratio\n",
    );
    for p in points {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            p.transport,
            p.codec,
            p.status,
            quoted(p.reason.as_deref()),
            p.call_bytes,
            p.reply_bytes,
            p.calls,
            cell(p.typed_median_ns),
            cell(p.typed_p99_ns),
            cell(p.typed_cpu_ns),
            cell(p.raw_median_ns),
            cell(p.raw_p99_ns),
            cell(p.raw_cpu_ns),
            fixed(p.ratio, 4),
            fixed(p.cpu_ratio, 4),
        ));
    }
    out
}

/// Broadcast throughput as CSV.
pub fn broadcast_csv(points: &[BroadcastPoint]) -> String {
    let mut out = String::from(
        "transport,subscribers,status,reason,size,messages,msgs_per_sec,delivered_per_sec,delivered,dropped\n",
    );
    for p in points {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{}\n",
            p.transport,
            p.subscribers,
            p.status,
            quoted(p.reason.as_deref()),
            p.size,
            p.messages,
            fixed(p.msgs_per_sec, 0),
            fixed(p.delivered_per_sec, 0),
            cell(p.delivered),
            cell(p.dropped),
        ));
    }
    out
}

/// A scaling run as CSV.
pub fn scaling_csv(points: &[ScalePoint]) -> String {
    let mut out = String::from(
        "transport,axis,x,status,reason,rtt_median_ns,rtt_p99_ns,round_trips_per_sec,gb_per_sec\n",
    );
    for p in points {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{}\n",
            p.transport,
            p.axis,
            p.x,
            p.status,
            quoted(p.reason.as_deref()),
            cell(p.rtt_median_ns),
            cell(p.rtt_p99_ns),
            fixed(p.round_trips_per_sec, 0),
            fixed(p.gb_per_sec, 4),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::SendCost;
    use crate::harness::{BroadcastPoint, ContractPoint, Row, ScalePoint};

    #[test]
    fn table_and_csv_carry_every_row() {
        let mut ok = Row::new("uds", "ipckit", 64);
        ok.rtt_median_ns = Some(123_456);
        ok.gb_per_sec = Some(1.5);
        let broken = Row::new("tcp", "baseline", 64).failed("failed", "it \"broke\"".into());
        let rows = [ok, broken];
        let table = table(&rows);
        assert!(table.contains("rtt p50 (µs)") && table.contains(" 123 "));
        assert!(table.contains("failed: it \"broke\""));
        let csv = csv(&rows);
        assert_eq!(csv.lines().count(), 3);
        assert!(csv.contains(",\"it \"\"broke\"\"\","));
    }

    #[test]
    fn the_push_row_and_broadcast_points_say_what_they_measured() {
        let mut push = Row::new("uds", "push", 64);
        push.rtt_median_ns = Some(20_000);
        push.ratio = Some(1.04);
        let table = table(&[push]);
        assert!(table.contains("ratio over the request's"), "{table}");
        let point = |subscribers, dropped| BroadcastPoint {
            transport: "uds".into(),
            subscribers,
            status: "ok",
            reason: None,
            size: 64,
            messages: 10_000,
            msgs_per_sec: Some(250_000.0),
            delivered_per_sec: Some(250_000.0 * subscribers as f64),
            delivered: Some(10_000 * subscribers as u64 - dropped),
            dropped: Some(dropped),
        };
        let table = broadcast_table(&[point(1, 0), point(16, 1234)]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].contains("msg/s (k)") && lines[0].contains("dropped"),
            "{table}"
        );
        assert!(
            lines[2].contains(" 1234 ") && lines[2].contains("4000"),
            "{table}"
        );
        assert_eq!(broadcast_csv(&[point(4, 7)]).lines().count(), 2);
    }

    #[test]
    fn the_contract_table_sets_typed_calls_beside_raw_requests() {
        let point = ContractPoint {
            transport: "uds".into(),
            codec: "json",
            status: "ok",
            reason: None,
            call_bytes: 59,
            reply_bytes: 8,
            calls: 5_000,
            typed_median_ns: Some(16_500),
            typed_p99_ns: Some(40_000),
            typed_cpu_ns: Some(9_000),
            raw_median_ns: Some(15_000),
            raw_p99_ns: Some(38_000),
            raw_cpu_ns: Some(8_000),
            ratio: Some(1.1),
            cpu_ratio: Some(1.25),
        };
        let broken = ContractPoint {
            status: "failed",
            reason: Some("typed: it broke".into()),
            typed_median_ns: None,
            ratio: None,
            ..point.clone()
        };
        // Typed and raw figures share a unit, even when only one column's largest
        // would call for a larger one.
        let slow = ContractPoint {
            typed_cpu_ns: Some(103_000),
            raw_cpu_ns: Some(98_000),
            ..point.clone()
        };
        let header = contract_table(&[slow]).lines().next().unwrap().to_owned();
        assert!(
            header.contains("typed cpu (µs)") && header.contains("raw cpu (µs)"),
            "{header}"
        );
        let table = contract_table(&[point.clone(), broken.clone()]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].contains("typed p50 (ns)") && lines[0].contains("raw p50 (ns)"),
            "{table}"
        );
        assert!(
            lines[1].contains(" 16500 ")
                && lines[1].contains(" 1.10 ")
                && lines[1].contains(" 1.25 "),
            "{table}"
        );
        assert!(lines[1].contains("59-byte call, 8-byte reply"), "{table}");
        assert!(lines[2].contains("failed: typed: it broke"), "{table}");
        let csv = contract_csv(&[point, broken]);
        assert_eq!(csv.lines().count(), 3);
        assert!(csv.contains("uds,json,ok,,59,8,5000,16500,"), "{csv}");
    }

    #[test]
    fn a_column_keeps_one_unit() {
        let ns = [Some(850.0), None, Some(12_345.0), Some(2_500_000.0)];
        let (header, cells) = column("rtt p50", &ns, &DURATION);
        assert_eq!(header, "rtt p50 (µs)");
        assert_eq!(cells, ["0.850", "-", "12.345", "2500.000"]);
        let (header, cells) = column("p99", &[Some(850.0), Some(90_000.0)], &DURATION);
        assert_eq!(header, "p99 (ns)");
        assert_eq!(cells, ["850", "90000"]);
        let rates = [Some(466_000.0), Some(3_980_000.0)];
        let (header, cells) = column("msg/s", &rates, &RATE);
        assert_eq!(header, "msg/s (k)");
        assert_eq!(cells, ["466", "3980"]);
    }

    #[test]
    fn the_scaling_table_keeps_one_unit_per_column() {
        let point = |x: u64, ns: u64, rate: f64| ScalePoint {
            transport: "uds".into(),
            axis: "size",
            x,
            status: "ok",
            reason: None,
            rtt_median_ns: Some(ns),
            rtt_p99_ns: Some(ns * 2),
            round_trips_per_sec: Some(rate),
            gb_per_sec: Some(0.5),
        };
        let table = scaling_table(&[
            point(16, 3_000, 2_500_000.0),
            point(1 << 24, 4_000_000_000, 25.0),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].contains("rtt p50 (ms)") && lines[0].contains("rtt/s (k)"),
            "{table}"
        );
        // Three significant digits of the smallest, at most three decimals.
        assert!(
            lines[1].contains(" 0.003 ") && lines[2].contains(" 4000.000 "),
            "{table}"
        );
        assert!(
            lines[1].contains(" 2500.000") && lines[2].contains(" 0.025"),
            "{table}"
        );
        assert!(!table.contains("µs") && !table.contains(" M"), "{table}");
    }

    #[test]
    fn the_events_table_shows_each_part_and_why_a_line_failed() {
        let point = |variant, writer_ns| EventsPoint {
            transport: "events".into(),
            variant,
            listeners: 16,
            status: "ok",
            reason: None,
            size: 64,
            events: 1_000_000,
            writer_ns: Some(writer_ns),
            per_listener: Some(2_500_000.0),
            slowest: Some(2_000_000.0),
            received: Some(0.25),
        };
        let mut broken = point("iceoryx2", 0.0);
        broken.status = "failed";
        broken.reason = Some("it broke".into());
        broken.writer_ns = None;
        let report = EventsReport {
            points: vec![point("ipckit", 40.0), point("baseline", 6.0), broken],
            costs: vec![SendCost {
                transport: "events".into(),
                case: "send, no listener",
                status: "ok",
                reason: None,
                calls: 1000,
                ns_per_call: Some(1.5),
            }],
            latency: vec![FanOut {
                transport: "events".into(),
                case: "paused",
                listeners: 16,
                gap_ns: 1_000_000,
                status: "ok",
                reason: None,
                events: 1000,
                complete: 998,
                median_ns: Some(45_000),
                p99_ns: Some(210_000),
                first_median_ns: Some(9_000),
            }],
        };
        let table = events_table(&report);
        for part in [
            "writer cpu/event (ns)",
            "events/s per listener (k)",
            "received %",
            "25.0",
            "failed: it broke",
            "send, no listener",
            "1.50",
            "998 of 1000 reached all",
            "an event every 1ms",
        ] {
            assert!(table.contains(part), "{part:?} missing from\n{table}");
        }
        assert_eq!(events_csv(&report).lines().count(), 4 + 1 + 2 + 1 + 2);
        assert!(events_table(&EventsReport::default()).is_empty());
    }
}
