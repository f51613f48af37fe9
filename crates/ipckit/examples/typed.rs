//! Typed messages: serde values both ways, over any transport. The client orders, the
//! server answers each order with a receipt, or refuses what it cannot fill.
//!
//! ```text
//! cargo run -p ipckit --example typed -- server [URL [COUNT]]   # stop after COUNT orders
//! cargo run -p ipckit --example typed -- client [URL]
//! ```
//!
//! Both sides must agree on the types: share them in a crate both depend on, as this
//! file shares them between its two roles. Values travel as postcard, a compact binary
//! encoding of serde's data model, behind a byte naming the value's shape, so that a
//! payload of another type is an error rather than a wrong value (docs/PROTOCOL.md).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the pair meet unless told otherwise.
pub const DEFAULT_URL: &str = "uds:///tmp/ipckit-typed.sock";

/// What the client sends.
#[derive(Serialize, Deserialize, Debug)]
pub struct Order {
    pub item: String,
    pub quantity: u32,
}

/// What the server answers.
#[derive(Serialize, Deserialize, Debug)]
pub struct Receipt {
    pub order_id: u64,
    pub total_cents: u64,
}

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
    let role = args.next().unwrap_or_default();
    let url = args.next().unwrap_or_else(|| DEFAULT_URL.to_owned());
    match role.as_str() {
        "server" => {
            let count = args
                .next()
                .map_or(usize::MAX, |n| n.parse().expect("a count"));
            serve(&url, count)
        }
        "client" => order(&url),
        _ => {
            eprintln!("usage: typed server [URL [COUNT]] | typed client [URL]");
            std::process::exit(2);
        }
    }
}

fn serve(url: &str, count: usize) -> ipckit::Result<()> {
    let mut server = ipckit::listen(url)?;
    println!("listening on {}", server.endpoint());
    for (order_id, msg) in (1..).zip(server.incoming().take(count)) {
        let mut msg = msg?;
        // A payload that is not an Order is an error here, not a panic.
        let order: Order = match msg.decode() {
            Ok(order) => order,
            Err(e) => {
                msg.refuse(&format!("not an order: {e}"))?;
                continue;
            }
        };
        if order.item != "apple" {
            msg.refuse(&format!("no {} in stock", order.item))?;
            continue;
        }
        let receipt = Receipt {
            order_id,
            total_cents: 35 * u64::from(order.quantity),
        };
        msg.reply_value(&receipt)?;
        println!("order {order_id}: {order:?}");
    }
    Ok(())
}

fn order(url: &str) -> ipckit::Result<()> {
    let client = ipckit::connect(url)?;
    let timeout = Duration::from_secs(5);

    let apples = Order {
        item: "apple".into(),
        quantity: 3,
    };
    let receipt: Receipt = client.request_value(&apples, timeout)?;
    println!("{receipt:?}");

    let pears = Order {
        item: "pear".into(),
        quantity: 1,
    };
    // A refusal arrives as Error::Remote, carrying the server's reason.
    match client.request_value::<_, Receipt>(&pears, timeout) {
        Err(ipckit::Error::Remote { reason, .. }) => println!("refused: {reason}"),
        other => println!("unexpected: {other:?}"),
    }
    Ok(())
}
