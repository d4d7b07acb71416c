//! `--name value` arguments, by hand: three tiny binaries do not need a parser crate.

use std::collections::HashMap;
use std::str::FromStr;

/// The `--name value` pairs of the command line.
#[derive(Debug)]
pub struct Args {
    program: &'static str,
    values: HashMap<String, String>,
}

impl Args {
    /// Reads the process's arguments; only the names in `known` are accepted.
    pub fn from_env(program: &'static str, known: &[&str]) -> Result<Self, String> {
        Self::parse(program, known, std::env::args().skip(1))
    }

    fn parse(
        program: &'static str,
        known: &[&str],
        args: impl IntoIterator<Item = String>,
    ) -> Result<Self, String> {
        let mut values = HashMap::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let name = arg
                .strip_prefix("--")
                .filter(|n| known.contains(n))
                .ok_or_else(|| format!("{program}: unknown argument `{arg}`"))?;
            let value = args
                .next()
                .ok_or_else(|| format!("{program}: `--{name}` needs a value"))?;
            values.insert(name.to_owned(), value);
        }
        Ok(Self { program, values })
    }

    /// The value of `--name`, which must be given.
    pub fn required<T: FromStr>(&self, name: &str) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        match self.optional(name)? {
            Some(v) => Ok(v),
            None => Err(format!("{}: `--{name}` is required", self.program)),
        }
    }

    /// The value of `--name`, if given.
    pub fn optional<T: FromStr>(&self, name: &str) -> Result<Option<T>, String>
    where
        T::Err: std::fmt::Display,
    {
        self.values
            .get(name)
            .map(|v| {
                v.parse()
                    .map_err(|e| format!("{}: `--{name} {v}`: {e}", self.program))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        Args::parse("t", &["count", "store"], args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn values_by_name() {
        let args = parse(&["--count", "12", "--store", "sqlite:x.db"]).unwrap();
        assert_eq!(args.required::<u64>("count").unwrap(), 12);
        assert_eq!(args.required::<String>("store").unwrap(), "sqlite:x.db");
        assert_eq!(args.optional::<String>("other").unwrap(), None);
    }

    #[test]
    fn mistakes_are_errors() {
        assert!(parse(&["--cont", "12"]).is_err());
        assert!(parse(&["--count"]).is_err());
        assert!(parse(&["count", "12"]).is_err());
        assert!(
            parse(&["--count", "x"])
                .unwrap()
                .required::<u64>("count")
                .is_err()
        );
        assert!(parse(&[]).unwrap().required::<u64>("count").is_err());
    }
}
