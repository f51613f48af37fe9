//! One side of the contract measurement of `ipckit bench`, alone, for counting
//! instructions: timings drift on a shared machine, callgrind's counts do not. It serves
//! `add` through a `Service` (typed) or with its reply's bytes (raw), or makes N calls of
//! one kind, so that the typed call's cost over the raw request's is the difference of
//! two counts.
//!
//! ```sh
//! contract-calls serve typed json uds:///tmp/typed.sock &
//! valgrind --tool=callgrind contract-calls call typed json uds:///tmp/typed.sock 20000
//! ```

use std::time::Duration;

use ipckit::contract::{Codec, Proxy};
use ipckit_bench::contract::{self, ARGS, OBJECT};

const USAGE: &str = "usage: contract-calls serve typed|raw json|postcard URL\n       contract-calls call typed|raw json|postcard URL COUNT";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [action, kind, codec, url, rest @ ..] = &args[..] else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let codec: Codec = codec.parse().unwrap_or_else(|e| {
        eprintln!("{e}\n{USAGE}");
        std::process::exit(2)
    });
    match (action.as_str(), kind.as_str()) {
        ("serve", "typed") => contract::serve_calculator(url),
        ("serve", "raw") => contract::serve_raw(codec.name(), url),
        ("call", kind @ ("typed" | "raw")) => {
            let count: u64 = rest
                .first()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| {
                    eprintln!("{USAGE}");
                    std::process::exit(2)
                });
            let client = ipckit::connect(url.as_str()).unwrap_or_else(|e| panic!("{e}"));
            let timeout = Duration::from_secs(10);
            if kind == "typed" {
                let proxy = Proxy::new(client, Some(OBJECT))
                    .with_codec(codec)
                    .with_timeout(timeout);
                for _ in 0..count {
                    match proxy.call(&ARGS) {
                        Ok(5) => {}
                        Ok(sum) => panic!("add(2, 3) returned {sum}"),
                        Err(e) => panic!("{e}"),
                    }
                }
            } else {
                let (call, reply) = contract::bodies(codec);
                for _ in 0..count {
                    let answer = client
                        .request(call, timeout)
                        .unwrap_or_else(|e| panic!("{e}"));
                    assert_eq!(answer, reply);
                }
            }
        }
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}
