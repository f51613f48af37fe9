//! What a typed contract call costs over the request that carries it: `add(2, 3)` called
//! through a [`Proxy`] on a [`Service`], beside a raw request of the very bytes that call
//! sends, answered by a raw server with the very bytes the service replies, each timed in
//! the same interleaved blocks, between the same two CPUs, in each codec.

use std::time::Duration;

use ipckit::contract::{Codec, Method, NoError, Object, Proxy, Service};
use serde::{Deserialize, Serialize};

use crate::harness::{
    Contender, Failure, Options, Plan, Row, broke, check, interleave, scratch_dir, unavailable,
};
use crate::peer::Peer;
use crate::pin_to;

/// How long any one call may take before the run calls it broken.
const PATIENCE: Duration = Duration::from_secs(10);

/// At most this many calls of each kind per measurement: four kinds on every transport
/// that answers requests, within a few seconds of the whole run.
const CALLS: usize = 2_000;

/// The object the calculator peer serves.
pub const OBJECT: &str = "calculator";

/// `add(a, b) -> a + b`, the method measured.
#[derive(Serialize, Deserialize)]
pub struct Add {
    /// The first term.
    pub a: i64,
    /// The second term.
    pub b: i64,
}

impl Method for Add {
    const NAME: &'static str = "add";
    type Output = i64;
    type Error = NoError;
}

/// The call measured, `add(2, 3)`.
pub const ARGS: Add = Add { a: 2, b: 3 };

/// The body a [`Proxy`] of [`OBJECT`] sends for `add(2, 3)` in `codec`, and the body
/// the service answers it with (docs/PROTOCOL.md, *Contracts*); a test checks them
/// against the library's.
pub fn bodies(codec: Codec) -> (&'static [u8], &'static [u8]) {
    match codec {
        Codec::Json => (
            br#"{"object":"calculator","method":"add","args":{"a":2,"b":3}}"#,
            br#"{"ok":5}"#,
        ),
        // 0x01; postcard's Some, "calculator", "add"; then 2 and 3, 5, as zigzag varints.
        Codec::Postcard => (b"\x01\x01\x0acalculator\x03add\x04\x06", b"\x01\x00\x0a"),
    }
}

/// The `calculator` peer: serves [`OBJECT`] with [`Add`] at `address` through
/// [`Service::serve`], as an application would.
pub fn serve_calculator(address: &str) {
    let server = ipckit::listen(address).unwrap_or_else(|e| panic!("{e}"));
    println!("{}", server.endpoint());
    let mut service = Service::new();
    service.shared(
        OBJECT,
        Object::new().method(|_: &(), args: Add| Ok(args.a + args.b)),
        (),
    );
    service.serve(server).unwrap_or_else(|e| panic!("{e}"));
}

/// The `rawcall:CODEC` peer: answers every request with the service's reply to
/// `add(2, 3)` in that codec, reading nothing of it.
pub fn serve_raw(codec: &str, address: &str) {
    let codec: Codec = codec.parse().unwrap_or_else(|e| panic!("{e}"));
    let (_, reply) = bodies(codec);
    let mut server = ipckit::listen(address).unwrap_or_else(|e| panic!("{e}"));
    println!("{}", server.endpoint());
    loop {
        let mut message = server.recv().unwrap_or_else(|e| panic!("{e}"));
        if message.wants_reply() {
            let _ = message.reply(reply);
        }
    }
}

