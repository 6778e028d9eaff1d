//! The real helm CLI in three versions, and chart repositories it builds.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

pub const HELM_VERSIONS: [&str; 3] = ["v3.17.3", "v3.18.0", "v4.1.4"];

pub fn helm_upstream(name: &str, url: &str) -> String {
    format!("  - name: {name}\n    kind: helm\n    url: {url}\n    index_ttl: 1s\n")
}

/// The helm CLI of one version, with its own HOME so tests never touch a user's config.
pub struct Helm {
    bin: PathBuf,
    pub home: tempfile::TempDir,
}

impl Helm {
    pub fn new(version: &str) -> Helm {
        let bin = require(&format!(
            "{}/target/test-tools/helm-{version}",
            env!("CARGO_MANIFEST_DIR")
        ));
        Helm {
            bin,
            home: tempfile::tempdir().unwrap(),
        }
    }

    /// Runs helm; returns stdout, panicking with stderr when it fails.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.try_run(args);
        match out {
            Ok(s) => s,
            Err(e) => panic!("helm {args:?} failed: {e}"),
        }
    }

    /// `helm pull oci://<from> --version <v> --plain-http -d <dest>`, returning the bytes of
    /// the pulled archive named `file`.
    pub fn pull_oci(&self, from: &str, version: &str, dest: &Path, file: &str) -> Vec<u8> {
        if let Err(e) = self.try_pull_oci(from, version, dest) {
            panic!("helm pull oci://{from} --version {version} failed: {e}");
        }
        let path = dest.join(file);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(path).unwrap();
        bytes
    }

    /// `helm pull oci://<from> --version <v> --plain-http -d <dest>`, helm's stderr on failure.
    pub fn try_pull_oci(&self, from: &str, version: &str, dest: &Path) -> Result<String, String> {
        self.try_run(&[
            "pull",
            &format!("oci://{from}"),
            "--version",
            version,
            "--plain-http",
            "-d",
            dest.to_str().unwrap(),
        ])
    }

    /// `helm push <archive> oci://<registry>/<namespace> --plain-http`.
    pub fn push(&self, archive: &Path, registry: &str, namespace: &str) {
        self.run(&[
            "push",
            archive.to_str().unwrap(),
            &format!("oci://{registry}/{namespace}"),
            "--plain-http",
        ]);
    }

    pub fn try_run(&self, args: &[&str]) -> Result<String, String> {
        let h = self.home.path();
        stdout_or_stderr(
            Command::new(&self.bin)
                .args(args)
                .env("HOME", h)
                .env("HELM_CACHE_HOME", h.join("cache"))
                .env("HELM_CONFIG_HOME", h.join("config"))
                .env("HELM_DATA_HOME", h.join("data"))
                .output()
                .unwrap(),
        )
    }
}

/// A chart repository built by the real helm: `helm create`, `helm package`, `helm repo index`
/// (with `--url` when `base_url` is given, else relative URLs).
pub struct ChartRepo {
    pub dir: tempfile::TempDir,
}

impl ChartRepo {
    pub fn new(charts: &[(&str, &str)]) -> ChartRepo {
        let helm = Helm::new("v4.1.4");
        let dir = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        for (name, version) in charts {
            let src = work.path().join(name);
            if !src.exists() {
                helm.run(&["create", src.to_str().unwrap()]);
            }
            helm.run(&[
                "package",
                src.to_str().unwrap(),
                "--version",
                version,
                "-d",
                dir.path().to_str().unwrap(),
            ]);
        }
        ChartRepo { dir }
    }

    pub fn index(&self, base_url: Option<&str>) {
        let helm = Helm::new("v4.1.4");
        let mut args = vec!["repo", "index", self.dir.path().to_str().unwrap()];
        if let Some(u) = base_url {
            args.extend(["--url", u]);
        }
        helm.run(&args);
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    pub fn bytes(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.path(file)).unwrap()
    }
}
