//! Checks of a shared-memory segment, which a peer can scribble on. Offsets follow the
//! layout in docs/PROTOCOL.md, for rings of 64 KiB (`?ring=65536`).

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use ipckit::{Endpoint, Error};

use crate::api;
use crate::bad_input;
use crate::peer::Role;
use crate::support::{
    Check, Child, Ctx, Outcome, PATIENCE, checks, ensure, heard_by_a_printer, path_of, recv,
    zero_copy,
};

pub const CHECKS: &[Check] = checks![in shared_memory:
    zero_copy => loan_written_and_read_in_place,
    zero_copy => garbage_positions,
    zero_copy => garbage_lengths,
    zero_copy => record_over_limit,
    zero_copy => garbage_in_reply_ring,
    zero_copy => killed_client_slot_reclaimed,
    zero_copy => client_waits_for_a_free_slot,
    zero_copy => takes_1024_clients_mapping_only_theirs,
    zero_copy => dead_server_segment_removed,
    zero_copy => truncated_segment_fails_both_sides,
    zero_copy => send_fails_once_the_server_is_gone,
];

const RING: usize = 65536;
const RING_OPTION: (&str, &str) = ("ring", "65536");

/// Where slot `i` begins: after the 64 KiB header, slots of a 64 KiB control page and
/// two rings.
pub fn slot(i: u64) -> u64 {
    65536 + i * (65536 + 2 * RING as u64)
}
const REQUEST_TAIL: u64 = 128;
/// Where the `Role::CorruptReplies` peer scribbles.
pub const REPLY_TAIL: u64 = 512;
const REQUEST_DATA: u64 = 65536;

pub fn segment(url: &Endpoint) -> std::io::Result<std::fs::File> {
    let path = path_of(url).expect("a segment path");
    std::fs::OpenOptions::new().write(true).open(path)
}

/// A record header as the ring lays it out: len, kind, flags, id.
fn record_header(len: u32, kind: u8) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4] = kind;
    h
}

pub fn loan_written_and_read_in_place(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint("loan"))?;
    // Loans are the blocking client's; the server, read in place, is either API's.
    let client = ipckit::connect(server.endpoint())?;
    let mut loan = client.loan(1000)?;
    ensure!(loan.is_in_place(), "a small loan on shm is not in the ring");
    loan.fill(0xAB);
    loan.truncate(600);
    loan.send()?;
    let message = recv(&mut server)?;
    ensure!(
        message.is_in_place() && message.payload() == [0xABu8; 600].as_slice(),
        "the loaned message arrived as {message:?}"
    );
    drop(message);
    // Lent to a handler (`recv_with`), it is read in the segment too.
    let mut loan = client.loan(100)?;
    loan.fill(0x5A);
    loan.send()?;
    let mut seen = None;
    let came = server.answer_lent(PATIENCE, |payload, _| {
        let intact = payload == [0x5Au8; 100].as_slice();
        seen = Some((intact, mapping_of(payload.as_ptr())));
        None
    })?;
    match seen {
        Some((true, Some(mapping))) if came && mapping.starts_with("/dev/shm/ipckit.") => {}
        other => return Err(format!("a lent message was read as {other:?}").into()),
    }
    // Larger than a record can be: still works, as pieces, copied, while the server
    // takes them.
    let big = client.max_message().min(4 << 20);
    let sender = std::thread::spawn(move || -> Result<ipckit::Client, Error> {
        {
            let mut loan = client.loan(big)?;
            loan.fill(0xCD);
            loan.send()?;
        }
        Ok(client)
    });
    let message = recv(&mut server)?;
    let client = sender.join().expect("the sending thread")?;
    ensure!(
        message.payload().len() == big && message.payload().iter().all(|&b| b == 0xCD),
        "a large loaned message arrived damaged"
    );
    match client.loan(client.max_message() + 1) {
        Err(Error::MessageTooLarge { .. }) => {}
        other => return Err(format!("an oversized loan gave {other:?}").into()),
    }
    // Replies read through `request_with`: where they lie in the segment, or, too large
    // for one record, from a copy.
    let mut client = client;
    for size in [600, 3 << 20] {
        let requester = std::thread::spawn(move || -> Result<_, Error> {
            let mut loan = client.loan(4)?;
            loan.copy_from_slice(b"echo");
            let read = loan.request_with(PATIENCE, |reply| {
                let intact = reply.len() == size && reply.iter().all(|&b| b == 0xEF);
                (intact, mapping_of(reply.as_ptr()))
            })?;
            Ok((client, read))
        });
        let mut request = recv(&mut server)?;
        request.reply(&vec![0xEF; size])?;
        let (returned, (intact, mapping)) = requester.join().expect("the requesting thread")?;
        client = returned;
        ensure!(intact, "a reply of {size} bytes was read damaged");
        let in_segment = mapping
            .as_deref()
            .is_some_and(|m| m.starts_with("/dev/shm/ipckit."));
        ensure!(
            in_segment || size > 1 << 20,
            "a reply of {size} bytes was read from {mapping:?}, not the shared segment"
        );
    }
    Ok(())
}

