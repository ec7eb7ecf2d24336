//! Gives liblaminar.so its SONAME. The C ABI follows the crate's version as Cargo reads semver:
//! while the major version is 0 a minor release may break it, so the SONAME names major and minor
//! (`liblaminar.so.0.1`); from 1.0 on it names the major only (`liblaminar.so.1`). The Makefile
//! and scripts/dist.sh install the library under the full version with the usual links.

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".into());
    let minor = std::env::var("CARGO_PKG_VERSION_MINOR").unwrap_or_else(|_| "0".into());
    let abi = if major == "0" { format!("0.{minor}") } else { major };
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os != "macos" && os != "ios" && os != "windows" {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,liblaminar.so.{abi}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
