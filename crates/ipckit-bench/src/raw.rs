//! The hand-written baselines: for each scheme, the plainest echo server and client over
//! the same kernel object (or, for shm, a bare spin over two rings; for events, a bare
//! broadcast ring, one way only), so that a measurement of ipckit can be set beside the
//! mechanism's own cost.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener, UnixStream};

use crate::{raw_events, raw_shm};

/// Bytes in each hand-written message, unless a run asks for another size.
pub const SIZE: usize = 64;

/// Whether there is a hand-written baseline for `scheme`.
///
/// ```
/// assert!(ipckit_bench::raw::has_baseline("uds"));
/// assert!(!ipckit_bench::raw::has_baseline("dbus"));
/// ```
pub fn has_baseline(scheme: &str) -> bool {
    matches!(
        scheme,
        "uds" | "tcp" | "udp" | "unixgram" | "fifo" | "mq" | "shm" | "events"
    )
}

/// Runs the hand-written echo server of `scheme` at `address` for messages of `size`
/// bytes: prints the address clients should use, then serves one client until it goes
/// away.
pub fn serve(scheme: &str, address: &str, size: usize) {
    let mut buf = vec![0u8; size];
    match scheme {
        "uds" => {
            let listener = UnixListener::bind(address).expect("bind");
            println!("{address}");
            let (mut stream, _) = listener.accept().expect("accept");
            while stream.read_exact(&mut buf).is_ok() && stream.write_all(&buf).is_ok() {}
        }
        "tcp" => {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            println!("{}", listener.local_addr().unwrap());
            let (mut stream, _) = listener.accept().expect("accept");
            stream.set_nodelay(true).unwrap();
            while stream.read_exact(&mut buf).is_ok() && stream.write_all(&buf).is_ok() {}
        }
        "udp" => {
            let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
            println!("{}", socket.local_addr().unwrap());
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                socket.send_to(&buf[..n], from).unwrap();
            }
        }
        "unixgram" => {
            let socket = UnixDatagram::bind(address).expect("bind");
            println!("{address}");
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                let to = from
                    .as_abstract_name()
                    .expect("clients bind abstract names");
                let to = SocketAddr::from_abstract_name(to).unwrap();
                socket.send_to_addr(&buf[..n], &to).unwrap();
            }
        }
        "mq" => {
            // The server comes first: queues left with another size are replaced.
            let (requests, replies) = queues_of(address, size, true);
            println!("{address}");
            let mut priority = 0;
            while let Ok(n) = nix::mqueue::mq_receive(&requests, &mut buf, &mut priority) {
                nix::mqueue::mq_send(&replies, &buf[..n], 0).unwrap();
            }
        }
        "fifo" => {
            let (requests, replies) = raw_fifos(address);
            println!("{address}");
            let (mut requests, mut replies) = (
                std::fs::File::open(requests).unwrap(),
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(replies)
                    .unwrap(),
            );
            while requests.read_exact(&mut buf).is_ok() && replies.write_all(&buf).is_ok() {}
        }
        "shm" | "shm-records" => {
            let framing = if scheme == "shm" {
                raw_shm::Framing::Slots
            } else {
                raw_shm::Framing::Records
            };
            let rings = raw_shm::Rings::open(address, true, framing, size);
            println!("{address}");
            rings.serve()
        }
        other => panic!("no hand-written baseline for {other}"),
    }
}

/// The two FIFOs of the hand-written ping-pong, made by whoever comes first.
pub(crate) fn raw_fifos(address: &str) -> (String, String) {
    let (requests, replies) = (format!("{address}.req"), format!("{address}.rep"));
    for path in [&requests, &replies] {
        let _ = rustix::fs::mkfifoat(
            rustix::fs::CWD,
            path.as_str(),
            rustix::fs::Mode::from_raw_mode(0o600),
        );
    }
    (requests, replies)
}

