//! How a failed verb is reported: one line on stderr, and an exit status.

use std::fmt;

/// A failure that asks for an exit status other than the usual 1 (see `check`).
#[derive(Debug)]
pub struct Exit {
    /// The process exit status.
    pub code: u8,
    /// The line to print (naming the object and the fix).
    pub message: String,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// The exit status for `e`.
pub fn code(e: &anyhow::Error) -> u8 {
    e.downcast_ref::<Exit>().map_or(1, |x| x.code)
}

/// The one line shown for `e`: its chain of causes joined by ": ".
///
/// Error types that print their source inside their own message (the engine's `Io`,
/// the target's `Engine`, thiserror's usual `"{what}: {source}"`) also hand that source
/// on as the next cause, so printing the whole chain (anyhow's `{:#}`) says it twice
/// ("Is a directory (os error 21): Is a directory (os error 21)"). A cause whose text
/// the message above it already contains adds nothing and is left out.
pub fn message(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut above = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !text.is_empty() && !above.contains(&text) {
            parts.push(text.clone());
        }
        above = text;
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_source_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::from_raw_os_error(21);
        let e = snapmap::Error::Io {
            what: "read superblock of store /s".into(),
            source: io,
        };
        let e = Err::<(), _>(e).context("open store /s").unwrap_err();
        assert_eq!(
            message(&e),
            "open store /s: read superblock of store /s: Is a directory (os error 21)"
        );
        // Plain contexts are all kept.
        let e = Err::<(), _>(anyhow::anyhow!("inner"))
            .context("outer")
            .unwrap_err();
        assert_eq!(message(&e), "outer: inner");
    }
}
