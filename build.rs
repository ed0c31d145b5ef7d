//! Build script: rebuilds when migrations/ changes, and records the git
//! commit the binary is built from, for `orderflow_build_info{git_sha}`. `ORDERFLOW_GIT_SHA` set in the
//! environment wins (container builds have no `.git`); otherwise `git`
//! is asked; failing both, the metric says "unknown".

use std::process::Command;

fn main() {
    // sqlx::migrate! embeds migrations/ at compile time but does not tell
    // cargo that a *new* file there needs a rebuild; without this line an
    // incremental build kept running without the latest migration.
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-env-changed=ORDERFLOW_GIT_SHA");
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let sha = std::env::var("ORDERFLOW_GIT_SHA")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        });
    if let Some(sha) = sha {
        println!("cargo:rustc-env=ORDERFLOW_GIT_SHA={sha}");
    }
}
