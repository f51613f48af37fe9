//! What the examples that open thousands of connections share.

/// Raises the soft descriptor limit so that `needed` sockets fit.
pub fn allow_descriptors(needed: u64) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if hard < needed {
        return Err(format!(
            "{needed} descriptors are needed but the hard limit is {hard}; raise it (ulimit -Hn) or ask for fewer connections"
        )
        .into());
    }
    limit.current = Some(hard);
    setrlimit(Resource::Nofile, limit)?;
    Ok(())
}
