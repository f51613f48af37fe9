//! The conformance suite: every check written once, run against every registered
//! transport for which its capabilities say the check applies.
//!
//! Peers are separate processes: this test binary runs itself again with
//! `IPCKIT_CONFORMANCE_PEER=1` and a role (see `peer::Role`), and speaks to it over the
//! transport under test. The peer reports on stdout, one line at a time.
//!
//! One file per behaviour, each with its list of checks: `delivery`, `request_reply`,
//! `lifecycle`, `durable`, `bad_input`, `limits`, `plain_writers`, `shared_memory`,
//! `access`, `handshake`, `push`, `broadcast` and `broadcast_bad_input` (one writer's
//! events reaching many listeners), `contract` and `contract_bad_input` (typed contracts,
//! calling the contract of `contract_fixture`), `spool` (what turns up in a spool
//! directory, redelivery, a full disk), and `cancellation` (through the async API
//! alone). `support` holds what they share, `api` the two APIs a check drives, `peer` the
//! peer processes. A new behaviour's list goes in [`CHECKS`] below.
//!
//! A trial is named `scheme::check` through the blocking API and `scheme::async::check`
//! through the async one; the checks of `bad_input`, `limits`, `plain_writers`,
//! `shared_memory`, `access`, `push`, `broadcast`, `broadcast_bad_input`, `contract`,
//! `contract_bad_input`, `spool` and `cancellation` carry their module in their name
//! (`uds::bad_input::random_bytes`; `… -- contract` runs every contract check).
//! Checks that need a peer of another user, or a filesystem mounted for them, run only
//! as root, and are listed as ignored otherwise. Run one transport, one check, or one check on one transport with the usual
//! filters:
//! `cargo test -p ipckit --test conformance -- uds::`, `… -- request_reply_concurrent`,
//! `… -- --exact uds::async::request_reply_concurrent`.

use std::process::ExitCode;

use libtest_mimic::{Arguments, Trial};

mod access;
mod api;
mod bad_input;
mod broadcast;
mod broadcast_bad_input;
mod cancellation;
mod contract;
mod contract_bad_input;
mod contract_fixture;
mod delivery;
mod durable;
mod handshake;
mod lifecycle;
mod limits;
mod peer;
mod plain_writers;
mod push;
mod request_reply;
mod shared_memory;
mod spool;
mod support;

use api::Api;
use support::{Check, Ctx, PEER_ENV};

/// Every behaviour's checks, in the order of their trials.
const CHECKS: &[&[Check]] = &[
    delivery::CHECKS,
    request_reply::CHECKS,
    lifecycle::CHECKS,
    durable::CHECKS,
    bad_input::CHECKS,
    limits::CHECKS,
    plain_writers::CHECKS,
    shared_memory::CHECKS,
    access::CHECKS,
    handshake::CHECKS,
    push::CHECKS,
    contract::CHECKS,
    contract_bad_input::CHECKS,
    broadcast::CHECKS,
    broadcast_bad_input::CHECKS,
    spool::CHECKS,
];

/// What only futures can do: be dropped halfway. Run through the async API alone.
const ASYNC_CHECKS: &[&[Check]] = &[cancellation::ASYNC_CHECKS, push::ASYNC_CHECKS];

/// What only the blocking API needs: a way to end a blocked loop from another thread
/// (futures are dropped instead). Run through the blocking API alone.
const BLOCKING_CHECKS: &[&[Check]] = &[lifecycle::BLOCKING_CHECKS, push::BLOCKING_CHECKS];

/// Every mq client of the push checks holds a queue of its own, and the trials run side by
/// side: where it may (as root), the suite gives its user more room for queues than the
/// default 800 KiB, which the 64-subscriber check alone nearly fills. Elsewhere it runs
/// within the limit as it is.
fn room_for_queues() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    const ROOM: u64 = 64 << 20;
    let current = getrlimit(Resource::Msgqueue);
    if current.current.is_some_and(|now| now < ROOM) {
        let _ = setrlimit(
            Resource::Msgqueue,
            Rlimit {
                current: Some(ROOM),
                maximum: Some(ROOM.max(current.maximum.unwrap_or(u64::MAX))),
            },
        );
    }
}

fn main() -> ExitCode {
    if std::env::var_os(PEER_ENV).is_some() {
        return peer::run(std::env::args().skip(1).collect());
    }
    let args = Arguments::from_args();
    room_for_queues();
    if !rustix::process::geteuid().is_root() {
        eprintln!(
            "note: not running as root, so no peer can become another user and no filesystem can be mounted: the access::* and spool::disk_full checks that need one are ignored, not passed"
        );
    }
    let mut trials = Vec::new();
    for &transport in ipckit::transport::all() {
        let dir = std::env::temp_dir();
        let caps = transport.capabilities(&transport.scratch_endpoint(&dir, "caps"));
        for api in [Api::Blocking, Api::Async] {
            // The blocking checks keep their plain names: `uds::check`, `uds::async::check`.
            let prefix = match api {
                Api::Blocking => transport.scheme().to_owned(),
                Api::Async => format!("{}::async", transport.scheme()),
            };
            let own_checks = match api {
                Api::Async => ASYNC_CHECKS,
                Api::Blocking => BLOCKING_CHECKS,
            };
            for check in CHECKS.iter().chain(own_checks).copied().flatten() {
                let name = format!("{prefix}::{}", check.name.replace(' ', ""));
                let run = check.run;
                let applies = (check.applies)(transport, &caps);
                trials.push(
                    Trial::test(name.clone(), move || {
                        api::set(api);
                        run(&Ctx::new(transport, &name))
                    })
                    .with_ignored_flag(!applies),
                );
            }
        }
    }
    libtest_mimic::run(&args, trials).exit_code()
}
