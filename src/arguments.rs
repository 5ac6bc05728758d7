//! Command-line arguments as every subcommand takes them: `--name=value` flags checked against
//! the ones a command allows, positional arguments, and replica addresses. `cli` and
//! `cli_client` both stand on it.

use std::net::{SocketAddr, ToSocketAddrs};

/// Parsed `--name=value` flags and positional arguments.
pub(crate) struct Arguments {
    flags: Vec<(String, String)>,
    pub(crate) positionals: Vec<String>,
}

impl Arguments {
    /// Splits `arguments` into flags and positionals, rejecting flags not in `allowed`.
    pub(crate) fn parse(arguments: &[String], allowed: &[&str]) -> Result<Arguments, String> {
        let mut flags: Vec<(String, String)> = Vec::new();
        let mut positionals = Vec::new();
        for argument in arguments {
            if let Some(flag) = argument.strip_prefix("--") {
                let (name, value) = match flag.split_once('=') {
                    Some((name, value)) => (name, value),
                    None => (flag, ""),
                };
                if !allowed.contains(&name) {
                    return Err(format!("unknown option '--{name}'"));
                }
                if flags.iter().any(|(seen, _)| seen == name) {
                    return Err(format!("option '--{name}' given twice"));
                }
                flags.push((name.to_string(), value.to_string()));
            } else {
                positionals.push(argument.clone());
            }
        }
        Ok(Arguments { flags, positionals })
    }

    /// Takes each allowed flag not given on the command line from the environment variable
    /// `KIMBERLITE_<NAME>` (upper case, `-` as `_`), and the PATH argument, if none is given,
    /// from `KIMBERLITE_DATA_FILE`, as `variable` reads them: how a service manager passes a
    /// replica its settings (`docs/operating.md`). The command line wins.
    pub(crate) fn environment_fallback(
        &mut self,
        allowed: &[&str],
        variable: impl Fn(&str) -> Option<String>,
    ) {
        for name in allowed {
            if self.flag(name).is_none()
                && let Some(value) = variable(&environment_name(name))
            {
                self.flags.push((name.to_string(), value));
            }
        }
        if self.positionals.is_empty()
            && let Some(path) = variable(ENVIRONMENT_DATA_FILE)
        {
            self.positionals.push(path);
        }
    }

    pub(crate) fn flag(&self, name: &str) -> Option<&str> {
        self.flags.iter().find(|(seen, _)| seen == name).map(|(_, value)| value.as_str())
    }

    pub(crate) fn flag_required(&self, name: &str) -> Result<&str, String> {
        match self.flag(name) {
            None => Err(format!("missing required option '--{name}=...'")),
            Some("") => Err(format!("option '--{name}' needs a value ('--{name}=...')")),
            Some(value) => Ok(value),
        }
    }

    pub(crate) fn integer<T: std::str::FromStr>(&self, name: &str) -> Result<T, String> {
        let value = self.flag_required(name)?;
        value.parse().map_err(|_| format!("'--{name}={value}' is not a valid number"))
    }

    /// The value of `--name`, or `default` if it is not given.
    pub(crate) fn integer_or<T: std::str::FromStr>(
        &self,
        name: &str,
        default: T,
    ) -> Result<T, String> {
        match self.flag(name) {
            None => Ok(default),
            Some(_) => self.integer(name),
        }
    }

    /// The single positional PATH argument.
    pub(crate) fn path(&self) -> Result<&str, String> {
        match self.positionals.as_slice() {
            [path] => Ok(path.as_str()),
            [] => Err("missing PATH argument".to_string()),
            [_, extra, ..] => Err(format!("unexpected argument '{extra}'")),
        }
    }
}

/// The environment variable that stands in for the PATH argument of `start`.
pub(crate) const ENVIRONMENT_DATA_FILE: &str = "KIMBERLITE_DATA_FILE";

/// The environment variable that stands in for flag `--name` (`environment_fallback`).
pub(crate) fn environment_name(name: &str) -> String {
    format!("KIMBERLITE_{}", name.to_uppercase().replace('-', "_"))
}

/// One HOST:PORT address, resolved.
pub(crate) fn parse_address(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    text.to_socket_addrs()
        .ok()
        .and_then(|mut resolved| resolved.next())
        .ok_or_else(|| format!("'{text}' is not an address (HOST:PORT)"))
}

/// Parses `--addresses=HOST:PORT,HOST:PORT`.
pub(crate) fn parse_addresses(text: &str) -> Result<Vec<SocketAddr>, String> {
    let mut addresses = Vec::new();
    for part in text.split(',') {
        addresses.push(parse_address(part)?);
    }
    if addresses.is_empty() || addresses.len() > crate::constants::REPLICAS_MAX {
        return Err("--addresses must list 1 to 7 replicas".to_string());
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_takes_flags_and_path_from_the_environment_when_the_command_line_lacks_them() {
        // Goal: `KIMBERLITE_<FLAG>` and `KIMBERLITE_DATA_FILE` stand in for a missing flag and
        // PATH; the command line wins; the systemd unit sets exactly the variables `start`
        // reads (one per flag, and the data file).
        let environment = |name: &str| match name {
            "KIMBERLITE_ADDRESSES" => Some("10.0.0.1:3001".to_string()),
            "KIMBERLITE_DATA_FILE" => Some("/var/lib/kimberlite/0_0.kimberlite".to_string()),
            _ => None,
        };
        let mut arguments = Arguments::parse(&[], &["addresses"]).unwrap();
        arguments.environment_fallback(&["addresses"], environment);
        assert_eq!(arguments.flag("addresses"), Some("10.0.0.1:3001"));
        assert_eq!(arguments.path(), Ok("/var/lib/kimberlite/0_0.kimberlite"));
        let given = ["--addresses=127.0.0.1:3001".to_string(), "here".to_string()];
        let mut arguments = Arguments::parse(&given, &["addresses"]).unwrap();
        arguments.environment_fallback(&["addresses"], environment);
        assert_eq!(arguments.flag("addresses"), Some("127.0.0.1:3001"));
        assert_eq!(arguments.path(), Ok("here"));
        let unit = include_str!("../docs/kimberlite.service");
        let mut set: Vec<&str> = unit
            .lines()
            .filter_map(|line| line.strip_prefix("Environment="))
            .filter_map(|assignment| assignment.split_once('=').map(|(name, _)| name))
            .collect();
        set.sort_unstable();
        let mut read: Vec<String> =
            crate::cli::START_FLAGS.iter().map(|flag| environment_name(flag)).collect();
        read.push(ENVIRONMENT_DATA_FILE.to_string());
        read.sort_unstable();
        assert_eq!(set, read);
    }
}
