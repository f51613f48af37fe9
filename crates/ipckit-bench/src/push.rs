//! Measurements of a server speaking first: the push round trip (the server pushes, its
//! client answers with a send, the server receives the answer), timed beside the request
//! round trip of the same transport, and broadcast throughput to 1, 4 and 16 subscriber
//! processes. Here the bench process is the server and its peers are the clients.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use ipckit::{ClientHandle, Event, Server};

use crate::harness::{Contender, Failure, Options, Plan, broke, check, scratch_dir, unavailable};
use crate::peer::Peer;
use crate::pin_to;

/// How long any one step may take before the run calls it broken.
const PATIENCE: Duration = Duration::from_secs(10);

/// What a broadcast measurement sends each subscriber, one by one and waiting for room,
/// to ask for the count of what it received.
const COUNT_PUSH: &[u8] = b"count?";

/// Subscriber counts of a broadcast measurement.
pub const SUBSCRIBERS: [usize; 3] = [1, 4, 16];

/// The `answer` peer: a client of the server at `address` that sends back every message
/// the server pushes to it.
pub(crate) fn answer(address: &str) {
    let client = connected(address);
    while let Ok(pushed) = client.recv() {
        if client.send(pushed.payload()).is_err() {
            return;
        }
    }
}

/// The `subscriber` peer: counts what the server at `address` pushes, and sends the count
/// (as text) when pushed [`COUNT_PUSH`].
pub(crate) fn subscriber(address: &str) {
    let client = connected(address);
    let mut count = 0u64;
    while let Ok(pushed) = client.recv() {
        if pushed.payload() == COUNT_PUSH {
            if client.send(count.to_string().as_bytes()).is_err() {
                return;
            }
            count = 0;
        } else {
            count += 1;
        }
    }
}

/// Says it started, then connects: the server accepts the connection in the loop its
/// parent runs once it has read this line. The line names no endpoint, so that the
/// parent's [`Peer`] has nothing of its own to remove when it stops this one.
fn connected(address: &str) -> ipckit::Client {
    println!("client of {address}");
    ipckit::connect(address).unwrap_or_else(|e| panic!("{e}"))
}

/// Starts `clients` peers of `role` connecting to `server`, and waits for the server to
/// see each arrive.
fn clients_of(
    server: &mut Server,
    role: &str,
    clients: usize,
) -> Result<(Vec<Peer>, Vec<ClientHandle>), Failure> {
    let url = server.endpoint().to_string();
    let peers = (0..clients)
        .map(|_| Peer::start(role, &url))
        .collect::<Result<Vec<_>, _>>()
        .map_err(unavailable)?;
    let mut handles = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while handles.len() < clients {
        let left = deadline.saturating_duration_since(Instant::now());
        match server.recv_event_timeout(left) {
            Ok(Some(Event::Connected(client))) => handles.push(client),
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(Failure {
                    status: "failed",
                    reason: format!(
                        "{} of {clients} clients connected within {PATIENCE:?}",
                        handles.len()
                    ),
                });
            }
            Err(e) => {
                return Err(Failure {
                    status: "failed",
                    reason: format!("waiting for clients: {e}"),
                });
            }
        }
    }
    Ok((peers, handles))
}

/// The push round trip to one client process, for the harness to time beside the
/// request round trip.
pub(crate) fn contender(endpoint: &ipckit::Endpoint, size: usize) -> Result<Contender, Failure> {
    let mut server = ipckit::listen(endpoint).map_err(unavailable)?;
    let (mut peers, mut handles) = clients_of(&mut server, "answer", 1)?;
    let (peer, client) = (peers.remove(0), handles.remove(0));
    let payload = vec![7u8; size];
    Ok(Contender {
        peer,
        round_trip: Box::new(move || {
            client.send(&payload).map_err(|e| e.to_string())?;
            match server.recv_timeout(PATIENCE) {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err(format!("no answer to a push within {PATIENCE:?}")),
                Err(e) => Err(e.to_string()),
            }
        }),
        took: Vec::new(),
        cpu: Duration::ZERO,
    })
}

/// Broadcast throughput to some subscribers, as `ipckit bench` reports it. Serialised as
/// is by `ipckit bench --json`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BroadcastPoint {
    /// The scheme.
    pub transport: String,
    /// Subscriber processes.
    pub subscribers: usize,
    /// `"ok"` or `"failed"`.
    pub status: &'static str,
    /// Why it failed.
    pub reason: Option<String>,
    /// Bytes per message.
    pub size: usize,
    /// Messages broadcast.
    pub messages: usize,
    /// Messages broadcast per second, from the first broadcast until every subscriber
    /// had counted what reached it.
    pub msgs_per_sec: Option<f64>,
    /// Messages received per second, all subscribers together.
    pub delivered_per_sec: Option<f64>,
    /// Messages the subscribers received, all together (at most `messages` times
    /// `subscribers`).
    pub delivered: Option<u64>,
    /// Deliveries a broadcast skipped because a subscriber's outbox was full.
    pub dropped: Option<u64>,
}

