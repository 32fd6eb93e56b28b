//! Names the commit the binary was built from, for `agora_build_info`:
//! `AGORA_GIT_COMMIT` when the build sets it (an image built without the
//! repository), else `git rev-parse`, else nothing ("unknown").

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=AGORA_GIT_COMMIT");
    let commit = std::env::var("AGORA_GIT_COMMIT").ok().or_else(|| {
        let top = Command::new("git")
            .args(["rev-parse", "--show-toplevel"])
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        let top = String::from_utf8(top.stdout).ok()?;
        let git_dir = std::path::Path::new(top.trim()).join(".git");
        println!("cargo:rerun-if-changed={}", git_dir.join("HEAD").display());
        println!("cargo:rerun-if-changed={}", git_dir.join("refs").display());
        let out = Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        String::from_utf8(out.stdout)
            .ok()
            .map(|s| s.trim().to_owned())
    });
    if let Some(commit) = commit.filter(|c| !c.is_empty()) {
        println!("cargo:rustc-env=AGORA_GIT_COMMIT={commit}");
    }
}
