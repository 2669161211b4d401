//! Failpoints: named places in the write paths where the crash tests (`tests/crash.rs`) kill
//! the process, to check that the next run settles whatever the crash left.
//!
//! `crate::failpoint!("name")` compiles to nothing unless the crate is built with the
//! `failpoints` feature (never in release builds: the Dockerfile and `cargo install` leave it
//! off). With it, `S3CSE_FAILPOINT=name` aborts the process the first time `name` is reached,
//! `name@N` the N-th time; several may be given, comma-separated. Abort, not exit: no
//! destructor, flush or graceful stop runs, as when a pod is OOM-killed.
//!
//! The points, in the order a write reaches them: `rewrite-before-put`,
//! `upload-before-complete` (multipart rewrites), `rewrite-after-put`, `rewrap-before-copy`,
//! `copy-before-complete` (multipart copies), `rewrap-after-copy`,
//! `rotate-before-instruction-put`, `rotate-after-instruction-put` (`--keep-instruction-files`),
//! `after-verify`, `before-instruction-delete`, `before-record` (the outcome's store write);
//! `version-before-record` (`--noncurrent delete`: a version deleted, its deletion not yet
//! recorded).

/// Marks a failpoint; see the module documentation.
#[macro_export]
macro_rules! failpoint {
    ($name:literal) => {{
        #[cfg(feature = "failpoints")]
        $crate::failpoint::hit($name);
    }};
}

/// Aborts the process if `S3CSE_FAILPOINT` names `name` and this is the hit it names.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static HITS: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);
    let Ok(spec) = std::env::var("S3CSE_FAILPOINT") else {
        return;
    };
    for item in spec.split(',').map(str::trim) {
        let (point, nth) = match item.split_once('@') {
            Some((p, n)) => (p, n.parse::<u32>().unwrap_or(1)),
            None => (item, 1),
        };
        if point != name {
            continue;
        }
        let count = match HITS.lock() {
            Ok(mut g) => {
                let c = g
                    .get_or_insert_with(HashMap::new)
                    .entry(name.to_owned())
                    .or_default();
                *c += 1;
                *c
            }
            Err(_) => return,
        };
        if count == nth {
            eprintln!("s3cse: failpoint {name} (hit {count}): aborting");
            std::process::abort();
        }
    }
}
