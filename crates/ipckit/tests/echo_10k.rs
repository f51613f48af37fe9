//! The 10,000-connection async example (`examples/echo_10k.rs`), run as a test: two
//! processes, every connection open at once, every reply checked.

#[path = "../examples/echo_10k.rs"]
mod example;

const CONNECTIONS: usize = 10_000;
const REQUESTS: u32 = 3;

fn main() {
    example::serve_if_asked();
    let dir = std::env::temp_dir().join(format!("ipckit-echo-10k-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let url = format!(
        "uds://{}/echo.sock?max_connections={CONNECTIONS}",
        dir.display()
    );
    let report = example::drive(&url, CONNECTIONS, REQUESTS);
    std::fs::remove_dir_all(&dir).ok();
    let report = report.unwrap_or_else(|e| panic!("the 10k-connection example failed: {e}"));
    assert_eq!(report.connections, CONNECTIONS);
    assert_eq!(
        report.replies_checked,
        CONNECTIONS as u64 * u64::from(REQUESTS)
    );
    println!(
        "echo_10k: {} connections open at once in {:.2?}; {} replies checked in {:.2?}",
        report.connections, report.connect_time, report.replies_checked, report.request_time
    );
}
