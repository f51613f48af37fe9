//! The parts of the crate's documentation that the README carries too, and the checks that
//! keep the two, and the endpoint parser, in step.

use std::collections::BTreeSet;

use crate::endpoint;
use crate::transport;

const WHICH_TRANSPORT: &str = include_str!("which_transport.md");
const ENDPOINTS: &str = include_str!("endpoints.md");

/// The workspace's README, or the copy `cargo package` puts beside the manifest.
fn readme() -> String {
    let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
    let packaged = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    std::fs::read_to_string(workspace)
        .or_else(|_| std::fs::read_to_string(packaged))
        .unwrap_or_else(|e| panic!("reading {workspace} or {packaged}: {e}"))
}

fn built() -> BTreeSet<&'static str> {
    transport::all().iter().map(|t| t.scheme()).collect()
}

#[test]
fn readme_carries_the_crate_docs_sections() {
    let readme = readme();
    for (name, text) in [
        ("which_transport.md", WHICH_TRANSPORT),
        ("endpoints.md", ENDPOINTS),
    ] {
        assert!(
            readme.contains(text),
            "README.md no longer carries src/docs/{name} word for word: edit the one, then \
             copy it into the other"
        );
    }
}

#[test]
fn endpoint_table_documents_every_option() {
    let bullets: Vec<&str> = ENDPOINTS
        .lines()
        .filter(|line| line.starts_with("- `"))
        .collect();
    for option in endpoint::UrlOption::all() {
        let key = option.key();
        let needle = format!("`{key}=");
        let bullet = bullets
            .iter()
            .find(|b| b.contains(&needle))
            .unwrap_or_else(|| panic!("src/docs/endpoints.md has no bullet for ?{key}="));
        // "- `key=N` (uds, tcp): ..." names the transports; no list means every one.
        let head = bullet.split(": ").next().unwrap_or(bullet);
        let listed: BTreeSet<&str> = match head.split_once(" (") {
            Some((_, list)) => list.trim_end_matches(')').split(", ").collect(),
            None => built(),
        };
        for scheme in listed {
            assert!(
                option.applies_to(scheme),
                "src/docs/endpoints.md offers ?{key}= on {scheme}, whose URLs refuse it"
            );
        }
    }
}

#[test]
fn docs_name_every_transport_built() {
    for scheme in built() {
        let link = format!("[{scheme}]");
        assert!(
            ENDPOINTS.contains(&link) && WHICH_TRANSPORT.contains(&link),
            "src/docs/*.md should name the {scheme} transport, linked as {link}"
        );
    }
}