/// The file mapped at `address` in this process, from /proc/self/maps.
fn mapping_of(address: *const u8) -> Option<String> {
    let address = address as usize;
    std::fs::read_to_string("/proc/self/maps")
        .ok()?
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let (start, end) = (
                usize::from_str_radix(start, 16).ok()?,
                usize::from_str_radix(end, 16).ok()?,
            );
            ((start..end).contains(&address)).then(|| fields.nth(4).unwrap_or("").to_owned())
        })
}

/// The attacker is a client in slot 1 (the bystander of `survives` took slot 0).
fn scribble(url: &Endpoint, writes: &[(u64, &[u8])]) -> Outcome {
    let attacker = api::connect(url)?;
    let file = segment(url)?;
    for (offset, bytes) in writes {
        file.write_all_at(bytes, slot(1) + offset)?;
    }
    // Keep the attacker connected until the server has had a look.
    std::thread::sleep(Duration::from_millis(500));
    drop(attacker);
    Ok(())
}

pub fn garbage_positions(ctx: &Ctx) -> Outcome {
    bad_input::survives(ctx, &[RING_OPTION], "is impossible", |url| {
        scribble(
            url,
            &[(REQUEST_TAIL, &0xdead_beef_dead_beefu64.to_le_bytes())],
        )
    })
}

pub fn garbage_lengths(ctx: &Ctx) -> Outcome {
    bad_input::survives(ctx, &[RING_OPTION], "overruns the ring", |url| {
        scribble(
            url,
            &[
                (REQUEST_DATA, &record_header(0xFFFF_0000, 1)),
                (REQUEST_TAIL, &32u64.to_le_bytes()),
            ],
        )
    })
}

pub fn record_over_limit(ctx: &Ctx) -> Outcome {
    let options = [RING_OPTION, ("max_message", "1000")];
    bad_input::survives(ctx, &options, "over the limit of 1000", |url| {
        scribble(
            url,
            &[
                (REQUEST_DATA, &record_header(2000, 1)),
                (REQUEST_TAIL, &2016u64.to_le_bytes()),
            ],
        )
    })
}

/// The server scribbles on the client's reply ring: the request fails with a protocol
/// error naming the violation, and does not hang.
pub fn garbage_in_reply_ring(ctx: &Ctx) -> Outcome {
    let mut endpoint = ctx.endpoint("liar");
    endpoint.set_option(RING_OPTION.0, RING_OPTION.1)?;
    let mut server = Child::spawn(Role::CorruptReplies, endpoint);
    let url = server.ready()?;
    let client = api::connect(&url)?;
    match client.request(b"tell me", PATIENCE) {
        Err(Error::Protocol { reason, .. }) if reason.contains("broke the shared ring") => {}
        other => return Err(format!("a garbage reply ring gave {other:?}").into()),
    }
    server.kill();
    Ok(())
}

/// A client killed with SIGKILL is noticed within a second and its slot reused.
pub fn killed_client_slot_reclaimed(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint_with("one-slot", "clients", "1"))?;
    let url = server.endpoint().to_string();
    let mut holder = Child::spawn(Role::ConnectAndWait, &url);
    ensure!(
        holder.line()? == "connected",
        "the first client did not connect"
    );
    // Asked not to wait for a slot to free.
    let impatient = format!("{url}&send_timeout_ms=0");
    match api::connect(impatient.as_str()) {
        Err(Error::Full { .. }) => {}
        other => return Err(format!("a second client of a one-slot server: {other:?}").into()),
    }
    holder.kill();
    let killed = Instant::now();
    loop {
        server.recv_timeout(Duration::from_millis(20))?;
        match api::connect(impatient.as_str()) {
            Ok(_) => return Ok(()),
            Err(Error::Full { .. }) if killed.elapsed() < Duration::from_secs(1) => {}
            other => {
                return Err(format!(
                    "{:?} after the client was killed, connecting still gives {other:?}",
                    killed.elapsed()
                )
                .into());
            }
        }
    }
}

