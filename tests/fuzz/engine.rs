//! The fuzzing engine: a mutation loop on the stable toolchain, with no
//! compiler instrumentation and no dependency.
//!
//! Each case takes an input from the corpus (the target's seeds, the
//! regression files, and whatever this run kept), applies one to eight
//! havoc-style mutations (bit flips, interesting integers, inserted,
//! deleted, duplicated or spliced ranges, dictionary tokens, rewritten
//! numbers), and runs the target under `catch_unwind`. Without coverage
//! counters, the feedback is the target's *outcome*: a short label of what
//! the parser concluded (which error, which variant). An input reaching an
//! outcome not seen before joins the corpus, so the search climbs through
//! the parser's error paths one layer at a time. A panic that escapes the
//! target is a finding: the input is written to `tests/fuzz_corpus/TARGET/`,
//! where the replay test runs it on every `make test`.

use std::collections::HashSet;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A parser under test: seeds, a dictionary, and a function from bytes to
/// an outcome label.
pub struct Target {
    pub name: &'static str,
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Tokens the parser cares about, spliced in by the mutator.
    pub dictionary: &'static [&'static [u8]],
    pub run: fn(&[u8]) -> String,
    /// Inputs are cut to this many bytes.
    pub max_len: usize,
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Report {
    pub cases: u64,
    pub outcomes: usize,
    pub corpus: usize,
    /// Panics caught inside the code under test (decoders are shielded);
    /// they became errors, not crashes.
    pub contained_panics: u64,
    /// Inputs whose panic escaped the target, as written to disk.
    pub crashes: Vec<(PathBuf, String)>,
    /// The slowest case.
    pub slowest: Duration,
    /// A few outcomes, to see what the search reached.
    pub sample: Vec<String>,
}

/// The message of the last panic on this process, for crash reports.
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);
static PANICS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Replaces the panic hook with one that records instead of printing: the
/// code under test may catch panics of its own (decoders are shielded), and
/// thousands of backtraces would drown the report.
pub fn quiet_panics() {
    panic::set_hook(Box::new(|info| {
        PANICS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{message}{at}"));
    }));
}

/// Runs `target` on `input`; `Err` carries the panic message.
pub fn run_once(target: &Target, input: &[u8]) -> Result<String, String> {
    panic::catch_unwind(AssertUnwindSafe(|| (target.run)(input)))
        .map_err(|_| LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default())
}

/// Where a target's regression files live.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus").join(target)
}

/// Every regression file of every target.
pub fn regression_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|dir| std::fs::read_dir(dir.path()).into_iter().flatten().flatten())
        .map(|f| f.path())
        .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"))
        .collect();
    files.sort();
    files
}

/// Fuzzes `target` for `duration`, from a seed for the mutator.
pub fn fuzz(target: &Target, duration: Duration, seed: u64) -> Report {
    quiet_panics();
    let mut rng = Rng::new(seed);
    let mut corpus: Vec<Vec<u8>> = (target.seeds)();
    corpus.extend(regression_files().iter().filter_map(|p| std::fs::read(p).ok()));
    let mut outcomes = HashSet::new();
    let mut report = Report::default();
    for input in &corpus {
        if let Ok(outcome) = run_once(target, input) {
            outcomes.insert(outcome);
        }
    }
    let started = Instant::now();
    let before = PANICS.load(std::sync::atomic::Ordering::Relaxed);
    while started.elapsed() < duration {
        let base = &corpus[rng.below(corpus.len())];
        let other = &corpus[rng.below(corpus.len())];
        let input = mutate(&mut rng, base, other, target.dictionary, target.max_len);
        let t = Instant::now();
        let result = run_once(target, &input);
        report.slowest = report.slowest.max(t.elapsed());
        report.cases += 1;
        match result {
            Ok(outcome) => {
                if outcomes.insert(outcome) && corpus.len() < 10_000 {
                    corpus.push(input);
                }
            }
            Err(message) => {
                let path = save_crash(target.name, &input);
                eprintln!("CRASH in {}: {message}\n  input: {}", target.name, path.display());
                report.crashes.push((path, message));
            }
        }
    }
    let escaped = report.crashes.len() as u64;
    report.contained_panics = PANICS.load(std::sync::atomic::Ordering::Relaxed) - before - escaped;
    report.outcomes = outcomes.len();
    report.sample = outcomes.into_iter().take(8).collect();
    report.corpus = corpus.len();
    report
}