/// The request and reply queues at `address`, for messages of `size` bytes; `fresh`
/// (the receiver's side) replaces queues left with another size.
fn queues_of(address: &str, size: usize, fresh: bool) -> (nix::mqueue::MqdT, nix::mqueue::MqdT) {
    use nix::mqueue::{MQ_OFlag, MqAttr, mq_open};
    let name = address.rsplit('/').next().unwrap();
    if fresh {
        // A queue keeps the message size it was made with: start afresh for another.
        for suffix in ["req", "rep"] {
            let _ = nix::mqueue::mq_unlink(format!("/{name}.{suffix}").as_str());
        }
    }
    let attr = MqAttr::new(0, 10, size as _, 0);
    let open = |suffix: &str| {
        let flags = MQ_OFlag::O_CREAT | MQ_OFlag::O_RDWR;
        let mode = nix::sys::stat::Mode::from_bits_truncate(0o600);
        mq_open(
            format!("/{name}.{suffix}").as_str(),
            flags,
            mode,
            Some(&attr),
        )
        .unwrap()
    };
    (open("req"), open("rep"))
}

/// The hand-written client of each baseline, for messages of `size` bytes (as its server
/// was started with): one write or send, one read or recv.
pub fn client(scheme: &str, address: &str, size: usize) -> Box<dyn FnMut()> {
    let payload = vec![7u8; size];
    let mut buf = vec![0u8; size];
    match scheme {
        "uds" => {
            let mut s = UnixStream::connect(address).unwrap();
            Box::new(move || {
                s.write_all(&payload).unwrap();
                s.read_exact(&mut buf).unwrap();
            })
        }
        "tcp" => {
            let mut s = TcpStream::connect(address).unwrap();
            s.set_nodelay(true).unwrap();
            Box::new(move || {
                s.write_all(&payload).unwrap();
                s.read_exact(&mut buf).unwrap();
            })
        }
        "udp" => {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.connect(address).unwrap();
            Box::new(move || {
                s.send(&payload).unwrap();
                s.recv(&mut buf).unwrap();
            })
        }
        "unixgram" => {
            let name = format!("ipckit-bench-{}", std::process::id());
            let s =
                UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name).unwrap()).unwrap();
            s.connect(address).unwrap();
            Box::new(move || {
                s.send(&payload).unwrap();
                s.recv(&mut buf).unwrap();
            })
        }
        "mq" => {
            let (requests, replies) = queues_of(address, size, false);
            Box::new(move || {
                nix::mqueue::mq_send(&requests, &payload, 0).unwrap();
                nix::mqueue::mq_receive(&replies, &mut buf, &mut 0).unwrap();
            })
        }
        "fifo" => {
            let (mut requests, mut replies) = fifo_ends(address);
            Box::new(move || {
                requests.write_all(&payload).unwrap();
                replies.read_exact(&mut buf).unwrap();
            })
        }
        "shm" => {
            Box::new(raw_shm::Rings::open(address, false, raw_shm::Framing::Slots, size).client())
        }
        "shm-records" => {
            Box::new(raw_shm::Rings::open(address, false, raw_shm::Framing::Records, size).client())
        }
        other => panic!("no baseline for {other}"),
    }
}

/// A client's ends of the FIFO pair at `address`: requests to write, replies to read.
fn fifo_ends(address: &str) -> (std::fs::File, std::fs::File) {
    let (requests, replies) = raw_fifos(address);
    let requests = std::fs::OpenOptions::new()
        .write(true)
        .open(requests)
        .unwrap();
    (requests, std::fs::File::open(replies).unwrap())
}