/// Broadcasts to 1, 4 and 16 subscriber processes over every chosen transport that
/// pushes, telling `progress` what it starts on; transports that do not push have no
/// points. The program must call [`run_if_peer`](crate::peer::run_if_peer) first thing in
/// `main`, as for [`run`](crate::harness::run).
///
/// ```no_run
/// use ipckit_bench::harness;
/// let options = harness::Options { quick: true, ..Default::default() };
/// let points = harness::run_broadcast(&options, &mut |step| eprintln!("{step}"))?;
/// print!("{}", harness::broadcast_table(&points));
/// # Ok::<(), String>(())
/// ```
pub fn run_broadcast(
    options: &Options,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<BroadcastPoint>, String> {
    let chosen = check(options)?;
    pin_to(0);
    let dir = scratch_dir("broadcast");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let plan = Plan::new(options);
    let mut points = Vec::new();
    for transport in chosen {
        let scheme = transport.scheme();
        let endpoint = crate::spool::bench_endpoint(transport, &dir, "broadcast");
        if !transport.capabilities(&endpoint).push {
            continue;
        }
        for subscribers in SUBSCRIBERS {
            progress(&format!("{scheme}: broadcast to {subscribers} subscribers"));
            let mut point = BroadcastPoint {
                transport: scheme.to_owned(),
                subscribers,
                status: "ok",
                reason: None,
                size: options.size,
                messages: plan.deliveries / subscribers,
                msgs_per_sec: None,
                delivered_per_sec: None,
                delivered: None,
                dropped: None,
            };
            if let Err(f) = broadcast(&endpoint, &mut point) {
                point.status = f.status;
                point.reason = Some(f.reason);
            }
            // The subscribers were killed: what they left (mq's inbound queues, charged
            // to this user's RLIMIT_MSGQUEUE) goes before the next measurement needs room.
            let _ = transport.destroy(&endpoint);
            points.push(point);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(points)
}

/// One broadcast measurement: the server's loop receives on a thread of its own (it
/// flushes outboxes and takes the counts) while this one broadcasts, as a server that
/// broadcasts does.
fn broadcast(endpoint: &ipckit::Endpoint, point: &mut BroadcastPoint) -> Result<(), Failure> {
    let mut server = ipckit::listen(endpoint).map_err(unavailable)?;
    let broadcaster = server.broadcaster().map_err(unavailable)?;
    let (mut peers, handles) = clients_of(&mut server, "subscriber", point.subscribers)?;
    let stopper = server.stopper();
    let (counts, counted) = mpsc::channel();
    let receiving = std::thread::spawn(move || {
        loop {
            match server.recv() {
                Ok(message) => {
                    let count = std::str::from_utf8(message.payload())
                        .ok()
                        .and_then(|n| n.parse::<u64>().ok());
                    let _ = counts.send(count.unwrap_or(0));
                }
                Err(_) => return,
            }
        }
    });
    let outcome = (|| -> Result<(), Failure> {
        let payload = vec![7u8; point.size];
        let mut dropped = 0u64;
        let start = Instant::now();
        for _ in 0..point.messages {
            let delivery = broadcaster
                .broadcast(&payload)
                .map_err(|e| broke(&mut peers[0], "broadcasting", e))?;
            dropped += delivery.dropped as u64;
        }
        // Pushed one by one, each waiting for room: every subscriber is asked.
        for (client, peer) in handles.iter().zip(&mut peers) {
            client
                .send(COUNT_PUSH)
                .map_err(|e| broke(peer, "asking the count", e))?;
        }
        let mut delivered = 0u64;
        for _ in 0..point.subscribers {
            delivered += counted
                .recv_timeout(PATIENCE)
                .map_err(|_| broke(&mut peers[0], "the counts", "a subscriber never answered"))?;
        }
        let elapsed = start.elapsed().as_secs_f64();
        point.msgs_per_sec = Some(point.messages as f64 / elapsed);
        point.delivered_per_sec = Some(delivered as f64 / elapsed);
        point.delivered = Some(delivered);
        point.dropped = Some(dropped);
        Ok(())
    })();
    stopper.stop();
    let _ = receiving.join();
    outcome
}
