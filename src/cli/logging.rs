//! How loud each command is. Workers (`up`, `serve`) log at `info`; the client commands
//! (`complete`, `models`, `deployments`, `health`) print only their answer and warnings, so
//! that their output can be piped. `-v` raises the level one step (`info`), `-vv` two
//! (`debug`), `-vvv` to `trace`; without `-v`, `RUST_LOG` decides when it is set.

/// Whether a command runs a worker or talks to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `up`, `serve`: a long-running worker, `info` by default.
    Worker,
    /// Every other command: `warn` by default.
    Client,
}

/// The `tracing` filter for a command: from `-v` when given, else `rust_log` (the value of
/// `RUST_LOG`) when set, else the role's default.
pub fn filter(role: Role, verbose: u8, rust_log: Option<&str>) -> String {
    let base = match role {
        Role::Worker => 2,
        Role::Client => 1,
    };
    if verbose == 0
        && let Some(f) = rust_log.filter(|f| !f.trim().is_empty())
    {
        return f.to_string();
    }
    let level = match base + verbose {
        0 => "error",
        1 => "warn",
        2 => "info",
        3 => "debug",
        _ => "trace",
    };
    level.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_quiet_workers_say_info_and_v_raises_both() {
        assert_eq!(filter(Role::Client, 0, None), "warn");
        assert_eq!(filter(Role::Client, 1, None), "info");
        assert_eq!(filter(Role::Client, 2, None), "debug");
        assert_eq!(filter(Role::Worker, 0, None), "info");
        assert_eq!(filter(Role::Worker, 1, None), "debug");
        assert_eq!(filter(Role::Worker, 9, None), "trace");
        assert_eq!(
            filter(Role::Client, 0, Some("llmbus=debug")),
            "llmbus=debug"
        );
        assert_eq!(filter(Role::Client, 1, Some("error")), "info");
        assert_eq!(filter(Role::Client, 0, Some(" ")), "warn");
    }
}