/// The hand-written FIFO client that can time out: write, poll with a timeout, read.
pub fn fifo_client_with_poll(address: &str) -> Box<dyn FnMut()> {
    let (mut requests, mut replies) = fifo_ends(address);
    let payload = [7u8; SIZE];
    let mut buf = [0u8; SIZE];
    let timeout = rustix::time::Timespec {
        tv_sec: 5,
        tv_nsec: 0,
    };
    Box::new(move || {
        requests.write_all(&payload).unwrap();
        let mut fds = [rustix::event::PollFd::new(
            &replies,
            rustix::event::PollFlags::IN,
        )];
        rustix::event::poll(&mut fds, Some(&timeout)).unwrap();
        replies.read_exact(&mut buf).unwrap();
    })
}

/// Where the hand-written server of `scheme` listens: a queue name or a path in `dir`.
pub fn address(scheme: &str, dir: &std::path::Path) -> String {
    match scheme {
        "mq" | "shm" | "events" => format!("raw-{scheme}-{}", std::process::id()),
        _ => dir.join(format!("raw-{scheme}")).display().to_string(),
    }
}

/// Removes the hand-written mq queues and shm segment, which outlive their processes.
pub fn remove_leftovers() {
    let pid = std::process::id();
    for stem in [format!("raw-mq-{pid}"), format!("raw-mq-{pid}-sink")] {
        for suffix in ["req", "rep"] {
            let _ = nix::mqueue::mq_unlink(format!("/{stem}.{suffix}").as_str());
        }
    }
    for stem in [
        format!("raw-shm-{pid}"),
        format!("raw-shm-{pid}-sink"),
        format!("raw-events-{pid}-sink"),
    ]
    .into_iter()
    .chain(crate::events::LISTENERS.map(|n| format!("ipckit-bench-events-{pid}-{n}")))
    {
        let _ = std::fs::remove_file(format!("/dev/shm/{stem}"));
    }
}

/// Where a one-way hand-written stream goes, and what it carries.
#[derive(Clone, Copy, Debug)]
pub struct Stream {
    /// Bytes per message.
    pub size: usize,
    /// Messages.
    pub count: u64,
}

/// Receives one datagram into the buffer.
type Receive = dyn Fn(&mut [u8]) -> std::io::Result<usize>;

/// How long a datagram sink waits for more before it counts what came (udp drops).
const DATAGRAM_IDLE: std::time::Duration = std::time::Duration::from_millis(300);

/// The hand-written one-way receiver of `scheme`: prints the address senders should use,
/// takes `stream.count` messages of `stream.size` bytes (or, over udp and events, what
/// arrives), then prints `done MESSAGES NANOS`, the time from the first message to the
/// last.
pub fn sink(scheme: &str, address: &str, stream: Stream) {
    use std::time::Instant;
    let mut buf = vec![0u8; stream.size.max(1)];
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let mut got = 0u64;
    macro_rules! took {
        () => {{
            first.get_or_insert_with(Instant::now);
            last = Instant::now();
            got += 1;
        }};
    }
    match scheme {
        "uds" | "tcp" | "fifo" => {
            let mut reader: Box<dyn Read> = match scheme {
                "uds" => {
                    let _ = std::fs::remove_file(address);
                    let listener = UnixListener::bind(address).expect("bind");
                    println!("{address}");
                    Box::new(listener.accept().expect("accept").0)
                }
                "tcp" => {
                    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
                    println!("{}", listener.local_addr().unwrap());
                    Box::new(listener.accept().expect("accept").0)
                }
                _ => {
                    let (requests, _) = raw_fifos(address);
                    println!("{address}");
                    Box::new(std::fs::File::open(requests).expect("open the FIFO"))
                }
            };
            for _ in 0..stream.count {
                if reader.read_exact(&mut buf).is_err() {
                    break;
                }
                took!();
            }
        }
        "udp" | "unixgram" => {
            let socket: Box<Receive> = if scheme == "udp" {
                let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
                println!("{}", socket.local_addr().unwrap());
                socket.set_read_timeout(Some(DATAGRAM_IDLE)).unwrap();
                Box::new(move |buf| socket.recv(buf))
            } else {
                let _ = std::fs::remove_file(address);
                let socket = UnixDatagram::bind(address).expect("bind");
                println!("{address}");
                socket.set_read_timeout(Some(DATAGRAM_IDLE)).unwrap();
                Box::new(move |buf| socket.recv(buf))
            };
            // Wait for the first as long as it takes; after that, idleness ends the count.
            while got < stream.count {
                match socket(&mut buf) {
                    Ok(_) => took!(),
                    Err(_) if first.is_some() => break,
                    Err(_) => {}
                }
            }
        }
        "mq" => {
            let (requests, _) = queues_of(address, stream.size, true);
            println!("{address}");
            for _ in 0..stream.count {
                match nix::mqueue::mq_receive(&requests, &mut buf, &mut 0) {
                    Ok(_) => took!(),
                    Err(_) => break,
                }
            }
        }
        "shm" => {
            let ring = raw_shm::Stream::open(address, 4 << 20, stream.size, true);
            println!("{address}");
            let started = Instant::now();
            // Copied out, as every other receiver here gets its bytes.
            ring.consume(&mut buf, stream.count);
            first = Some(started);
            last = Instant::now();
            got = stream.count;
        }
        "events" => {
            // A broadcast ring overwrites: what arrives until the writer's end is counted.
            let mut reader = raw_events::Reader::create(address);
            println!("{address}");
            let mut buf = Vec::with_capacity(stream.size);
            loop {
                match reader.recv(&mut buf) {
                    raw_events::Read::Event => took!(),
                    raw_events::Read::End => break,
                    _ => {}
                }
            }
        }
        other => panic!("no hand-written baseline for {other}"),
    }
    let nanos = first.map_or(0, |f| last.duration_since(f).as_nanos());
    println!("done {got} {nanos}");
}

