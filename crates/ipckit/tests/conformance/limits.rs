//! What a client can hold of a stream server: idle connections cost it little.

use crate::api;
use crate::bad_input::raw_greeted;
use crate::peer::Role;
use crate::support::{Check, Child, Ctx, Outcome, byte_stream, checks, ensure};

pub const CHECKS: &[Check] = checks![in limits:
    byte_stream => idle_connections_cost_little,
];

/// What an idle connection may cost its server, in resident memory.
const IDLE_CONNECTION_BYTES: u64 = 8 * 1024;

/// Connections that said hello and send nothing hold at most a few KiB of the server's
/// memory each: no buffer waits for them.
pub fn idle_connections_cost_little(ctx: &Ctx) -> Outcome {
    const IDLE: u64 = 500;
    let mut server = Child::spawn(Role::Print, ctx.endpoint("idle"));
    let url = server.ready()?;
    let bystander = api::connect(&url)?;
    // A message through the server before each reading: it has done all it was given.
    let settled = |server: &mut Child, n: u32| -> Result<u64, libtest_mimic::Failed> {
        bystander.send(format!("settled {n}").as_bytes())?;
        ensure!(
            server.line()? == format!("msg settled {n}"),
            "the bystander's message did not come"
        );
        resident_bytes(server.pid())
    };
    let before = settled(&mut server, 0)?;
    let idle = (0..IDLE)
        .map(|_| raw_greeted(&url))
        .collect::<Result<Vec<_>, _>>()?;
    let after = settled(&mut server, 1)?;
    let each = after.saturating_sub(before) / IDLE;
    ensure!(
        each <= IDLE_CONNECTION_BYTES,
        "{IDLE} idle connections cost the server {each} bytes each (RSS {before} -> {after})"
    );
    drop(idle);
    Ok(())
}

/// The resident memory of process `pid`.
fn resident_bytes(pid: u32) -> Result<u64, libtest_mimic::Failed> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .ok_or("no VmRSS in /proc/PID/status")?;
    Ok(kib * 1024)
}
