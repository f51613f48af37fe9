//! The server's rules, with clients played in the same process through the store (the
//! conformance suite runs real clients in other processes).

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::FlockOperation;

use super::names::Name;
use super::queue::Options;
use super::queue::tests::{endpoint, scratch, shell_send};
use super::server::{RECOUNT_INTERVAL, SpoolListener, listen_with};
use super::store::{Inbox, Spool};
use crate::endpoint::Ack;
use crate::error::Error;
use crate::push::Event;
use crate::transport::Listener;

fn soon() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(5))
}

fn listener(dir: &Path, options: Options) -> SpoolListener {
    listen_with(&endpoint(dir), options).unwrap()
}

/// A client as the client half makes one: an inbox it holds, and messages naming it.
struct Client {
    spool: Spool,
    inbox: Inbox,
    dir: PathBuf,
}

impl Client {
    fn new(dir: &Path) -> Client {
        let spool = Spool::open(&endpoint(dir), false, false).unwrap();
        let inbox = spool.make_inbox().unwrap();
        Client {
            dir: dir.join("spool/clients").join(inbox.id()),
            spool,
            inbox,
        }
    }

    fn send(&self, payload: &[u8]) {
        let name = Name::fresh(Some(self.inbox.id()), None);
        self.spool.publish(&name, payload).unwrap();
    }

    fn request(&self, id: u64, payload: &[u8]) {
        let name = Name::fresh(Some(self.inbox.id()), Some(id));
        self.spool.publish(&name, payload).unwrap();
    }

    /// What the server put in the inbox, oldest first.
    fn inbox_files(&self) -> Vec<(Name, Vec<u8>)> {
        let mut files: Vec<(Name, Vec<u8>)> = std::fs::read_dir(self.dir.join("new"))
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                let name = Name::parse(entry.file_name().as_encoded_bytes()).unwrap();
                (name, std::fs::read(entry.path()).unwrap())
            })
            .collect();
        files.sort_by(|a, b| a.0.order(&b.0));
        files
    }
}

fn next(listener: &mut SpoolListener) -> Event {
    listener
        .recv_event(soon())
        .unwrap()
        .expect("an event within 5 s")
}

fn count(dir: &Path, area: &str) -> usize {
    std::fs::read_dir(dir.join("spool").join(area))
        .unwrap()
        .count()
}