fn save_crash(target: &str, input: &[u8]) -> PathBuf {
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir).expect("creating the corpus folder");
    // FNV-1a names the file by its content, so a crash found twice is one file.
    let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    let path = dir.join(format!("crash-{hash:016x}"));
    std::fs::write(&path, input).expect("writing a crash file");
    path
}

/// xorshift64*: fast, and enough for choosing mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

const INTERESTING: [u64; 12] =
    [0, 1, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0xffff, 0x7fff_ffff, 0xffff_ffff, u64::MAX >> 1, u64::MAX];
const NUMBERS: [&str; 10] =
    ["0", "-1", "1", "65535", "4294967296", "18446744073709551616", "1e308", "-0", "NaN", "99999999999999999999999"];

/// One to eight mutations of `base`; `other` is the splice partner.
pub fn mutate(rng: &mut Rng, base: &[u8], other: &[u8], dictionary: &[&[u8]], max_len: usize) -> Vec<u8> {
    let mut data = base.to_vec();
    for _ in 0..1 + rng.below(8) {
        let len = data.len();
        let at = rng.below(len + 1);
        match rng.below(13) {
            0 if len > 0 => data[at.min(len - 1)] ^= 1 << rng.below(8),
            1 if len > 0 => data[at.min(len - 1)] = rng.next() as u8,
            2 if len > 0 => data[at.min(len - 1)] = INTERESTING[rng.below(5)] as u8,
            3 if len >= 4 => {
                let v = INTERESTING[rng.below(INTERESTING.len())];
                let bytes = if rng.below(2) == 0 { (v as u32).to_le_bytes() } else { (v as u32).to_be_bytes() };
                let at = at.min(len - 4);
                data[at..at + 4].copy_from_slice(&bytes);
            }
            4 => {
                let n = 1 + rng.below(16);
                let fresh: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                data.splice(at..at, fresh);
            }
            5 if len > 0 => {
                let n = 1 + rng.below((len - at.min(len - 1)).min(64));
                data.drain(at.min(len - 1)..(at.min(len - 1) + n).min(len));
            }
            6 if len > 0 => {
                let from = rng.below(len);
                let n = 1 + rng.below((len - from).min(256));
                let chunk = data[from..from + n].to_vec();
                data.splice(at..at, chunk);
            }
            7 if !other.is_empty() => {
                let from = rng.below(other.len());
                let n = 1 + rng.below((other.len() - from).min(512));
                data.splice(at..at, other[from..from + n].iter().copied());
            }
            8 if !dictionary.is_empty() => {
                let token = dictionary[rng.below(dictionary.len())];
                data.splice(at..at, token.iter().copied());
            }
            9 if !dictionary.is_empty() && len > 0 => {
                let token = dictionary[rng.below(dictionary.len())];
                let at = at.min(len - 1);
                let end = (at + token.len()).min(len);
                data.splice(at..end, token.iter().copied());
            }
            10 if len > 1 => data.truncate(rng.below(len)),
            11 if len > 0 => {
                let i = at.min(len - 1);
                data[i] = data[i].wrapping_add((rng.below(70) as u8).wrapping_sub(35));
            }
            12 => rewrite_number(rng, &mut data),
            _ => {}
        }
    }
    data.truncate(max_len);
    data
}

/// Replaces one run of ASCII digits with an extreme number.
fn rewrite_number(rng: &mut Rng, data: &mut Vec<u8>) {
    let starts: Vec<usize> =
        (0..data.len()).filter(|&i| data[i].is_ascii_digit() && (i == 0 || !data[i - 1].is_ascii_digit())).collect();
    if starts.is_empty() {
        return;
    }
    let start = starts[rng.below(starts.len())];
    let end = (start..data.len()).find(|&i| !data[i].is_ascii_digit()).unwrap_or(data.len());
    let number = NUMBERS[rng.below(NUMBERS.len())];
    data.splice(start..end, number.bytes());
}
