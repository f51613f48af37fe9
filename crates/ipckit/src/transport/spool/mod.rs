//! `spool`: a Maildir-style directory of files, the article's "files with exclusive locks"
//! done as a durable queue (`spool:///var/spool/app`). Not registered yet: the transport
//! is built over the commits that follow.

#![allow(
    dead_code,
    reason = "the spool transport is built on these in the commits that follow"
)]

use std::path::Path;

use crate::endpoint::{Address, Endpoint};
use crate::error::Result;
use crate::transport::{Capabilities, Connection, Listener, Transport};

mod client;
#[cfg(feature = "tokio")]
mod client_tokio;
pub(crate) mod names;
pub(crate) mod queue;
mod server;
#[cfg(test)]
mod server_tests;
#[cfg(feature = "tokio")]
mod server_tokio;
pub(crate) mod store;
pub(crate) mod watch;

/// The spool transport.
pub struct Spool;

crate::transport::sealed!(Spool);

impl Transport for Spool {
    fn scheme(&self) -> &'static str {
        "spool"
    }

    fn summary(&self) -> &'static str {
        "a directory of message files, durable, shared by any number of receivers"
    }

    fn capabilities(&self, endpoint: &Endpoint) -> Capabilities {
        Capabilities {
            duplex: true,
            push: true,
            reliable: true,
            ordered: true,
            durable: true,
            broadcast: false,
            connection: false,
            max_message: endpoint.max_message(),
            peer_credentials: false,
            zero_copy: false,
        }
    }

    fn scratch_endpoint(&self, dir: &Path, name: &str) -> Endpoint {
        Address::Spool(dir.join(format!("{name}.spool"))).into()
    }

    fn connect(&self, endpoint: &Endpoint) -> Result<Box<dyn Connection>> {
        Ok(Box::new(client::connect(endpoint)?))
    }

    fn listen(&self, endpoint: &Endpoint) -> Result<Box<dyn Listener>> {
        Ok(Box::new(server::listen(endpoint)?))
    }

    #[cfg(feature = "tokio")]
    fn connect_async<'a>(
        &'a self,
        endpoint: &'a Endpoint,
    ) -> crate::transport::BoxFuture<'a, Result<Box<dyn crate::transport::AsyncConnection>>> {
        crate::transport::connected(client_tokio::connect_async(endpoint))
    }

    #[cfg(feature = "tokio")]
    fn listen_async(
        &self,
        endpoint: &Endpoint,
    ) -> Result<Box<dyn crate::transport::AsyncListener>> {
        Ok(Box::new(server_tokio::listen_async(endpoint)?))
    }
}
