//! The user documentation holds together: every relative link in README.md
//! and under docs/ points at a file that exists and, with `#anchor`, at a
//! heading of that file (GitHub's anchor rules); the README stays short and
//! opens with the two commands.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The lines of a Markdown text outside fenced code blocks, with their numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push((i + 1, line));
        }
    }
    out
}

/// `line` without its inline code spans, so `[a](b)` inside backticks is no link.
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
        } else if !in_code {
            out.push(c);
        }
    }
    out
}

/// The targets of the inline links and images on one line: `[text](target)`.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let mut targets = Vec::new();
    let mut rest = line.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        // A title (`(file "title")`) is not part of the target.
        let target = after[..end].split_whitespace().next().unwrap_or("");
        targets.push(target.trim_matches(|c| c == '<' || c == '>').to_owned());
        rest = &after[end..];
    }
    targets
}

/// GitHub's anchor for a heading's text: the rendered text lowercased, every
/// character that is not a letter, digit, space, `-` or `_` dropped, spaces
/// made `-`.
fn slug(heading: &str) -> String {
    // A link in a heading renders as its text.
    let mut text = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        match rest[open..].find("](").and_then(|mid| rest[open + mid..].find(')').map(|end| (mid, open + mid + end))) {
            Some((mid, close)) => {
                text.push_str(&rest[..open]);
                text.push_str(&rest[open + 1..open + mid]);
                rest = &rest[close + 1..];
            }
            None => break,
        }
    }
    text.push_str(rest);
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Every anchor a Markdown file offers: one per heading, with GitHub's `-1`,
/// `-2` suffixes for repeated headings.
fn anchors(text: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&line[hashes..]);
        let mut candidate = base.clone();
        let mut n = 0;
        while seen.contains(&candidate) {
            n += 1;
            candidate = format!("{base}-{n}");
        }
        seen.insert(candidate);
    }
    seen
}

/// The broken relative links of one Markdown file, as readable messages.
fn broken_links(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let dir = file.parent().unwrap();
    let mut broken = Vec::new();
    for (number, line) in prose_lines(&text) {
        for target in link_targets(line) {
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let resolved = if path.is_empty() { file.to_path_buf() } else { dir.join(path) };
            let place = format!("{}:{number}: {target}", file.strip_prefix(root()).unwrap_or(file).display());
            if !resolved.exists() {
                broken.push(format!("{place}: no such file {}", resolved.display()));
                continue;
            }
            if let Some(anchor) = anchor {
                let is_markdown = resolved.extension().is_some_and(|e| e == "md");
                let offered =
                    if is_markdown { anchors(&std::fs::read_to_string(&resolved).unwrap()) } else { HashSet::new() };
                if !offered.contains(anchor) {
                    broken.push(format!("{place}: no heading #{anchor} in {}", resolved.display()));
                }
            }
        }
    }
    broken
}

/// README.md and every Markdown file under docs/.
fn documents() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md"), root().join("CHANGELOG.md")];
    let mut dirs = vec![root().join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let files = documents();
    for page in
        ["getting-started", "api", "models", "deployment", "operations", "benchmarks", "architecture", "testing"]
    {
        let path = root().join("docs").join(format!("{page}.md"));
        assert!(files.contains(&path), "docs/{page}.md is missing");
    }
    let broken: Vec<String> = files.iter().flat_map(|f| broken_links(f)).collect();
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_is_short_and_starts_with_the_two_commands() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(lines <= 250, "README.md has {lines} lines; at most 250 (move details into docs/)");

    let first_block: Vec<&str> = readme
        .split("```")
        .nth(1)
        .expect("README.md has a code block")
        .lines()
        .skip(1) // the fence's language
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(first_block, ["make run", "make test"], "the README's first commands");
}

#[test]
fn the_checker_finds_a_missing_file_a_missing_heading_and_honours_duplicates() {
    let tmp = tempfile::tempdir().unwrap();
    let page = tmp.path().join("page.md");
    std::fs::write(
        tmp.path().join("other.md"),
        "# Other\n\n## Engines and precision\n\n## `lens eval`: accuracy\n\n## Notes\n\n## Notes\n\n```\n# Not a heading\n```\n",
    )
    .unwrap();
    std::fs::write(
        &page,
        "# Page\n\n\
         [fine](other.md#engines-and-precision) [code](other.md#lens-eval-accuracy) [second](other.md#notes-1)\n\
         [self](#page) `[not a link](nowhere.md)` [web](https://example.invalid/x)\n\
         [gone](missing.md) [no heading](other.md#engines) [fenced](other.md#not-a-heading) [third](other.md#notes-2)\n",
    )
    .unwrap();
    let broken = broken_links(&page);
    let found = |what: &str| broken.iter().any(|b| b.contains(what));
    assert_eq!(broken.len(), 4, "{broken:#?}");
    assert!(found("missing.md: no such file"), "{broken:#?}");
    assert!(found("other.md#engines: no heading"), "{broken:#?}");
    assert!(found("other.md#not-a-heading: no heading"), "{broken:#?}");
    assert!(found("other.md#notes-2: no heading"), "{broken:#?}");
}
