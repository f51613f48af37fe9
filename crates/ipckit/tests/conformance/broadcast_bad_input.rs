//! Bad input to a broadcast endpoint: its shared segment scribbled on while writers and
//! listeners run, and names and options it cannot take. For every transport whose
//! capabilities say `broadcast`.
//!
//! The peers here ([`Role::WriteThroughDamage`], [`Role::ListenThroughDamage`]) take an
//! error as an answer: they print `error MESSAGE` and exit cleanly. What must not happen
//! is a panic, a hang, a payload delivered whose check fails (printed `torn LEN`), or a
//! listener that goes on without an error and yet never again receives what is sent:
//! once the damage stops, a fresh writer sends a marker that every listener must receive
//! (or fail with a clear error).

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ipckit::Event;

use crate::api;
use crate::broadcast::broadcast;
use crate::peer::{Role, say};
use crate::support::{
    Check, Child, Ctx, Outcome, PATIENCE, checks, ensure, numbered, parse_numbered,
};

pub const CHECKS: &[Check] = checks![in broadcast_bad_input:
    broadcast => a_scribbled_segment_delivers_nothing_torn,
    broadcast => names_it_cannot_take_are_refused,
    broadcast => a_ring_size_not_a_power_of_two_is_refused,
];

/// How long a damaged listener waits for an event before it says the stream is quiet
/// (and waits again): a wait that returns, not a hang.
const QUIET: Duration = Duration::from_secs(2);

/// The writer number and event number of the marker a fresh writer sends once the
/// damage stops.
const MARKER: (u32, u32) = (0, u32::MAX);

/// The bytes of the header a party checks once when it opens the segment (its
/// configuration, and the state word that says the segment is ready): damage there makes
/// a new party refuse the segment with a clear error, which `scribbled` checks apart,
/// since the fresh writer must open it. (At 32 the state word was left in reach, and a
/// seed that scribbled it failed the check: `IPCKIT_SCRIBBLE_SEED=0x8243d7b6029b520b`.)
const CONFIGURATION: u64 = 36;

/// The file that holds `url`'s segment: the one in /dev/shm named after the endpoint.
fn segment_of(url: &str) -> Option<PathBuf> {
    let name = url.split_once("://")?.1.split(['?', '#']).next()?;
    std::fs::read_dir("/dev/shm")
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(&format!(".{name}")))
        })
}

/// Reruns a failure's damage: the seed its message gives.
const SEED_ENV: &str = "IPCKIT_SCRIBBLE_SEED";

/// Damage at random places, different each run; a failure says its seed, which
/// [`SEED_ENV`] takes to do the same again.
fn a_scribbled_segment_delivers_nothing_torn(ctx: &Ctx) -> Outcome {
    let seed = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or_else(|| fastrand::u64(..));
    scribbled(ctx, seed).map_err(|failed| {
        format!(
            "{} ({SEED_ENV}={seed:#x} does it again)",
            failed.message().unwrap_or("failed")
        )
        .into()
    })
}

fn scribbled(ctx: &Ctx, seed: u64) -> Outcome {
    let url = ctx.endpoint_with("scribbled", "ring", "65536").to_string();
    let mut listeners: Vec<Child> = (0..2)
        .map(|_| Child::spawn(Role::ListenThroughDamage, &url))
        .collect();
    for listener in &mut listeners {
        listener.ready()?;
    }
    let mut writers: Vec<Child> = (1..=2)
        .map(|w| Child::spawn(Role::WriteThroughDamage { writer: w }, &url))
        .collect();
    for writer in &mut writers {
        let line = writer.line()?;
        ensure!(
            line == "writing",
            "a writer said {line:?}:\n{}",
            writer.stderr()
        );
    }
    // Heard before the damage: the parties work.
    for listener in &mut listeners {
        let line = listener.line()?;
        ensure!(
            line.starts_with("ev ") || line.starts_with("lost "),
            "a listener said {line:?}:\n{}",
            listener.stderr()
        );
    }
    let path = segment_of(&url).ok_or("no segment in /dev/shm is named after the endpoint")?;
    let segment = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)?;
    let size = segment.metadata()?.len();
    ensure!(size > 0, "the segment {} is empty", path.display());
    // Header and tables (the first 64 KiB) and the ring alike, a few bytes at a time.
    let mut rng = fastrand::Rng::with_seed(seed);
    for round in 0..400u32 {
        let at = if round % 2 == 0 {
            rng.u64(CONFIGURATION..size.min(65536))
        } else {
            rng.u64(CONFIGURATION..size)
        };
        let bytes: Vec<u8> = (0..rng.usize(1..=16)).map(|_| rng.u8(..)).collect();
        segment.write_at(&bytes, at.min(size - bytes.len() as u64))?;
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(200));
    // Writers stop when told.
    for writer in writers {
        writer
            .finish()
            .map_err(|e| format!("a writer of a damaged segment: {e:?}"))?;
    }
    // The damage over, a fresh writer's marker reaches every listener that has not
    // failed with an error.
    let marker = api::connect(url.as_str())
        .map_err(|e| format!("a fresh writer could not open the damaged segment: {e}"))?;
    marker.send_at(ipckit::Level::LogAlways, &numbered(MARKER.0, MARKER.1, 12))?;
    for mut listener in listeners {
        let deadline = Instant::now() + PATIENCE;
        let mut heard = 0u64;
        loop {
            ensure!(
                Instant::now() < deadline,
                "a listener of a damaged segment never received the marker a fresh writer sent after the damage, in {PATIENCE:?}, having heard {heard} items"
            );
            let line = listener.line()?;
            let word = line.split(' ').next().unwrap_or_default();
            match word {
                "ev" | "lost" => heard += 1,
                // Its wait returned with nothing: it does not hang.
                "quiet" => {}
                "marker" => break,
                "error" => {
                    ensure!(
                        line.contains(&url) || line.contains("events"),
                        "a listener of a damaged segment failed without saying where: {line}"
                    );
                    break;
                }
                _ => {
                    return Err(format!(
                        "a listener of a damaged segment said {line:?} after {heard} items; its stderr:\n{}",
                        listener.stderr()
                    )
                    .into());
                }
            }
        }
        let stderr = listener.finish()?;
        ensure!(
            !stderr.contains("panicked"),
            "a listener panicked:\n{stderr}"
        );
    }
    // The configuration scribbled on: a new party refuses the segment, saying which.
    segment.write_at(b"scribble", 0)?;
    drop(segment);
    match api::connect(url.as_str()) {
        Ok(_) => return Err("a segment whose header was scribbled on was opened".into()),
        Err(e) => ensure!(
            e.to_string().contains(&path.display().to_string()),
            "a scribbled header was refused without naming the segment: {e}"
        ),
    }
    drop(marker);
    // Every party gone, the segment went with the last, damaged or not; and the name
    // opens again afresh.
    ensure!(
        segment_of(&url).is_none(),
        "the damaged segment is left behind once every party is gone"
    );
    let name = url
        .split_once("://")
        .map_or("", |(_, rest)| rest.split('?').next().unwrap_or(""));
    if let Err(e) = api::connect(url.as_str()) {
        return Err(format!("the name {name} does not open again after the damage: {e}").into());
    }
    Ok(())
}