/// A typed call against a raw request on one transport in one codec, as `ipckit bench`
/// reports it. Serialised as is by `ipckit bench --json`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ContractPoint {
    /// The scheme.
    pub transport: String,
    /// `"json"` or `"postcard"`.
    pub codec: &'static str,
    /// `"ok"`, `"failed"` or `"unavailable"`.
    pub status: &'static str,
    /// Why it failed or is unavailable.
    pub reason: Option<String>,
    /// Bytes of the call (and of the raw request).
    pub call_bytes: usize,
    /// Bytes of the reply (and of the raw reply).
    pub reply_bytes: usize,
    /// Calls timed, of each kind.
    pub calls: usize,
    /// The typed call's round trip, median, in nanoseconds.
    pub typed_median_ns: Option<u64>,
    /// The typed call's round trip, 99th percentile.
    pub typed_p99_ns: Option<u64>,
    /// CPU time of both processes per typed call, in nanoseconds.
    pub typed_cpu_ns: Option<u64>,
    /// The raw request's round trip, median, in nanoseconds.
    pub raw_median_ns: Option<u64>,
    /// The raw request's round trip, 99th percentile.
    pub raw_p99_ns: Option<u64>,
    /// CPU time of both processes per raw request, in nanoseconds.
    pub raw_cpu_ns: Option<u64>,
    /// The typed call's median over the raw request's.
    pub ratio: Option<f64>,
    /// The typed call's CPU time over the raw request's.
    pub cpu_ratio: Option<f64>,
}

