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

/// Parses `--addresses=HOST:PORT,HOST:PORT`.
pub(crate) fn parse_addresses(text: &str) -> Result<Vec<SocketAddr>, String> {
    let mut addresses = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let address = part
            .to_socket_addrs()
            .ok()
            .and_then(|mut resolved| resolved.next())
            .ok_or_else(|| format!("'{part}' is not an address (HOST:PORT)"))?;
        addresses.push(address);
    }
    if addresses.is_empty() || addresses.len() > crate::constants::REPLICAS_MAX {
        return Err("--addresses must list 1 to 7 replicas".to_string());
    }
    Ok(addresses)
}
