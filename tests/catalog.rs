//! The catalog page, in a real browser (Debian's headless Chromium: the DOM it builds, and a
//! screenshot of each page type under `target/test-output/catalog/`), and over plain HTTP for
//! headers, access control and the fetch action. The charts are built by the real helm; one
//! of them is hostile (scripts and event attributes in its README, values, name text and
//! description, a 5 MB README, deeply nested Markdown).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

/// A chart made by `helm create`, with `files` written over it, packaged into `repo`.
fn package(repo: &Path, name: &str, version: &str, files: &[(&str, Vec<u8>)]) {
    let helm = Helm::new("v4.1.4");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join(name);
    helm.run(&["create", src.to_str().unwrap()]);
    for (f, data) in files {
        std::fs::write(src.join(f), data).unwrap();
    }
    helm.run(&[
        "package",
        src.to_str().unwrap(),
        "--version",
        version,
        "-d",
        repo.to_str().unwrap(),
    ]);
}

fn index(repo: &Path) {
    Helm::new("v4.1.4").run(&["repo", "index", repo.to_str().unwrap()]);
}

fn out_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-output/catalog");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn chromium(args: &[&str], url: &str) -> String {
    let bin = require("/usr/bin/chromium");
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The DOM Chromium builds for `url` (after any script would have run).
fn dom(url: &str) -> String {
    chromium(&["--dump-dom", "--virtual-time-budget=2000"], url)
}

fn screenshot(url: &str, name: &str) {
    let file = out_dir().join(format!("{name}.png"));
    let _ = std::fs::remove_file(&file);
    chromium(
        &[
            &format!("--screenshot={}", file.display()),
            "--window-size=1200,1400",
        ],
        url,
    );
    assert!(file.exists(), "no screenshot for {url}");
}

/// Nothing in a DOM can run: no script element, no event attribute, no javascript: URL.
fn inert(dom: &str) {
    let lower = dom.to_ascii_lowercase();
    assert!(!lower.contains("<script"), "a script element in the DOM");
    assert!(
        !lower.contains("javascript:"),
        "a javascript: URL in the DOM"
    );
    let mut rest = lower.as_str();
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        let tag_end = rest.find('>').unwrap_or(rest.len());
        let tag = &rest[..tag_end];
        for attr in tag.split_whitespace().skip(1) {
            assert!(
                !(attr.starts_with("on") && attr.contains('=')),
                "an event attribute {attr:?} in <{tag}>"
            );
        }
    }
}

fn html_get(url: &str, auth: Option<(&str, &str)>) -> reqwest::blocking::Response {
    let mut r = client().get(url).header("Accept", "text/html");
    if let Some((u, p)) = auth {
        r = r.basic_auth(u, Some(p));
    }
    r.send().unwrap()
}

