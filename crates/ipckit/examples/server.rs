//! A blocking server: it prints each one-way message and answers each request with the
//! request in capitals. Start it, then `client` (examples/client.rs) in another terminal:
//!
//! ```text
//! cargo run -p ipckit --example server                   # at uds:///tmp/ipckit-hello.sock
//! cargo run -p ipckit --example server -- URL [COUNT]    # at URL; stop after COUNT messages
//! ```
//!
//! Any URL works, `shm://hello` or `tcp://127.0.0.1:7000` as well: give the client the same.
//! Without COUNT it serves until interrupted; a socket file left behind by Ctrl-C is
//! replaced by the next server, which finds nobody answering there.

/// Where the pair meet unless told otherwise.
pub const DEFAULT_URL: &str = "uds:///tmp/ipckit-hello.sock";

// `pub` only so that tests/examples.rs can run it in a process of its own.
pub fn main() {
    // ipckit's errors say what went wrong and what to do: print them as they are.
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> ipckit::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| DEFAULT_URL.to_owned());
    let count = match args.next() {
        Some(count) => count.parse().expect("COUNT should be a number of messages"),
        None => usize::MAX,
    };

    let mut server = ipckit::listen(&url)?;
    // The endpoint as listened on: with tcp port 0, the port the kernel chose.
    println!("listening on {}", server.endpoint());

    for msg in server.incoming().take(count) {
        let mut msg = msg?;
        let text = String::from_utf8_lossy(msg.payload()).into_owned();
        // What the kernel says of the sender: its pid over uds and unixgram.
        let pid = msg.peer().pid;
        if msg.wants_reply() {
            msg.reply(text.to_uppercase().as_bytes())?;
            println!("answered {text:?} from pid {pid:?}");
        } else {
            println!("received {text:?} from pid {pid:?}");
        }
    }
    Ok(()) // dropping the server removes its socket file
}
