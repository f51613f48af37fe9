//! Stopping a server at the moment its client leaves: the wake-up that stops it and the
//! client's departure come in one wait, which once passed over the wake-up (a departure
//! is not a message) and waited on forever. Loops, since the race is one of timing; a
//! watchdog turns a hang into a failure.

use std::sync::mpsc;
use std::time::Duration;

fn stop_as_the_client_leaves(url: &str) -> ipckit::Result<()> {
    let server = ipckit::listen(url)?;
    let url = server.endpoint().clone();
    let serving = server.spawn(|msg| Some(msg.payload().len().to_string().into_bytes()));
    let client = ipckit::connect(&url)?;
    assert_eq!(client.request(b"four", Duration::from_secs(5))?, b"4");
    drop(client);
    drop(serving);
    Ok(())
}

#[test]
fn a_server_stopped_as_its_client_leaves_stops() {
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        for round in 0..200 {
            let uds = format!("uds://@ipckit-stop-race-{}-{round}", std::process::id());
            for url in [uds.as_str(), "tcp://127.0.0.1:0"] {
                stop_as_the_client_leaves(url).expect("a round trip");
            }
        }
        let _ = done.send(());
    });
    finished
        .recv_timeout(Duration::from_secs(120))
        .expect("a server stopped as its client left went on waiting");
}
