//! nginx serving a directory: chart repositories and static "registries".

use std::path::Path;
use std::process::{Command, Stdio};

use super::*;

/// nginx serving `root` as a static site, with an access log for counting upstream requests.
pub fn nginx(root: &Path) -> Proc {
    let bin = require("/usr/sbin/nginx");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let p = dir.path().display();
    let conf = format!(
        "daemon off; master_process off; pid {p}/nginx.pid; error_log {p}/error.log;\n\
         events {{}}\n\
         http {{\n  access_log {p}/access.log; sendfile on;\n  \
         client_body_temp_path {p}/t1; proxy_temp_path {p}/t2; fastcgi_temp_path {p}/t3;\n  \
         uwsgi_temp_path {p}/t4; scgi_temp_path {p}/t5;\n  \
         types {{ application/gzip tgz; application/x-yaml yaml; }}\n  \
         server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n",
        root = root.display()
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let child = Command::new(bin)
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .arg("-p")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port, "nginx");
    Proc { child, port, dir }
}

/// How many requests nginx has logged for paths containing `needle`.
pub fn nginx_hits(n: &Proc, needle: &str) -> usize {
    std::thread::sleep(Duration::from_millis(50));
    std::fs::read_to_string(n.dir.path().join("access.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}
