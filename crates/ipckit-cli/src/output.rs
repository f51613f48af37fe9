//! What the commands print: messages, the transports table, the URL reference.

use std::fmt::Write as _;
use std::io::{self, Write};

use ipckit::endpoint::{UrlOption, examples};
use ipckit::{Capabilities, Message};

use crate::args::Format;
use crate::exit::{CliResult, stdout_error};

/// Writes `text` to standard output; a reader gone is no error of ours.
pub fn print(text: &str) -> CliResult {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

pub fn print_message(
    out: &mut impl Write,
    format: Format,
    payload: &[u8],
    message: Option<&Message>,
) -> CliResult {
    write_message(out, format, payload, message).map_err(stdout_error)
}

fn write_message(
    out: &mut impl Write,
    format: Format,
    payload: &[u8],
    message: Option<&Message>,
) -> io::Result<()> {
    match format {
        Format::Text => {
            // One message a line; one that ends its own line (a reply from `tr`, a line
            // from a file) is not given a blank one after it.
            out.write_all(payload)?;
            if !payload.ends_with(b"\n") {
                out.write_all(b"\n")?;
            }
        }
        Format::Hex => {
            writeln!(out, "{}", hex(payload))?;
        }
        Format::Json => {
            let mut value = serde_json::json!({ "len": payload.len() });
            match std::str::from_utf8(payload) {
                Ok(text) => value["text"] = text.into(),
                Err(_) => value["hex"] = hex(payload).into(),
            }
            if let Some(message) = message {
                value["peer"] = serde_json::to_value(message.peer()).expect("plain data");
                if let Some(level) = message.level() {
                    value["level"] = level.to_string().into();
                }
                if let Some(sequence) = message.sequence() {
                    value["sequence"] = sequence.into();
                }
                if let Some(deliveries) = message.deliveries() {
                    value["deliveries"] = deliveries.into();
                }
            }
            writeln!(out, "{value}")?;
        }
    }
    out.flush()
}

/// Says that a listener missed `count` events: a `{"lost":N}` line in JSON, where a
/// program reads it in order with the events; otherwise on standard error, which keeps
/// standard output to the payloads.
pub fn print_lost(out: &mut impl Write, format: Format, count: u64) -> CliResult {
    match format {
        Format::Json => writeln!(out, "{}", serde_json::json!({ "lost": count }))
            .and_then(|()| out.flush())
            .map_err(stdout_error),
        Format::Text | Format::Hex => {
            eprintln!("ipckit: {count} event(s) lost: this listener fell behind the ring");
            Ok(())
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A column of `ipckit transports`: its header and how to fill it.
type Column = (&'static str, fn(&Capabilities) -> String);

pub fn transports(json: bool) -> String {
    let dir = std::env::temp_dir();
    let rows: Vec<_> = ipckit::transport::all()
        .iter()
        .map(|t| (t, t.capabilities(&t.scratch_endpoint(&dir, "example"))))
        .collect();
    if json {
        let list: Vec<_> = rows
            .iter()
            .map(|(t, caps)| {
                serde_json::json!({
                    "scheme": t.scheme(),
                    "summary": t.summary(),
                    "capabilities": caps,
                })
            })
            .collect();
        return format!("{}\n", serde_json::Value::Array(list));
    }
    fn yes(b: bool) -> String {
        if b { "yes" } else { "-" }.to_owned()
    }
    let columns: [Column; 12] = [
        ("duplex", |c| yes(c.duplex)),
        ("push", |c| yes(c.push)),
        ("reliable", |c| yes(c.reliable)),
        ("ordered", |c| yes(c.ordered)),
        ("durable", |c| yes(c.durable)),
        ("queue", |c| {
            // A durable queue with no count of its own is bounded by its filesystem.
            match (c.queue_limit, c.durable) {
                (Some(n), _) => n.to_string(),
                (None, true) => "disk".to_owned(),
                (None, false) => "-".to_owned(),
            }
        }),
        ("broadcast", |c| yes(c.broadcast)),
        ("competing", |c| yes(c.competing_receivers)),
        ("connection", |c| yes(c.connection)),
        ("max message", |c| human_size(c.max_message)),
        ("creds", |c| yes(c.peer_credentials)),
        ("zero-copy", |c| yes(c.zero_copy)),
    ];
    let mut text = format!("{:<9}", "transport");
    for (name, _) in &columns {
        let _ = write!(text, " {name}");
    }
    text.push_str(" summary\n");
    for (t, caps) in rows {
        let _ = write!(text, "{:<9}", t.scheme());
        for (name, value) in &columns {
            let _ = write!(text, " {:<width$}", value(&caps), width = name.len());
        }
        let _ = writeln!(text, " {}", t.summary());
    }
    text.push_str("\nEvery URL form and option: ipckit help urls\n");
    text
}

fn human_size(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// `ipckit help urls`: every form and option of the transports this build has, from the
/// parser's own lists, so that it cannot say what the parser does not take.
pub fn urls() -> String {
    let schemes: Vec<&str> = ipckit::transport::all()
        .iter()
        .map(|t| t.scheme())
        .collect();
    let mut text = String::from(
        "An endpoint is a URL: SCHEME://ADDRESS[?KEY=VALUE[&KEY=VALUE...]][#OBJECT]\n\
         Bytes outside printable ASCII, and %, ? and #, are written as %XX in an address.\n\
         A URL may end in #OBJECT to name an object that a contract server hosts there:\n\
         `ipckit call 'uds:///run/app.sock#calculator' add '{\"a\":2,\"b\":3}'`; `ipckit\n\
         introspect URL` lists the objects served.\n\n\
         Transports in this build, with a URL for each form of address:\n",
    );
    for scheme in &schemes {
        let _ = writeln!(text, "  {scheme:<9} {}", examples(scheme).join("  "));
    }
    text.push_str("\nOptions, with their defaults and the transports that take them:\n");
    for option in UrlOption::all() {
        let takers: Vec<&str> = schemes
            .iter()
            .copied()
            .filter(|s| option.applies_to(s))
            .collect();
        if takers.is_empty() {
            continue;
        }
        let setting = match option.default() {
            Some(default) => format!("{}={default}", option.key()),
            None => format!("{}= (none)", option.key()),
        };
        let takers = if takers.len() == schemes.len() {
            "every transport".to_owned()
        } else {
            takers.join(", ")
        };
        let _ = writeln!(text, "  {setting:<28} {takers}\n      {}", option.about());
    }
    text.push_str(
        "\nA transport's limits and promises: ipckit transports. \
         What each option does in full: the docs of ipckit::Endpoint.\n",
    );
    text
}
