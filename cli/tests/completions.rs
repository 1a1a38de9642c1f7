//! `snapblk completions SHELL` prints a script that knows every verb.

use std::process::Command;

fn snapblk(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_snapblk"))
        .args(args)
        .output()
        .expect("run snapblk")
}

#[test]
fn bash_and_zsh_completions_name_every_verb() {
    for shell in ["bash", "zsh", "fish"] {
        let out = snapblk(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {:?}", out);
        let text = String::from_utf8_lossy(&out.stdout);
        for verb in [
            "create", "snapshot", "restore", "ship", "remote", "receive", "check",
        ] {
            assert!(text.contains(verb), "{shell} completion lacks {verb}");
        }
    }
}

#[test]
fn an_unknown_shell_is_refused_with_the_choices() {
    let out = snapblk(&["completions", "tcsh"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bash") && err.contains("zsh"), "{err}");
}
