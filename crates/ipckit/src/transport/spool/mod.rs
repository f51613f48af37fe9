//! `spool`: a Maildir-style directory of files, the article's "files with exclusive locks"
//! done as a durable queue (`spool:///var/spool/app`). Not registered yet: the transport
//! is built over the commits that follow.

#![allow(
    dead_code,
    reason = "the spool transport is built on these in the commits that follow"
)]

pub(crate) mod names;
pub(crate) mod queue;
pub(crate) mod store;
pub(crate) mod watch;
