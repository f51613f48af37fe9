//! iceoryx2 publish/subscribe with one publisher and some subscribers: the reference the
//! events table sets beside ipckit's broadcast. Each subscriber has a queue of its own,
//! which the publisher fills one by one; with safe overflow (iceoryx2's default) the
//! publisher never waits and overwrites a full queue's oldest sample, as events overwrites
//! its ring's oldest event.

use iceoryx2::port::update_connections::UpdateConnections;
use iceoryx2::prelude::*;

use crate::events::{Sample, sequence};

/// Samples a subscriber's queue holds: a slow subscriber loses what is older. The events
/// ring of 1 MiB holds about 12,000 events of 64 bytes; each of up to 16 queues of 4,096
/// samples is as deep as iceoryx2 allows without a data segment of many megabytes.
const QUEUE: usize = 4096;

type Service = iceoryx2::service::ipc::Service;
type Factory = iceoryx2::service::port_factory::publish_subscribe::PortFactory<Service, Sample, ()>;

fn node() -> Result<Node<Service>, String> {
    // Its notices (no config file, defaults used) would land in the bench's table.
    set_log_level(LogLevel::Error);
    NodeBuilder::new()
        // The bench's peers end on their own or are stopped by the bench, which cleans up.
        .signal_handling_mode(SignalHandlingMode::Disabled)
        .create::<Service>()
        .map_err(|e| format!("an iceoryx2 node: {e:?}"))
}

/// The service `name` for `subscribers`, made by whoever comes first with the same
/// settings.
fn service(node: &Node<Service>, name: &str, subscribers: usize) -> Result<Factory, String> {
    let name: ServiceName = name
        .try_into()
        .map_err(|e| format!("an iceoryx2 service name: {e:?}"))?;
    node.service_builder(&name)
        .publish_subscribe::<Sample>()
        .max_publishers(1)
        .max_subscribers(subscribers)
        .max_nodes(subscribers + 2)
        .subscriber_max_buffer_size(QUEUE)
        .history_size(0)
        .enable_safe_overflow(true)
        .open_or_create()
        .map_err(|e| format!("the iceoryx2 service {name}: {e:?}"))
}

/// A publisher of the service `name`, connected to the subscribers there now: samples
/// go out through `send`.
pub(crate) struct Publisher {
    publisher: iceoryx2::port::publisher::Publisher<Service, Sample, ()>,
    // The node outlives its ports.
    _node: Node<Service>,
}

impl Publisher {
    pub(crate) fn open(name: &str, subscribers: usize) -> Result<Publisher, String> {
        let node = node()?;
        let publisher = service(&node, name, subscribers)?
            .publisher_builder()
            .create()
            .map_err(|e| format!("an iceoryx2 publisher: {e:?}"))?;
        publisher
            .update_connections()
            .map_err(|e| format!("connecting the iceoryx2 subscribers: {e:?}"))?;
        Ok(Publisher {
            publisher,
            _node: node,
        })
    }

    /// Publishes one sample, as an application that has its value at hand does: loaned,
    /// written in place, sent.
    #[inline]
    pub(crate) fn send(&self, sample: &Sample) -> Result<(), String> {
        let loan = self
            .publisher
            .loan_uninit()
            .map_err(|e| format!("loan: {e:?}"))?;
        loan.write_payload(*sample)
            .send()
            .map(drop)
            .map_err(|e| format!("send: {e:?}"))
    }

    /// Sends `end` a few more times, a millisecond apart, after looking for subscribers
    /// again.
    pub(crate) fn repeat_end(&self, end: &Sample) -> Result<(), String> {
        self.publisher
            .update_connections()
            .map_err(|e| format!("connecting the iceoryx2 subscribers: {e:?}"))?;
        for _ in 0..3 {
            std::thread::sleep(std::time::Duration::from_millis(1));
            self.send(end)?;
        }
        Ok(())
    }
}

/// The subscriber peer: subscribes to the service `name` made for `subscribers`, says so,
/// and counts samples until the end, polling as iceoryx2 subscribers without a waitset
/// do, until `stop` says the bench is done with it. Returns the samples it received.
pub(crate) fn subscribe(
    name: &str,
    subscribers: usize,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<Option<u64>, String> {
    let node = node()?;
    let subscriber = service(&node, name, subscribers)?
        .subscriber_builder()
        .buffer_size(QUEUE)
        .create()
        .map_err(|e| format!("an iceoryx2 subscriber: {e:?}"))?;
    println!("{name}");
    let mut got = 0u64;
    let mut idle = 0u32;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        match subscriber
            .receive()
            .map_err(|e| format!("receive: {e:?}"))?
        {
            Some(sample) => {
                idle = 0;
                let copy: Sample = *sample;
                drop(sample);
                if sequence(&copy) == u64::MAX {
                    return Ok(Some(got));
                }
                got += 1;
                std::hint::black_box(&copy);
            }
            None => {
                std::hint::spin_loop();
                idle = idle.saturating_add(1);
                // Subscribers share a CPU: after a while, each poll lets another run.
                if idle > 4096 {
                    std::thread::yield_now();
                }
            }
        }
    }
    Ok(None)
}
