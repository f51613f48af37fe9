//! What `#[ipckit::contract]` accepts, and what it refuses with a message saying what to
//! do: each refused file's expected errors are in the `.stderr` next to it (after a
//! change to the messages, `TRYBUILD=overwrite cargo test -p ipckit-macros --test ui`
//! rewrites them, to review).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass.rs");
    t.compile_fail("tests/ui/oneway_returns.rs");
    t.compile_fail("tests/ui/event_returns.rs");
    t.compile_fail("tests/ui/no_self.rs");
    t.compile_fail("tests/ui/generic_or_async.rs");
    t.compile_fail("tests/ui/clashing_names.rs");
}