/// The hand-written one-way sender of `scheme`: sends `stream.count` messages of
/// `stream.size` bytes to a [`sink`] at `address`.
pub fn send(scheme: &str, address: &str, stream: Stream) -> std::io::Result<()> {
    let payload = vec![7u8; stream.size];
    match scheme {
        "uds" => {
            let mut s = UnixStream::connect(address)?;
            (0..stream.count).try_for_each(|_| s.write_all(&payload))
        }
        "tcp" => {
            let mut s = TcpStream::connect(address)?;
            s.set_nodelay(true)?;
            (0..stream.count).try_for_each(|_| s.write_all(&payload))
        }
        "fifo" => {
            let (requests, _) = raw_fifos(address);
            let mut f = std::fs::OpenOptions::new().write(true).open(requests)?;
            (0..stream.count).try_for_each(|_| f.write_all(&payload))
        }
        "udp" => {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            s.connect(address)?;
            (0..stream.count).try_for_each(|_| s.send(&payload).map(drop))
        }
        "unixgram" => {
            let s = UnixDatagram::unbound()?;
            s.connect(address)?;
            (0..stream.count).try_for_each(|_| s.send(&payload).map(drop))
        }
        "mq" => {
            let (requests, _) = queues_of(address, stream.size, false);
            (0..stream.count)
                .try_for_each(|_| nix::mqueue::mq_send(&requests, &payload, 0))
                .map_err(std::io::Error::from)
        }
        "shm" => {
            let ring = raw_shm::Stream::open(address, 4 << 20, stream.size, false);
            ring.produce(&payload, stream.count);
            Ok(())
        }
        "events" => {
            // As the events transport is measured: for some time at least, so that the
            // reader has had its turns.
            let mut writer = raw_events::Writer::open(address);
            let start = std::time::Instant::now();
            let mut sent = 0;
            while sent < stream.count || start.elapsed() < crate::harness::ONE_WAY_AT_LEAST {
                writer.send(&payload);
                sent += 1;
            }
            writer.end();
            Ok(())
        }
        other => Err(std::io::Error::other(format!(
            "no hand-written baseline for {other}"
        ))),
    }
}