/// A client that finds every slot taken waits for one, up to its send timeout: the slot
/// frees when another client goes.
pub fn client_waits_for_a_free_slot(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint_with("one-slot-wait", "clients", "1"))?;
    let url = server.endpoint().to_string();
    let mut holder = Child::spawn(Role::ConnectAndWait, &url);
    let connected = holder.line_serving(&mut server)?;
    ensure!(
        connected == "connected",
        "the first client said {connected}"
    );
    let waiter = std::thread::spawn({
        let patient = format!("{url}&send_timeout_ms={}", PATIENCE.as_millis());
        move || api::connect(patient.as_str())?.send(b"waited")
    });
    // Whether the waiter is waiting already or comes later, it must get the slot.
    std::thread::sleep(Duration::from_millis(50));
    holder.kill();
    let killed = Instant::now();
    let message = loop {
        if let Some(message) = server.recv_timeout(Duration::from_millis(20))? {
            break message;
        }
        ensure!(
            killed.elapsed() < PATIENCE,
            "no message from the waiting client within {PATIENCE:?} of the other's death"
        );
    };
    ensure!(
        message.payload() == b"waited",
        "the server got {message:?} from the waiting client"
    );
    waiter.join().map_err(|_| "the waiting client panicked")??;
    Ok(())
}

/// A server takes 1024 clients unless told otherwise, and maps (and pays memory for) only
/// the slots its clients hold: here, in 1 GiB of address space, where all 1024 slots of
/// 1 MiB rings would not fit.
pub fn takes_1024_clients_mapping_only_theirs(ctx: &Ctx) -> Outcome {
    let mut endpoint = ctx.endpoint("default-slots");
    endpoint.set_option("ring", "1048576")?;
    let mut server = Child::spawn(Role::Print, &endpoint);
    let url = server.ready()?;
    let mut slots = [0u8; 4];
    std::fs::File::open(path_of(&url).expect("a segment path"))?.read_exact_at(&mut slots, 20)?;
    let slots = u32::from_le_bytes(slots);
    ensure!(
        slots == 1024,
        "a server with no ?clients= takes {slots} clients"
    );
    api::connect(&url)?.send(b"one of 1024")?;
    let heard = server.line()?;
    ensure!(heard == "msg one of 1024", "the server said {heard}");
    server.kill();
    Ok(())
}

/// A server killed with SIGKILL: its client learns it, and removes the segment the
/// server left, so nothing stays in /dev/shm.
pub fn dead_server_segment_removed(ctx: &Ctx) -> Outcome {
    let (mut server, client, url) = heard_by_a_printer(ctx, "doomed")?;
    server.kill();
    match client.request(b"anyone?", PATIENCE) {
        Err(Error::Disconnected { .. }) => {}
        other => return Err(format!("a request to a killed server gave {other:?}").into()),
    }
    let path = path_of(&url).expect("a segment path");
    ensure!(
        !path.exists(),
        "{} is left behind by the killed server",
        path.display()
    );
    Ok(())
}

/// Another process shrinks the segment under a server and its client (`truncate`, or `dd`
/// without `conv=notrunc`): neither dies of SIGBUS; each fails with an error saying so.
pub fn truncated_segment_fails_both_sides(ctx: &Ctx) -> Outcome {
    let mut server = api::listen(ctx.endpoint_with("shrunk", RING_OPTION.0, RING_OPTION.1))?;
    let url = server.endpoint().clone();
    let mut client = Child::spawn(Role::RequestWhenTold, &url);
    ensure!(
        client.line_serving(&mut server)? == "connected",
        "the client did not connect"
    );
    let path = path_of(&url).expect("a segment path");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)?
        .set_len(0)?;
    client.say("go")?;
    ensure!(client.line()? == "requesting", "the client did not ask");
    let said = client.line()?;
    ensure!(
        said.starts_with("Disconnected") && said.contains("shrank"),
        "the client's request over a shrunk segment ended with {said:?}"
    );
    match server.recv_timeout(PATIENCE) {
        Err(Error::Protocol { reason, .. }) if reason.contains("shrank") => Ok(()),
        other => Err(format!("a server whose segment was shrunk: {other:?}").into()),
    }
}

/// The first one-way send after the server was killed and reaped fails: the kernel marked
/// the server's death in the segment before the reaping, and a send reads the mark.
pub fn send_fails_once_the_server_is_gone(ctx: &Ctx) -> Outcome {
    let (mut server, client, _) = heard_by_a_printer(ctx, "reaped")?;
    client.send(b"warm")?;
    server.kill();
    match client.send(b"into the void") {
        Err(Error::Disconnected { detail, .. }) if detail.contains("died") => Ok(()),
        other => Err(format!("the first send after the server was reaped: {other:?}").into()),
    }
}
