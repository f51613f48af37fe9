//! `ipckit bench`: the harness of ipckit-bench, with a progress bar and a clean stop.

use crate::args::Bench;
use crate::exit::{CliResult, Failure};
use crate::serve::block_stop_signals;

pub fn run(bench: Bench) -> CliResult {
    let Bench {
        quick,
        transports,
        size,
        count,
        json,
        csv,
        chart,
        scaling,
        cpus,
        events_time,
        latency_samples,
    } = bench;
    use ipckit_bench::harness;
    if cfg!(debug_assertions) {
        // The figures of an unoptimised build are not ipckit's: say so, rather than let
        // them stand beside the README's.
        log::warn!(
            "this ipckit is a debug build: its figures are slower than a release build's and do not compare with them; measure with `cargo run --release -p ipckit-cli -- bench`"
        );
    }
    // Refused before the run, rather than after measuring what it cannot keep.
    if let Some(path) = &chart {
        ipckit_bench::chart::check_path(path)
            .map_err(|e| Failure::Usage(format!("--chart: {e}")))?;
    }
    let signals = block_stop_signals()?;
    // Once the run is abandoned, its own thread fails or panics as its servers
    // go: it waits, silent, while the signal's thread cleans up and exits 0.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !ipckit_bench::peer::abandoned() {
            report(info);
        }
    }));
    std::thread::spawn(move || {
        if let Ok(signal) = signals.wait() {
            log::info!("{signal}: stopping the servers and removing what the run made");
            harness::abandon();
            std::process::exit(0);
        }
    });
    let cpus = match cpus {
        Some(list) => ipckit_bench::parse_cpus(&list).map_err(|e| format!("--cpus: {e}"))?,
        None => Vec::new(),
    };
    let options = harness::Options {
        transports,
        size,
        count,
        quick,
        cpus,
        events_time: events_time.unwrap_or_default(),
        latency_samples: latency_samples.unwrap_or(0),
    };
    let scaled = if scaling { 11 } else { 0 };
    let chosen = harness::check(&options)?;
    let dir = std::env::temp_dir();
    let pushing = chosen
        .iter()
        .filter(|t| t.capabilities(&t.scratch_endpoint(&dir, "steps")).push)
        .count();
    let duplex = chosen
        .iter()
        .filter(|t| t.capabilities(&t.scratch_endpoint(&dir, "steps")).duplex)
        .count();
    let listened = chosen
        .iter()
        .filter(|t| ipckit_bench::events::listened(**t, &t.scratch_endpoint(&dir, "steps")))
        .count();
    let steps = chosen.len() as u64 * 3
        + duplex as u64 * scaled
        + (pushing * harness::BROADCAST_SUBSCRIBERS.len()) as u64
        + duplex as u64
        + (listened * ipckit_bench::events::STEPS) as u64
        + if chosen.iter().any(|t| t.scheme() == "spool") {
            ipckit_bench::spool::STEPS as u64
        } else {
            0
        };
    let bar = indicatif::ProgressBar::new(steps).with_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .expect("a valid template"),
    );
    let mut step = |what: &str| {
        bar.inc(1);
        bar.set_message(what.to_owned());
    };
    let rows = harness::run(&options, &mut step);
    let contracts = match &rows {
        Ok(_) => harness::run_contracts(&options, &mut step),
        Err(_) => Ok(Vec::new()),
    };
    let broadcast = match &rows {
        Ok(_) => harness::run_broadcast(&options, &mut step),
        Err(_) => Ok(Vec::new()),
    };
    let events = match &rows {
        Ok(_) => harness::run_events(&options, &mut step),
        Err(_) => Ok(harness::EventsReport::default()),
    };
    let spool = match &rows {
        Ok(_) => harness::run_spool(&options, &mut step),
        Err(_) => Ok(harness::SpoolReport::default()),
    };
    let points = match (&rows, scaling) {
        (Ok(_), true) => harness::run_scaling(&options, &mut step),
        _ => Ok(Vec::new()),
    };
    bar.finish_and_clear();
    let (rows, contracts, broadcast, events, spool, points) =
        (rows?, contracts?, broadcast?, events?, spool?, points?);
    if let Some(path) = &chart {
        ipckit_bench::chart::draw(&rows, &points, path)
            .map_err(|e| format!("drawing {}: {e}", path.display()))?;
    }
    if json {
        let report = serde_json::json!({
            "machine": harness::Machine::here(),
            "rows": rows,
            "contracts": contracts,
            "broadcast": broadcast,
            "events": events,
            "spool": spool,
            "scaling": points,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if csv {
        print!("{}", harness::csv(&rows));
        if !contracts.is_empty() {
            print!("\n{}", harness::contract_csv(&contracts));
        }
        if !broadcast.is_empty() {
            print!("\n{}", harness::broadcast_csv(&broadcast));
        }
        if !events.is_empty() {
            print!("\n{}", harness::events_csv(&events));
        }
        if !spool.is_empty() {
            print!("\n{}", harness::spool_csv(&spool));
        }
        if scaling {
            print!("\n{}", harness::scaling_csv(&points));
        }
    } else {
        let machine = harness::Machine::here();
        println!(
            "{} CPUs ({}), Linux {}; {}\n",
            machine.cpus, machine.cpu, machine.kernel, machine.placement
        );
        print!("{}", harness::table(&rows));
        if !contracts.is_empty() {
            print!("\n{}", harness::contract_table(&contracts));
        }
        if !broadcast.is_empty() {
            print!("\n{}", harness::broadcast_table(&broadcast));
        }
        if !events.is_empty() {
            print!("\n{}", harness::events_table(&events));
        }
        if !spool.is_empty() {
            print!("\n{}", harness::spool_table(&spool));
        }
        if scaling {
            print!("\n{}", harness::scaling_table(&points));
        }
    }
    Ok(())
}