fn names_it_cannot_take_are_refused(ctx: &Ctx) -> Outcome {
    let scheme = ctx.transport.scheme();
    let long = "n".repeat(300);
    for bad in ["a%2Fb", "..", "a/../b", long.as_str()] {
        let url = format!("{scheme}://{bad}");
        let refused = match url.parse::<ipckit::Endpoint>() {
            Err(e) => e.to_string(),
            Ok(endpoint) => match api::listen(endpoint.clone()) {
                Err(e) => e.to_string(),
                Ok(_) => return Err(format!("{url} was taken as a name").into()),
            },
        };
        ensure!(
            !refused.is_empty() && (refused.contains("name") || refused.contains(bad)),
            "{url} was refused without saying why: {refused}"
        );
        if let Ok(endpoint) = url.parse::<ipckit::Endpoint>() {
            ensure!(
                api::connect(endpoint).is_err(),
                "a writer took {url} as a name"
            );
        }
    }
    Ok(())
}

fn a_ring_size_not_a_power_of_two_is_refused(ctx: &Ctx) -> Outcome {
    for ring in ["5000", "0", "3", "abc"] {
        let mut endpoint = ctx.endpoint("odd-ring");
        let refused = match endpoint.set_option("ring", ring) {
            Err(e) => e.to_string(),
            Ok(()) => match api::listen(endpoint.clone()) {
                Err(e) => e.to_string(),
                Ok(_) => return Err(format!("ring={ring} was taken").into()),
            },
        };
        ensure!(
            refused.contains("ring"),
            "ring={ring} was refused without naming the option: {refused}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The peers
// ---------------------------------------------------------------------------------------

pub fn play(role: Role, url: &str) -> Result<(), Box<dyn std::error::Error>> {
    match role {
        Role::WriteThroughDamage { writer } => write_through_damage(url, writer),
        Role::ListenThroughDamage => listen_through_damage(url),
        other => Err(format!("{other:?} is no broadcast_bad_input role").into()),
    }
}

/// Writes numbered events, a little apart, until stdin closes; an error ends it.
fn write_through_damage(url: &str, number: u32) -> Result<(), Box<dyn std::error::Error>> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        flag.store(true, std::sync::atomic::Ordering::Release);
    });
    let client = match api::connect(url) {
        Ok(client) => client,
        Err(e) => {
            say(&format!("error {e}"));
            return Ok(());
        }
    };
    say("writing");
    let max = client.max_message().min(2000);
    let mut n = 0u32;
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        if let Err(e) = client.send(&numbered(number, n, 12 + (n as usize * 37) % (max - 12))) {
            say(&format!("error {e}"));
            return Ok(());
        }
        n += 1;
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

/// Prints what it receives (`ev W N`, `lost C`, `torn LEN`, and `quiet` for each
/// [`QUIET`] without an event) until the [`MARKER`] (`marker`) or an error (`error
/// MESSAGE`); gives up after [`PATIENCE`] with neither.
fn listen_through_damage(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut server = api::listen(url)?;
    say(&format!("ready {}", server.endpoint()));
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        match server.recv_event_timeout(QUIET) {
            Err(e) => {
                say(&format!("error {e}"));
                return Ok(());
            }
            Ok(None) => say("quiet"),
            Ok(Some(Event::Lost { count })) => say(&format!("lost {count}")),
            Ok(Some(Event::Message(message))) => match parse_numbered(message.payload()) {
                Ok(MARKER) => {
                    say("marker");
                    return Ok(());
                }
                Ok((writer, n)) => say(&format!("ev {writer} {n}")),
                Err(_) => say(&format!("torn {}", message.payload().len())),
            },
            Ok(Some(_)) => {}
        }
    }
    Err(format!("neither the marker nor an error came in {PATIENCE:?}").into())
}