#[test]
fn a_new_inbox_is_connected_before_its_first_message_and_its_goodbye_comes_after_the_last() {
    let dir = scratch("roster");
    // One there before the server: connected at the start, before any message.
    let early = Client::new(&dir);
    early.send(b"early");
    let mut server = listener(&dir, Options::default());
    let Event::Connected(early_handle) = next(&mut server) else {
        panic!("Connected first")
    };
    let Event::Message(message) = next(&mut server) else {
        panic!("then its message")
    };
    assert_eq!(message.client(), Some(&early_handle));
    assert_eq!(message.payload(), b"early");
    assert_eq!(message.deliveries(), Some(1));
    assert_eq!(
        message.peer().uid,
        Some(rustix::process::geteuid().as_raw())
    );
    // One arriving while it runs, sending and leaving at once.
    let late = Client::new(&dir);
    late.send(b"one");
    late.send(b"two");
    drop(late);
    let Event::Connected(late_handle) = next(&mut server) else {
        panic!("Connected first")
    };
    for payload in [b"one", b"two"] {
        let Event::Message(message) = next(&mut server) else {
            panic!("its messages before its goodbye")
        };
        assert_eq!(message.payload(), payload);
        assert_eq!(message.client(), Some(&late_handle));
    }
    let Event::Disconnected(gone) = next(&mut server) else {
        panic!("then Disconnected")
    };
    assert_eq!(gone, late_handle);
    assert_eq!(
        server.broadcaster().unwrap().clients(),
        std::slice::from_ref(&early_handle)
    );
    // Its handles stop with the server.
    drop(server);
    assert!(matches!(
        early_handle.try_send(b"after"),
        Err(Error::Disconnected { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An inbox made as a client makes it, for a client that can crash: it dies when the
/// lock returned is dropped, saying no goodbye.
fn crashable_client(dir: &Path, id: &str) -> File {
    let clients = dir.join("spool/clients");
    let staging = clients.join(format!(".{id}.tmp"));
    std::fs::create_dir_all(staging.join("new")).unwrap();
    std::fs::create_dir_all(staging.join("tmp")).unwrap();
    let lock = File::create(staging.join("lock")).unwrap();
    rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive).unwrap();
    std::fs::rename(staging, clients.join(id)).unwrap();
    lock
}

#[test]
fn a_client_that_dies_without_a_goodbye_is_disconnected_and_its_inbox_removed() {
    let dir = scratch("dead-client");
    let mut server = listener(&dir, Options::default());
    let clients = dir.join("spool/clients");
    let lock = crashable_client(&dir, "1-dead-0");
    let Event::Connected(handle) = next(&mut server) else {
        panic!("Connected")
    };
    drop(lock);
    let Event::Disconnected(gone) = next(&mut server) else {
        panic!("Disconnected")
    };
    assert_eq!(gone, handle);
    assert!(!clients.join("1-dead-0").exists());
    // A push to it now says so.
    assert!(matches!(
        handle.try_send(b"late"),
        Err(Error::Disconnected { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn replies_and_refusals_go_into_the_requesters_inbox_named_for_the_request() {
    let dir = scratch("reply");
    let mut server = listener(&dir, Options::default());
    let client = Client::new(&dir);
    client.request(7, b"ping");
    client.request(8, b"nonsense");
    let mut ping = server.recv(soon()).unwrap().unwrap();
    assert!(ping.wants_reply());
    ping.reply(b"pong").unwrap();
    server
        .recv(soon())
        .unwrap()
        .unwrap()
        .refuse("unknown command")
        .unwrap();
    let files = client.inbox_files();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0].0.request(), Some(7));
    assert!(!files[0].0.is_refusal());
    assert_eq!(files[0].1, b"pong");
    assert_eq!(files[1].0.request(), Some(8));
    assert!(files[1].0.is_refusal());
    assert_eq!(files[1].1, b"unknown command");
    // A one-way message of its own cannot be answered.
    client.send(b"note");
    assert!(!server.recv(soon()).unwrap().unwrap().wants_reply());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_request_of_a_client_that_left_is_dropped_and_a_gone_senders_message_has_no_client() {
    let dir = scratch("gone-sender");
    let mut server = listener(&dir, Options::default());
    let gone = Name::fresh(Some("1-gone-0"), Some(3));
    let spool = Spool::open(&endpoint(&dir), false, false).unwrap();
    spool.publish(&gone, b"nobody waits").unwrap();
    spool
        .publish(&Name::fresh(Some("1-gone-0"), None), b"still delivered")
        .unwrap();
    let message = server.recv(soon()).unwrap().unwrap();
    assert_eq!(message.payload(), b"still delivered");
    assert!(message.client().is_none());
    assert_eq!(
        count(&dir, "new") + count(&dir, "cur") + count(&dir, "bad"),
        0
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ack_recv_removes_at_recv_and_ack_done_when_the_message_is_dropped() {
    let dir = scratch("ack");
    let mut server = listener(&dir, Options::default());
    shell_send(&dir, "1.a", b"a");
    let message = server.recv(soon()).unwrap().unwrap();
    assert_eq!(count(&dir, "cur") + count(&dir, "new"), 0);
    drop(message);
    drop(server);

    let mut server = listener(
        &dir,
        Options {
            ack: Ack::Done,
            ..Options::default()
        },
    );
    shell_send(&dir, "2.b", b"b");
    shell_send(&dir, "3.c", b"c");
    let mut message = server.recv(soon()).unwrap().unwrap();
    assert_eq!(count(&dir, "cur"), 1);
    // Taking the payload or answering does not settle it: the application is not done.
    assert_eq!(message.take_payload(), b"b");
    assert!(message.reply(b"x").is_err());
    assert_eq!(count(&dir, "cur"), 1);
    drop(message);
    assert_eq!(count(&dir, "cur"), 0);
    let mut during = usize::MAX;
    assert!(
        server
            .recv_with(soon(), &mut |message| {
                assert_eq!(message.payload(), b"c");
                assert_eq!(message.deliveries(), Some(1));
                during = count(&dir, "cur");
            })
            .unwrap()
    );
    assert_eq!(during, 1);
    assert_eq!(count(&dir, "cur") + count(&dir, "new"), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_message_whose_receiver_died_comes_again_as_its_next_delivery() {
    let dir = scratch("redeliver");
    Spool::open(&endpoint(&dir), true, false).unwrap();
    std::fs::write(dir.join("spool/cur/1.a,d=1,r=1-dead-0"), b"again").unwrap();
    let mut server = listener(&dir, Options::default());
    let message = server.recv(soon()).unwrap().unwrap();
    assert_eq!(message.payload(), b"again");
    assert_eq!(message.deliveries(), Some(3));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn pushes_wait_in_the_inbox_up_to_the_outbox_bound_then_are_full() {
    let dir = scratch("push");
    let mut server = listener(
        &dir,
        Options {
            outbox: 2,
            ..Options::default()
        },
    );
    let client = Client::new(&dir);
    let Event::Connected(handle) = next(&mut server) else {
        panic!("Connected")
    };
    handle.try_send(b"1").unwrap();
    handle.try_send(b"2").unwrap();
    assert!(matches!(handle.try_send(b"3"), Err(Error::Full { .. })));
    // A reply is not a push: it does not count.
    client.request(1, b"q");
    server.recv(soon()).unwrap().unwrap().reply(b"r").unwrap();
    assert!(matches!(handle.try_send(b"3"), Err(Error::Full { .. })));
    // The client reads one: room again.
    let files = client.inbox_files();
    let first = files
        .iter()
        .find(|(name, _)| name.request().is_none())
        .unwrap();
    std::fs::remove_file(client.dir.join("new").join(first.0.to_string())).unwrap();
    // A full inbox is counted again at most once per RECOUNT_INTERVAL.
    std::thread::sleep(RECOUNT_INTERVAL);
    handle.try_send(b"3").unwrap();
    let pushes: Vec<Vec<u8>> = client
        .inbox_files()
        .into_iter()
        .filter(|(name, _)| name.request().is_none())
        .map(|(_, payload)| payload)
        .collect();
    assert_eq!(pushes, [b"2".to_vec(), b"3".to_vec()]);
    assert_eq!(
        server
            .broadcaster()
            .unwrap()
            .broadcast(b"all")
            .unwrap()
            .dropped,
        1
    );
    drop(client);
    assert!(matches!(
        handle.send(b"gone"),
        Err(Error::Disconnected { .. })
    ));
    // One that crashed with a full inbox: a push says so at once, rather than waiting
    // for room that will never come and calling it full.
    let lock = crashable_client(&dir, "1-crashed-0");
    let crashed = loop {
        // After the first client's Disconnected.
        if let Event::Connected(crashed) = next(&mut server) {
            break crashed;
        }
    };
    crashed.try_send(b"1").unwrap();
    crashed.try_send(b"2").unwrap();
    drop(lock);
    assert!(matches!(
        crashed.send(b"3"),
        Err(Error::Disconnected { .. })
    ));
    // The server reports it (after the first client), and removes what it left.
    let mut left = Vec::new();
    while left.len() < 2 {
        if let Event::Disconnected(gone) = next(&mut server) {
            left.push(gone);
        }
    }
    assert_eq!(left, [handle, crashed]);
    assert!(!dir.join("spool/clients/1-crashed-0").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_client_whose_arrival_was_not_read_is_connected_before_its_message() {
    let dir = scratch("unseen");
    let mut server = listener(&dir, Options::default());
    assert!(server.recv(Some(Instant::now())).unwrap().is_none());
    let client = Client::new(&dir);
    client.send(b"hello");
    // The hints about clients/ are swallowed; the message's are kept: the client is
    // learnt from its message.
    let mut clients_hints = 0;
    server.core().queue.drain(|_| clients_hints += 1).unwrap();
    assert!(clients_hints > 0);
    let Event::Connected(handle) = next(&mut server) else {
        panic!("Connected first")
    };
    let Event::Message(message) = next(&mut server) else {
        panic!("then the message")
    };
    assert_eq!(message.client(), Some(&handle));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_idle_lone_receiver_does_not_wake_until_its_deadline_or_its_waker() {
    let dir = scratch("idle");
    let mut server = listener(&dir, Options::default());
    let started = Instant::now();
    assert!(
        server
            .recv(Some(started + Duration::from_millis(300)))
            .unwrap()
            .is_none()
    );
    assert_eq!(server.core().queue.wake_ups, 0);
    let wake = server.waker();
    wake();
    assert!(server.recv(None).unwrap().is_none());
    shell_send(&dir, "1.a", b"a");
    assert!(server.recv(soon()).unwrap().is_some());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn leftovers_of_dead_clients_are_removed_at_the_start() {
    let dir = scratch("leftovers");
    Spool::open(&endpoint(&dir), true, false).unwrap();
    let clients = dir.join("spool/clients");
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    // Free locks, of a client that died making its inbox, one that said goodbye, and one
    // that died.
    for left in [&format!(".{dead}-a-0.tmp"), ".gone-1-b-0", "1-c-0"] {
        std::fs::create_dir_all(clients.join(left).join("new")).unwrap();
        std::fs::write(clients.join(left).join("lock"), b"").unwrap();
    }
    // Without lock files: a client that died before it made its lock, and a removal
    // killed midway.
    for left in [format!(".{dead}-n-0.tmp"), format!(".gone-{dead}-r-0")] {
        std::fs::create_dir_all(clients.join(left).join("new")).unwrap();
    }
    // The dead makers' half-made inboxes are a minute old: past the grace in which a
    // maker of another pid namespace might still be at it.
    for left in [format!(".{dead}-a-0.tmp"), format!(".{dead}-n-0.tmp")] {
        let a_minute_ago = std::time::SystemTime::now() - Duration::from_secs(60);
        File::open(clients.join(left))
            .unwrap()
            .set_modified(a_minute_ago)
            .unwrap();
    }
    // One being made by a live process: its lock made, not locked yet, or not made yet.
    let making = format!(".{}-making-0.tmp", std::process::id());
    std::fs::create_dir_all(clients.join(&making).join("new")).unwrap();
    std::fs::write(clients.join(&making).join("lock"), b"").unwrap();
    let unlocked = format!(".{}-unlocked-0.tmp", std::process::id());
    std::fs::create_dir_all(clients.join(&unlocked).join("new")).unwrap();
    let live = Client::new(&dir);
    let mut server = listener(&dir, Options::default());
    let mut names: Vec<_> = std::fs::read_dir(&clients)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            OsStr::new(&making),
            OsStr::new(&unlocked),
            OsStr::new(live.inbox.id())
        ]
    );
    assert!(matches!(next(&mut server), Event::Connected(_)));
    assert!(server.recv(Some(Instant::now())).unwrap().is_none());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(feature = "tokio")]
#[test]
fn the_async_listener_steps_the_same_core() {
    use super::server_tokio::listen_async_with;
    use crate::transport::AsyncListener;
    let dir = scratch("tokio");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut server = listen_async_with(&endpoint(&dir), Options::default()).unwrap();
        let client = Client::new(&dir);
        let sender = std::thread::spawn({
            let dir = dir.clone();
            move || shell_send(&dir, "1.a", b"from the shell")
        });
        client.send(b"from the client");
        assert!(matches!(
            server.recv_event().await.unwrap(),
            Event::Connected(_)
        ));
        sender.join().unwrap();
        let mut payloads = Vec::new();
        for _ in 0..2 {
            payloads.push(server.recv().await.unwrap().take_payload());
        }
        payloads.sort();
        assert_eq!(
            payloads,
            [b"from the client".to_vec(), b"from the shell".to_vec()]
        );
        drop(client);
        assert!(matches!(
            server.recv_event().await.unwrap(),
            Event::Disconnected(_)
        ));
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A competing receiver that dies holding a claim leaves it in cur/ with its lock free;
/// a receiver that was running all along, with an empty cur/ when it last looked, sees
/// the claim arrive there and gives it back within a second or so.
#[test]
fn a_running_receiver_gives_back_the_claim_of_one_that_died() {
    let dir = scratch("died-claim");
    let mut server = listener(&dir, Options::default());
    assert!(server.recv(Some(Instant::now())).unwrap().is_none());
    // What a receiver killed between its claim and its acknowledgement leaves.
    shell_send(&dir, "1733360000.5.dead", b"orphan");
    let claimed = dir.join("spool/cur/1733360000.5.dead,r=1-dead-0");
    std::fs::rename(dir.join("spool/new/1733360000.5.dead"), &claimed).unwrap_or_else(|_| {
        // The running receiver took it first: put it where a dead one would have.
        let taken = server.recv(soon()).unwrap().unwrap();
        assert_eq!(taken.payload(), b"orphan");
        shell_send(&dir, "1733360000.5.dead", b"orphan");
        std::fs::rename(dir.join("spool/new/1733360000.5.dead"), &claimed).unwrap();
    });
    let message = server
        .recv(Some(Instant::now() + Duration::from_secs(5)))
        .unwrap()
        .expect("the dead receiver's claim, given back");
    assert_eq!(message.payload(), b"orphan");
    assert_eq!(message.deliveries(), Some(2));
    drop(message);
    assert_eq!(count(&dir, "cur"), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With `ack=done`, a handler that panics has not finished with its message: it is given
/// back to new/, one delivery counted, and delivered again.
#[test]
fn ack_done_gives_back_the_message_of_a_handler_that_panicked() {
    let dir = scratch("panicked");
    let mut server = listener(
        &dir,
        Options {
            ack: Ack::Done,
            ..Options::default()
        },
    );
    shell_send(&dir, "1733360000.1.x", b"poison once");
    let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        server
            .recv_with(soon(), &mut |_message| panic!("the handler fails"))
            .unwrap();
    }));
    assert!(handled.is_err());
    let again = server.recv(soon()).unwrap().expect("delivered again");
    assert_eq!(again.payload(), b"poison once");
    assert_eq!(again.deliveries(), Some(2));
    drop(again);
    assert_eq!(count(&dir, "cur") + count(&dir, "new"), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A request whose `ack=done` handler panics is not refused to its caller: it is given
/// back, and the answer of its next delivery is the one the caller gets.
#[test]
fn ack_done_gives_back_a_request_unrefused_when_its_handler_panics() {
    let dir = scratch("panicked-request");
    let mut server = listener(
        &dir,
        Options {
            ack: Ack::Done,
            ..Options::default()
        },
    );
    let client = Client::new(&dir);
    assert!(matches!(next(&mut server), Event::Connected(_)));
    client.request(7, b"charge");
    let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        server
            .recv_with(soon(), &mut |_message| panic!("the handler fails"))
            .unwrap();
    }));
    assert!(handled.is_err());
    assert!(
        client.inbox_files().is_empty(),
        "{:?}",
        client.inbox_files()
    );
    let mut again = server.recv(soon()).unwrap().expect("delivered again");
    assert_eq!(again.deliveries(), Some(2));
    again.reply(b"charged").unwrap();
    let files = client.inbox_files();
    assert_eq!(files.len(), 1);
    assert!(!files[0].0.is_refusal());
    assert_eq!(files[0].1, b"charged");
    std::fs::remove_dir_all(&dir).unwrap();
}
