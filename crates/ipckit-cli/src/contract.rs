//! `call` and `introspect`: a contract's methods called, and its description printed,
//! from a shell, with JSON for arguments and results (docs/PROTOCOL.md, *Contracts*).

use std::time::Duration;

use ipckit::contract::{CallError, Proxy};

use crate::args::DescribeFormat;
use crate::exit::{CliResult, Failure};
use crate::output::print;

/// `ipckit call URL#OBJECT METHOD ARGS`: prints the result's JSON, or fails with the
/// method's error.
pub fn call(url: &str, method: &str, args: &str, oneway: bool, timeout: Duration) -> CliResult {
    let args = match args {
        "-" => String::from_utf8(crate::read_stdin()?)
            .map_err(|_| Failure::Usage("the arguments on standard input are not UTF-8".into()))?,
        text => text.to_owned(),
    };
    // Checked here, before connecting, so that a typo is told as the user's and not the
    // server's.
    if let Err(e) = serde_json::from_str::<serde_json::Value>(&args) {
        return Err(Failure::Usage(format!(
            "the arguments are not JSON ({e}): give them as an object, e.g. '{{\"a\":2,\"b\":3}}'"
        )));
    }
    let proxy = Proxy::connect(url)
        .map_err(|e| with_hint(e, url))?
        .with_timeout(timeout);
    if oneway {
        return proxy
            .notify_json(method, &args)
            .map_err(|e| with_hint(e, url));
    }
    match proxy.call_json(method, &args) {
        Ok(result) => print(&format!("{result}\n")),
        Err(CallError::App(error)) => Err(Failure::MethodFailed {
            called: format!("{url}: '{method}'"),
            error,
        }),
        Err(CallError::Ipc(e)) => Err(with_hint(e, url)),
    }
}

/// `ipckit introspect URL`: the objects served there, or the one URL names.
pub fn introspect(url: &str, format: DescribeFormat, timeout: Duration) -> CliResult {
    let described = Proxy::connect(url)
        .and_then(|proxy| proxy.with_timeout(timeout).describe())
        .map_err(|e| with_hint(e, url))?;
    match format {
        DescribeFormat::Text => print(&described.to_string()),
        DescribeFormat::Json => print(&format!("{}\n", serde_json::to_string(&described)?)),
    }
}

/// The CLI's advice on a failed call: where to see what the server offers.
fn with_hint(error: ipckit::Error, url: &str) -> Failure {
    use ipckit::Error;
    let hint = match &error {
        Error::UnknownMethod { .. } => Some(format!(
            "`ipckit introspect '{url}'` lists its methods and their arguments"
        )),
        Error::BadArguments { .. } => Some(format!(
            "`ipckit introspect '{url}'` lists what each method takes"
        )),
        Error::Protocol { .. } | Error::Codec { .. } => Some(
            "Is it a contract server (ipckit::contract::Service) that listens there?".to_owned(),
        ),
        _ => None,
    };
    Failure::Ipc { error, hint }
}
