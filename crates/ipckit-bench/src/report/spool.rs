//! The spool table as text and CSV.

use std::time::Duration;

use super::{DURATION, RATE, aligned, cell, column, fixed, fixed_column, header, line, quoted};
use crate::spool::SpoolReport;

/// The spool table: sends per second through ipckit and by hand, with and without
/// fsync, then the time from a rename into `new/` to the receiver's handler; each part
/// an aligned table under a line saying what it shows. Empty when spool was not chosen.
pub fn spool_table(report: &SpoolReport) -> String {
    if report.is_empty() {
        return String::new();
    }
    let send = &report.send;
    let rates =
        |get: fn(&crate::spool::SendPoint) -> Option<f64>| send.iter().map(get).collect::<Vec<_>>();
    let columns = [
        column("ipckit msg/s", &rates(|p| p.ipckit_msgs_per_sec), &RATE),
        column("by hand msg/s", &rates(|p| p.baseline_msgs_per_sec), &RATE),
        fixed_column("ratio", send.iter().map(|p| p.ratio), 2),
    ];
    let mut lines = vec![header(&["spool send", "sync"], &columns)];
    for (i, p) in send.iter().enumerate() {
        let note = match &p.reason {
            Some(r) => format!("{}: {r}", p.status),
            None => format!(
                "{} and {} messages, {} rounds: {:.2}-{:.2}; the totals' ratio {:.2}",
                p.ipckit_messages,
                p.baseline_messages,
                p.blocks,
                p.lowest_ratio.unwrap_or(f64::NAN),
                p.highest_ratio.unwrap_or(f64::NAN),
                p.total_ratio.unwrap_or(f64::NAN)
            ),
        };
        lines.push(line(
            [size_name(p.size), p.sync.to_string()],
            &columns,
            i,
            note,
        ));
    }
    let mut out = format!(
        "spool: one sender, no receiver, on {}; by hand: open O_EXCL, write, fdatasync, \
         rename into new/, fsync new/ (sync=false: open, write, rename); the two take turns \
         in rounds of a block each; ratio: ipckit's rate over the hand-written one's, the \
         median of the rounds\n{}",
        report.filesystem,
        aligned(&lines, 2)
    );
    if !report.latency.is_empty() {
        let latency = &report.latency;
        let nanos = |get: fn(&crate::spool::ReceiveLatency) -> Option<u64>| {
            latency
                .iter()
                .map(|l| get(l).map(|n| n as f64))
                .collect::<Vec<_>>()
        };
        let columns = [
            column("p50", &nanos(|l| l.median_ns), &DURATION),
            column("p99", &nanos(|l| l.p99_ns), &DURATION),
        ];
        let mut lines = vec![header(&["spool receive", "rename to handler"], &columns)];
        for (i, l) in latency.iter().enumerate() {
            let note = match (&l.reason, l.gap_ns) {
                (Some(r), _) => format!("{}: {r}", l.status),
                (None, 0) => format!(
                    "{} 64-byte messages back to back: each waits behind those before it",
                    l.messages
                ),
                (None, gap) => format!(
                    "{} 64-byte messages, one every {:?}: the receiver sleeps in inotify",
                    l.messages,
                    Duration::from_nanos(gap)
                ),
            };
            lines.push(line(
                ["spool".to_owned(), l.case.to_owned()],
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

/// A message size as the table names it: `64 B`, `1 MiB`.
fn size_name(size: usize) -> String {
    match size {
        s if s >= 1 << 20 && s % (1 << 20) == 0 => format!("{} MiB", s >> 20),
        s if s >= 1 << 10 && s % (1 << 10) == 0 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

/// The spool table as CSV: its two parts one after the other, each with a header.
pub fn spool_csv(report: &SpoolReport) -> String {
    let mut out = String::from(
        "filesystem,size,sync,status,reason,blocks,ipckit_messages,baseline_messages,ipckit_msgs_per_sec,baseline_msgs_per_sec,ratio,total_ratio,lowest_ratio,highest_ratio\n",
    );
    for p in &report.send {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            quoted(Some(&report.filesystem)),
            p.size,
            p.sync,
            p.status,
            quoted(p.reason.as_deref()),
            p.blocks,
            p.ipckit_messages,
            p.baseline_messages,
            fixed(p.ipckit_msgs_per_sec, 1),
            fixed(p.baseline_msgs_per_sec, 1),
            fixed(p.ratio, 4),
            fixed(p.total_ratio, 4),
            fixed(p.lowest_ratio, 4),
            fixed(p.highest_ratio, 4),
        ));
    }
    out.push_str("\ncase,gap_ns,status,reason,messages,median_ns,p99_ns\n");
    for l in &report.latency {
        out.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            l.case,
            l.gap_ns,
            l.status,
            quoted(l.reason.as_deref()),
            l.messages,
            cell(l.median_ns),
            cell(l.p99_ns),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{ReceiveLatency, SendPoint};

    fn report() -> SpoolReport {
        SpoolReport {
            filesystem: "ext4 (/dev/vda on /)".into(),
            send: vec![SendPoint {
                size: 1 << 20,
                sync: true,
                status: "ok",
                reason: None,
                blocks: 4,
                ipckit_messages: 120,
                baseline_messages: 125,
                ipckit_msgs_per_sec: Some(30.5),
                baseline_msgs_per_sec: Some(31.0),
                ratio: Some(0.99),
                total_ratio: Some(30.5 / 31.0),
                lowest_ratio: Some(0.9),
                highest_ratio: Some(1.07),
            }],
            latency: vec![ReceiveLatency {
                case: "paused",
                gap_ns: 1_000_000,
                status: "ok",
                reason: None,
                messages: 1000,
                median_ns: Some(420_000),
                p99_ns: Some(955_000),
            }],
        }
    }

    #[test]
    fn the_table_names_the_filesystem_and_shows_each_figure_in_its_unit() {
        let table = spool_table(&report());
        assert!(table.contains("on ext4 (/dev/vda on /)"), "{table}");
        let send = table.lines().find(|l| l.starts_with("1 MiB")).unwrap();
        for figure in [
            "30.5",
            "31.0",
            " 0.99 ",
            "120 and 125 messages, 4 rounds: 0.90-1.07; the totals' ratio 0.98",
        ] {
            assert!(send.contains(figure), "{figure} in {send}");
        }
        assert!(table.contains("p50 (µs)"), "{table}");
        let paused = table.lines().find(|l| l.contains("paused")).unwrap();
        assert!(
            paused.contains(" 420 ") && paused.contains(" 955 "),
            "{paused}"
        );
        assert!(spool_table(&SpoolReport::default()).is_empty());
    }

    #[test]
    fn the_csv_has_a_line_per_row_under_each_header() {
        let csv = spool_csv(&report());
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[1],
            "\"ext4 (/dev/vda on /)\",1048576,true,ok,,4,120,125,30.5,31.0,0.9900,0.9839,0.9000,1.0700"
        );
        assert_eq!(lines[4], "paused,1000000,ok,,1000,420000,955000");
    }
}