#[test]
fn the_catalog_shows_people_what_the_mirror_holds_and_nothing_can_run() {
    let repo = tempfile::tempdir().unwrap();
    let readme =
        b"# Demo chart\n\nDeploys **demo**. See [the docs](https://example.com/docs).\n".to_vec();
    package(
        repo.path(),
        "demo",
        "0.1.0",
        &[("README.md", readme.clone())],
    );
    package(
        repo.path(),
        "demo",
        "0.2.0",
        &[("README.md", readme.clone())],
    );
    package(repo.path(), "demo", "1.0.0-rc.1", &[("README.md", readme)]);
    let mut hostile = String::from(
        "# Evil\n\n<script>alert(1)</script>\n\n<img src=x onerror=alert(2)>\n\n\
         [click me](javascript:alert(3)) <a href=\"https://x.io\" onclick=\"alert(4)\">x</a>\n\n\
         ![pixel](https://tracker.example.com/p.png)\n\n<iframe src=\"https://x.io\"></iframe>\n\n",
    );
    hostile.push_str(&format!("{}nested\n\n", "> ".repeat(5000)));
    hostile.push_str(&"padding text ".repeat(5 << 20 >> 4));
    package(
        repo.path(),
        "evil",
        "0.1.0",
        &[
            ("README.md", hostile.into_bytes()),
            (
                "values.yaml",
                b"banner: \"<script>alert(5)</script>\"\nimg: <img src=x onerror=alert(6)>\n".to_vec(),
            ),
            (
                "Chart.yaml",
                b"apiVersion: v2\nname: evil\nversion: 0.1.0\ndescription: \"<b onmouseover=alert(7)>bold</b><script>alert(8)</script>\"\nkeywords: [\"<i>kw</i>\"]\nmaintainers:\n  - name: \"<script>alert(9)</script>\"\n".to_vec(),
            ),
        ],
    );
    index(repo.path());
    let web = nginx(repo.path());
    let secrets = tempfile::tempdir().unwrap();
    write_htpasswd(&secrets.path().join("htpasswd"), "alice", "wonder-pw");
    // an OCI upstream holding a chart pushed by helm
    let reg = registry();
    let oci_charts = tempfile::tempdir().unwrap();
    package(
        oci_charts.path(),
        "ocidemo",
        "0.5.0",
        &[("README.md", b"# OCI demo\n\nFrom a registry.\n".to_vec())],
    );
    package(
        oci_charts.path(),
        "ocidemo",
        "0.6.0",
        &[("README.md", b"# OCI demo six\n".to_vec())],
    );
    for v in ["0.5.0", "0.6.0"] {
        Helm::new("v4.1.4").push(
            &oci_charts.path().join(format!("ocidemo-{v}.tgz")),
            &reg.host(),
            "charts",
        );
    }
    write_htpasswd(&secrets.path().join("vault.htpasswd"), "bob", "builder-pw");
    let ups = format!(
        "{}{}    access: {{htpasswd_file: {}}}\n{}{}    access: {{htpasswd_file: {}}}\n",
        helm_upstream("charts", &web.url()),
        helm_upstream("secret", &web.url()),
        secrets.path().join("htpasswd").display(),
        oci_upstream("reg", &reg.url(), "    charts: [charts/ocidemo]\n"),
        helm_upstream("vault", &web.url()),
        secrets.path().join("vault.htpasswd").display(),
    );
    let bridge = chartbridge_full(&ups, "", None, &[], "info");
    let u = bridge.url();
    // pull through: the index, demo 0.1.0 and evil 0.1.0 are cached; demo 0.2.0 is not
    assert_eq!(get(&format!("{u}/charts/index.yaml")).status(), 200);
    for (c, v) in [("demo", "0.1.0"), ("evil", "0.1.0")] {
        let r = get(&format!("{u}/charts/-/{c}/{v}/{c}-{v}.tgz"));
        assert_eq!(r.status(), 200);
    }

    // `/` is the page for a browser and what it always was for everyone else
    let home = html_get(&format!("{u}/"), None);
    assert_eq!(home.status(), 200);
    let csp = home.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("style-src 'self'"),
        "{csp}"
    );
    assert_eq!(home.headers()["x-content-type-options"], "nosniff");
    assert!(home.headers().contains_key("referrer-policy"));
    let plain = get(&format!("{u}/"));
    assert_ne!(
        plain
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string()),
        Some("text/html; charset=utf-8".into()),
        "a non-browser client does not get the page"
    );

    // home, in the browser: upstream state, counts, the protected upstream hidden
    let d = dom(&format!("{u}/-/"));
    inert(&d);
    assert!(d.contains("charts") && d.contains("fresh"), "{d}");
    assert!(
        !d.contains(">secret<"),
        "a protected upstream is not listed anonymously"
    );
    let with_creds = html_get(&format!("{u}/-/"), Some(("alice", "wonder-pw")))
        .text()
        .unwrap();
    assert!(with_creds.contains(">secret<"), "listed with credentials");
    assert!(!with_creds.contains(">vault<"), "not another upstream's");
    // alice browsing is not failing to log in to vault, however often she looks
    let failures = || {
        let m = get(&format!("{u}/metrics")).text().unwrap();
        metric(
            &m,
            "chartbridge_auth_failures_total",
            &["outcome=\"invalid\""],
        )
    };
    for _ in 0..8 {
        let r = html_get(&format!("{u}/-/"), Some(("alice", "wonder-pw")));
        assert_eq!(r.status(), 200);
    }
    assert_eq!(failures(), 0.0);
    let bob = html_get(&format!("{u}/-/"), Some(("bob", "builder-pw")))
        .text()
        .unwrap();
    assert!(bob.contains(">vault<") && !bob.contains(">secret<"));
    // credentials no upstream accepts count once per look
    html_get(&format!("{u}/-/"), Some(("mallory", "guess")));
    assert_eq!(failures(), 1.0);
    assert_eq!(html_get(&format!("{u}/-/u/secret"), None).status(), 401);
    assert_eq!(
        html_get(&format!("{u}/-/u/secret"), Some(("alice", "wonder-pw"))).status(),
        200
    );
    screenshot(&format!("{u}/-/"), "home");

    // search by description and keyword text
    let d = dom(&format!("{u}/-/?q=kw"));
    inert(&d);
    assert!(d.contains("/-/u/charts/c/evil"), "found by keyword");

    // upstream page
    let d = dom(&format!("{u}/-/u/charts"));
    inert(&d);
    assert!(
        d.contains("demo") && d.contains("0.2.0"),
        "newest stable listed"
    );
    assert!(
        d.contains("&lt;script&gt;alert(8)&lt;/script&gt;"),
        "description escaped"
    );
    screenshot(&format!("{u}/-/u/charts"), "upstream");

    // chart page: versions newest first, prerelease and latest marked, snippets for this host
    let d = dom(&format!("{u}/-/u/charts/c/demo"));
    inert(&d);
    let (p_rc, p_02, p_01) = (
        d.find(">1.0.0-rc.1<").unwrap(),
        d.find(">0.2.0<").unwrap(),
        d.find(">0.1.0<").unwrap(),
    );
    assert!(p_rc < p_02 && p_02 < p_01, "newest first");
    assert!(d.contains("prerelease") && d.contains("latest"));
    let host = bridge.host();
    assert!(
        d.contains(&format!(
            "helm pull oci://{host}/charts/demo --version 0.2.0 --plain-http"
        )),
        "{d}"
    );
    assert!(
        d.contains(&format!("url: oci://{host}/charts/demo")),
        "Flux OCIRepository"
    );
    assert!(
        d.contains(&format!("repoURL: http://{host}/charts")),
        "Argo CD"
    );
    screenshot(&format!("{u}/-/u/charts/c/demo"), "chart");

    // the hostile version page: its README rendered inert, values escaped, no remote image
    let evil = format!("{u}/-/u/charts/c/evil?version=0.1.0");
    let d = dom(&evil);
    inert(&d);
    assert!(d.contains("<h1>Evil</h1>"), "the README is rendered");
    assert!(d.contains("pixel"), "an image leaves its alt text");
    assert!(!d.contains("tracker.example.com"), "no remote image");
    assert!(!d.to_ascii_lowercase().contains("<iframe"));
    assert!(d.contains("README cut at 512 KiB"), "a 5 MB README is cut");
    assert!(
        d.contains("&lt;script&gt;alert(5)&lt;/script&gt;"),
        "values.yaml escaped"
    );
    let raw = html_get(&evil, None);
    assert!(raw.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'none'"));
    screenshot(&evil, "version-hostile");

    // fetch into cache: only from this origin, one upstream request, then the README shows
    let page_url = format!("{u}/-/u/charts/c/demo?version=0.2.0");
    let d = dom(&page_url);
    assert!(d.contains("Fetch into cache"), "{d}");
    let action = format!("{u}/-/u/charts/c/demo/fetch?version=0.2.0");
    let no_redirect = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let cross = no_redirect
        .post(&action)
        .header("Origin", "http://evil.example")
        .send()
        .unwrap();
    assert_eq!(cross.status(), 403, "a cross-site post is refused");
    assert_eq!(
        no_redirect.post(&action).send().unwrap().status(),
        403,
        "no origin"
    );
    assert_eq!(nginx_hits(&web, "/demo-0.2.0.tgz HTTP"), 0);
    for _ in 0..2 {
        let r = no_redirect
            .post(&action)
            .header("Origin", u.clone())
            .send()
            .unwrap();
        assert_eq!(r.status(), 303);
        assert_eq!(r.headers()["location"], "/-/u/charts/c/demo?version=0.2.0");
    }
    assert_eq!(nginx_hits(&web, "/demo-0.2.0.tgz HTTP"), 1, "fetched once");
    let d = dom(&page_url);
    inert(&d);
    assert!(d.contains("Deploys <strong>demo</strong>"), "{d}");
    assert!(d.contains("rel=\"noopener nofollow noreferrer\""));
    screenshot(&page_url, "version");

    // the most pulled charts on the home page
    let home = html_get(&format!("{u}/-/"), None).text().unwrap();
    assert!(home.contains("Most pulled"), "{home}");

    // an OCI upstream: its charts, tags, a containerd snippet, and the README once pulled
    let out = tempfile::tempdir().unwrap();
    Helm::new("v4.1.4").pull_oci(
        &format!("{}/reg/charts/ocidemo", bridge.host()),
        "0.5.0",
        out.path(),
        "ocidemo-0.5.0.tgz",
    );
    let d = dom(&format!("{u}/-/u/reg"));
    inert(&d);
    assert!(d.contains("charts/ocidemo") && d.contains("0.5.0"), "{d}");
    let d = dom(&format!("{u}/-/u/reg/c/charts/ocidemo"));
    inert(&d);
    assert!(d.contains(">0.5.0<") && d.contains("latest"), "{d}");
    assert!(
        d.contains(&format!(
            "/etc/containerd/certs.d/{}/hosts.toml",
            reg.host()
        )),
        "{d}"
    );
    let d = dom(&format!("{u}/-/u/reg/c/charts/ocidemo?version=0.5.0"));
    inert(&d);
    assert!(
        d.contains("<h1>OCI demo</h1>") && d.contains("OCI manifest"),
        "{d}"
    );
    // an OCI chart version not pulled yet: fetched into the cache from the page
    let six = format!("{u}/-/u/reg/c/charts/ocidemo?version=0.6.0");
    assert!(dom(&six).contains("Fetch into cache"));
    let r = no_redirect
        .post(format!("{u}/-/u/reg/c/charts/ocidemo/fetch?version=0.6.0"))
        .header("Origin", u.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    let d = dom(&six);
    inert(&d);
    assert!(d.contains("<h1>OCI demo six</h1>"), "{d}");

    // the upstream goes away: the home page says since when and why
    let mut web = web;
    web.stop();
    std::thread::sleep(std::time::Duration::from_millis(1200)); // index_ttl
    let r = get(&format!("{u}/charts/index.yaml"));
    assert_eq!(r.status(), 200, "the last good index");
    let d = dom(&format!("{u}/-/"));
    assert!(d.contains("stale since"), "{d}");
    screenshot(&format!("{u}/-/"), "home-stale");
}

#[test]
fn catalog_false_turns_the_page_off() {
    let repo = ChartRepo::new(&[("demo", "0.1.0")]);
    repo.index(None);
    let web = nginx(repo.dir.path());
    let bridge = chartbridge_full(
        &helm_upstream("charts", &web.url()),
        "catalog: false\n",
        None,
        &[],
        "info",
    );
    assert_eq!(
        html_get(&format!("{}/-/", bridge.url()), None).status(),
        404
    );
    let root = html_get(&format!("{}/", bridge.url()), None);
    assert_ne!(
        root.headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string()),
        Some("text/html; charset=utf-8".into())
    );
    // pulls are unaffected
    assert_eq!(
        get(&format!("{}/charts/index.yaml", bridge.url())).status(),
        200
    );
}