/// Typed calls against raw requests, in JSON and postcard, over every chosen transport
/// that answers requests, telling `progress` what it starts on. The program must call
/// [`run_if_peer`](crate::peer::run_if_peer) first thing in `main`, as for
/// [`run`](crate::harness::run).
///
/// ```no_run
/// use ipckit_bench::harness;
/// let options = harness::Options { quick: true, ..Default::default() };
/// let points = harness::run_contracts(&options, &mut |step| eprintln!("{step}"))?;
/// print!("{}", harness::contract_table(&points));
/// # Ok::<(), String>(())
/// ```
pub fn run_contracts(
    options: &Options,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<ContractPoint>, String> {
    let chosen = check(options)?;
    pin_to(0);
    let dir = scratch_dir("contracts");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let plan = Plan::new(options).at_most(CALLS);
    let mut points = Vec::new();
    for transport in chosen {
        let scheme = transport.scheme();
        if !transport
            .capabilities(&transport.scratch_endpoint(&dir, "caps"))
            .duplex
        {
            continue;
        }
        progress(&format!("{scheme}: typed calls and raw requests in turn"));
        let codecs = [Codec::Json, Codec::Postcard];
        let mut rows: Vec<(Row, Row)> = codecs
            .iter()
            .map(|&c| {
                let size = bodies(c).0.len();
                (
                    Row::new(scheme, "typed", size),
                    Row::new(scheme, "raw", size),
                )
            })
            .collect();
        let mut contenders = Vec::new();
        let mut endpoints = Vec::new();
        for (&codec, (typed, raw)) in codecs.iter().zip(&mut rows) {
            let at = |kind: &str| {
                crate::spool::bench_endpoint(transport, &dir, &format!("{kind}-{}", codec.name()))
            };
            let (typed_at, raw_at) = (at("typed"), at("raw"));
            match typed_contender(&typed_at, codec) {
                Ok(c) => contenders.push((c, typed)),
                Err(f) => *typed = typed.clone().failed(f.status, f.reason),
            }
            match raw_contender(&raw_at, codec) {
                Ok(c) => contenders.push((c, raw)),
                Err(f) => *raw = raw.clone().failed(f.status, f.reason),
            }
            endpoints.extend([typed_at, raw_at]);
        }
        interleave(&plan, contenders);
        for endpoint in &endpoints {
            // What the clients left (mq's reply queues) goes with its endpoint.
            let _ = transport.destroy(endpoint);
        }
        for (&codec, (typed, raw)) in codecs.iter().zip(rows) {
            points.push(point(scheme, codec, plan.round_trips(), &typed, &raw));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(points)
}

fn point(scheme: &str, codec: Codec, calls: usize, typed: &Row, raw: &Row) -> ContractPoint {
    let (call, reply) = bodies(codec);
    let failed = [typed, raw].into_iter().find(|r| r.status != "ok");
    let ratio = |a: Option<u64>, b: Option<u64>| Some(a? as f64 / b?.max(1) as f64);
    ContractPoint {
        transport: scheme.to_owned(),
        codec: codec.name(),
        status: failed.map_or("ok", |r| r.status),
        reason: failed.map(|r| format!("{}: {}", r.variant, r.reason.clone().unwrap_or_default())),
        call_bytes: call.len(),
        reply_bytes: reply.len(),
        calls,
        typed_median_ns: typed.rtt_median_ns,
        typed_p99_ns: typed.rtt_p99_ns,
        typed_cpu_ns: typed.cpu_ns_per_rtt,
        raw_median_ns: raw.rtt_median_ns,
        raw_p99_ns: raw.rtt_p99_ns,
        raw_cpu_ns: raw.cpu_ns_per_rtt,
        ratio: ratio(typed.rtt_median_ns, raw.rtt_median_ns),
        cpu_ratio: ratio(typed.cpu_ns_per_rtt, raw.cpu_ns_per_rtt),
    }
}

/// `add(2, 3)` through a proxy, against the calculator peer.
fn typed_contender(endpoint: &ipckit::Endpoint, codec: Codec) -> Result<Contender, Failure> {
    let mut peer = Peer::start("calculator", &endpoint.to_string()).map_err(unavailable)?;
    let client = ipckit::connect(peer.address()).map_err(|e| broke(&mut peer, "connecting", e))?;
    let proxy = Proxy::new(client, Some(OBJECT))
        .with_codec(codec)
        .with_timeout(PATIENCE);
    Ok(Contender {
        peer,
        round_trip: Box::new(move || match proxy.call(&ARGS) {
            Ok(5) => Ok(()),
            Ok(sum) => Err(format!("add(2, 3) returned {sum}")),
            Err(e) => Err(e.to_string()),
        }),
        took: Vec::new(),
        cpu: Duration::ZERO,
    })
}

/// The same bytes by a raw request, against the raw peer.
fn raw_contender(endpoint: &ipckit::Endpoint, codec: Codec) -> Result<Contender, Failure> {
    let role = format!("rawcall:{}", codec.name());
    let mut peer = Peer::start(&role, &endpoint.to_string()).map_err(unavailable)?;
    let client = ipckit::connect(peer.address()).map_err(|e| broke(&mut peer, "connecting", e))?;
    let (call, reply) = bodies(codec);
    Ok(Contender {
        peer,
        round_trip: Box::new(move || {
            let answer = client.request(call, PATIENCE).map_err(|e| e.to_string())?;
            if answer == reply {
                Ok(())
            } else {
                Err(format!("the raw server answered {answer:?}"))
            }
        }),
        took: Vec::new(),
        cpu: Duration::ZERO,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The raw request carries the very bytes of the typed call, and the raw server
    /// answers with the very bytes of the service's reply: checked against the library,
    /// whose wire format the constants copy.
    #[test]
    fn the_raw_bodies_are_the_typed_calls_own() {
        for codec in [Codec::Json, Codec::Postcard] {
            let url = format!(
                "uds://@ipckit-bench-bodies-{}-{}",
                codec.name(),
                std::process::id()
            );
            let mut server = ipckit::listen(&url).unwrap();
            let caller = std::thread::spawn(move || {
                let proxy = Proxy::new(ipckit::connect(&url).unwrap(), Some(OBJECT))
                    .with_codec(codec)
                    .with_timeout(PATIENCE);
                proxy.call(&ARGS).map_err(ipckit::Error::from)
            });
            let (call, reply) = bodies(codec);
            let mut message = server.recv().unwrap();
            assert_eq!(message.payload(), call, "{codec:?}");
            // Answered by the library's own service, whose reply must be the raw one.
            let mut service = Service::new();
            service.shared(
                OBJECT,
                Object::new().method(|_: &(), args: Add| Ok(args.a + args.b)),
                (),
            );
            let mut twin = ipckit::listen(format!("{}-twin", server.endpoint())).unwrap();
            let twin_url = twin.endpoint().to_string();
            let asking = std::thread::spawn(move || {
                ipckit::connect(&twin_url)
                    .unwrap()
                    .request(call, PATIENCE)
                    .unwrap()
            });
            let mut asked = twin.recv().unwrap();
            service.handle(&mut asked);
            assert_eq!(asking.join().unwrap(), reply, "{codec:?}");
            message.reply(reply).unwrap();
            assert_eq!(caller.join().unwrap().unwrap(), 5, "{codec:?}");
        }
    }
}
