//! Writes `preprocess::prepare`'s 224x224 RGB8 output of each photo given, as
//! raw bytes, to OUT_DIR/NAME.rgb, so a script can compare Lens's model input
//! with the Pillow reference's pixel by pixel (`tools/prepare_diff.py`):
//!
//!     cargo build --release --example prepare_dump
//!     target/release/examples/prepare_dump OUT_DIR PHOTO...

use lens::model::ResizeSpec;
use lens::preprocess::prepare;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(out) = args.next() else {
        eprintln!("usage: prepare_dump OUT_DIR PHOTO...");
        std::process::exit(2);
    };
    let spec = ResizeSpec::center_crop(224);
    for photo in args {
        let path = std::path::Path::new(&photo);
        let name = path.file_name().expect("a file name").to_string_lossy();
        match std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|b| prepare(&b, &spec, 100_000_000).map_err(|e| e.to_string()))
        {
            Ok(p) => std::fs::write(format!("{out}/{name}.rgb"), &p.rgb).expect("a writable OUT_DIR"),
            Err(e) => eprintln!("{photo}: {e}"),
        }
    }
}
