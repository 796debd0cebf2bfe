//! The `lens` binary's own description of itself: `--version` names the
//! version, the commit it was built from and the engines it can load.

use std::process::Command;

fn lens(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_lens")).args(args).output().unwrap();
    assert!(out.status.success(), "lens {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// What git says HEAD is, if this is a git checkout with git installed.
fn git_head() -> Option<String> {
    let out = Command::new("git").args(["rev-parse", "HEAD"]).current_dir(env!("CARGO_MANIFEST_DIR")).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[test]
fn version_names_the_version_the_commit_and_both_engines() {
    let text = lens(&["--version"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&format!("lens {}", env!("CARGO_PKG_VERSION")).as_str()), "{text}");

    let commit =
        lines.iter().find_map(|l| l.strip_prefix("commit: ")).unwrap_or_else(|| panic!("no commit line: {text}"));
    match git_head() {
        // Built from this checkout: an abbreviation of HEAD (or of the commit
        // before, if a commit landed after the build; then it is still hex).
        Some(head) => {
            assert!(commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit()), "commit {commit:?}: {text}");
            let recent = Command::new("git")
                .args(["rev-list", "--max-count=50", "HEAD"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .output()
                .unwrap();
            let recent = String::from_utf8_lossy(&recent.stdout);
            assert!(
                head.starts_with(commit) || recent.lines().any(|c| c.starts_with(commit)),
                "commit {commit:?} is not HEAD ({head}) or a recent ancestor"
            );
        }
        None => assert_eq!(commit, "unknown", "{text}"),
    }

    let engines =
        lines.iter().find_map(|l| l.strip_prefix("engines: ")).unwrap_or_else(|| panic!("no engines line: {text}"));
    for (name, flag) in [("ONNX Runtime", "onnxruntime"), ("OpenVINO", "openvino")] {
        assert!(engines.contains(name) && engines.contains(&format!("--engine {flag}")), "{name}: {text}");
    }
}

#[test]
fn short_version_is_one_line_with_the_commit() {
    let text = lens(&["-V"]);
    let long = lens(&["--version"]);
    let commit = long.lines().find_map(|l| l.strip_prefix("commit: ")).unwrap();
    assert_eq!(text.trim_end(), format!("lens {} ({commit})", env!("CARGO_PKG_VERSION")));
}
