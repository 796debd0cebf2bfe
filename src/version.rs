//! What `lens --version` prints: the crate version, the git commit the binary
//! was built from (recorded by `build.rs`; "unknown" when built outside a git
//! checkout), and the inference engines it can load.

use std::sync::OnceLock;

use crate::engine::Engine;

/// The commit this binary was built from, as `git rev-parse --short HEAD` said.
pub const COMMIT: &str = env!("LENS_GIT_COMMIT");

/// `lens -V`: the version and the commit.
pub const SHORT: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("LENS_GIT_COMMIT"), ")");

/// Every engine this binary can load. Both are linked at run time: ONNX
/// Runtime through the `ort` crate, OpenVINO through the `openvino` crate.
pub const ENGINES: [Engine; 2] = [Engine::OnnxRuntime, Engine::OpenVino];

/// `lens --version`: version, commit and engines, one per line.
pub fn long() -> &'static str {
    static LONG: OnceLock<String> = OnceLock::new();
    LONG.get_or_init(|| {
        let engines: Vec<String> = ENGINES
            .iter()
            .map(|&e| format!("{} (--engine {}, via the {} crate)", e.name(), e.as_str(), binding(e)))
            .collect();
        format!("{}\ncommit: {COMMIT}\nengines: {}", env!("CARGO_PKG_VERSION"), engines.join(", "))
    })
}

/// The Rust crate that binds an engine's C library.
fn binding(engine: Engine) -> &'static str {
    match engine {
        Engine::OnnxRuntime => "ort",
        Engine::OpenVino => "openvino",
    }
}
