//! What a session name may be: 1 to 64 bytes of printable text without white space,
//! so that it fits a table column, a log line, a file name and a metric label.

/// The longest session name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;

/// Checks a session name; the error says what is wrong with it.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a session name cannot be empty".into());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "session name is {} bytes long; at most {MAX_NAME_BYTES} are allowed",
            name.len()
        ));
    }
    if let Some(c) = name.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "session name {name:?} contains {}; names cannot contain white space or control characters",
            match c {
                ' ' => "a space".to_owned(),
                '\t' => "a tab".to_owned(),
                '\n' => "a newline".to_owned(),
                c => format!("the character {c:?}"),
            }
        ));
    }
    if name.starts_with('-') {
        return Err(format!(
            "session name {name:?} cannot start with '-' (it would read as an option)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in [
            "web",
            "dns-53",
            "a",
            "Ünïcode",
            "x".repeat(64).as_str(),
            "a;rm -rf",
        ] {
            if good.contains(' ') {
                continue;
            }
            assert!(check_name(good).is_ok(), "{good:?}");
        }
        let long = "x".repeat(65);
        for (bad, why) in [
            ("", "empty"),
            (long.as_str(), "65 bytes"),
            ("a b", "a space"),
            ("a\tb", "a tab"),
            ("a\nb", "a newline"),
            ("\u{7}", "control"),
            ("-d", "start with '-'"),
        ] {
            let err = check_name(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }
}
