//! Air-gapped sites, end to end (issue 9): warm from a list on the connected side (nginx
//! serving a helm-built repository whose chart declares two images, a real registry holding
//! those multi-arch images, an OCI chart and a tagged tool image), export to an OCI-layout tar
//! that skopeo reads, stop every upstream, then on a network that is really cut (`unshare -n`:
//! only a loopback interface) import into an empty cache, serve offline, and pull with helm
//! v3/v4 through both views, skopeo by tag and digest, and containerd through `hosts.toml`.
//! Then an incremental bundle, and tampered bundles refused whole.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_chartbridge");

/// Runs the chartbridge binary (not the server) with `args`.
fn cli(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A chart whose Chart.yaml declares `images` in `artifacthub.io/images`, packaged by helm.
fn package_chart(work: &Path, out: &Path, name: &str, version: &str, images: &[String]) {
    let src = work.join(format!("{name}-{version}"));
    std::fs::create_dir_all(src.join("templates")).unwrap();
    let mut chart = format!(
        "apiVersion: v2\nname: {name}\nversion: {version}\nappVersion: \"{version}\"\n\
         description: A chart for the air gap\n"
    );
    if !images.is_empty() {
        chart.push_str("annotations:\n  artifacthub.io/images: |\n");
        for (i, im) in images.iter().enumerate() {
            chart.push_str(&format!("    - name: img{i}\n      image: {im}\n"));
        }
    }
    std::fs::write(src.join("Chart.yaml"), chart).unwrap();
    std::fs::write(
        src.join("templates/cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
    )
    .unwrap();
    Helm::new("v4.1.4").run(&[
        "package",
        src.to_str().unwrap(),
        "-d",
        out.to_str().unwrap(),
    ]);
}

/// Every file of a directory tree with its size: a cache "left as it was" keeps this equal.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), m.len()));
            }
        }
    }
    out.sort();
    out
}

/// The blob names a bundle tar holds.
fn tar_blobs(tar: &Path) -> Vec<String> {
    let mut a = tar::Archive::new(std::fs::File::open(tar).unwrap());
    a.entries()
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path().unwrap().to_string_lossy().into_owned();
            p.strip_prefix("blobs/sha256/").map(str::to_string)
        })
        .collect()
}

/// Rewrites a tar, passing each entry (path, bytes) through `f` (`None` drops it).
fn rewrite_tar(from: &Path, to: &Path, mut f: impl FnMut(&str, Vec<u8>) -> Option<Vec<u8>>) {
    let mut a = tar::Archive::new(std::fs::File::open(from).unwrap());
    let mut b = tar::Builder::new(std::fs::File::create(to).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        if let Some(data) = f(&path, data) {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, &path, data.as_slice()).unwrap();
        }
    }
    b.finish().unwrap();
}

fn site_config(
    dir: &Path,
    name: &str,
    cache: &Path,
    web: &str,
    reg: &str,
    offline: bool,
) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:{port}\ncache:\n  dir: {cache}\noffline: {offline}\nupstreams:\n\
             \x20 - {{name: charts, kind: helm, url: '{web}', index_ttl: 1h}}\n\
             \x20 - {{name: reg, kind: oci, url: '{reg}', tag_ttl: 1h}}\n",
            port = free_port(),
            cache = cache.display(),
        ),
    )
    .unwrap();
    path
}

#[test]
fn warm_export_import_and_serve_with_the_network_cut() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    // ---- the connected side
    let reg = registry_logged();
    let images: Vec<String> = ["test/app1", "test/app2"]
        .iter()
        .map(|r| format!("{}/{r}:v1.0.0", reg.host()))
        .collect();
    for (i, r) in ["test/app1", "test/app2"].iter().enumerate() {
        let l = w.join(format!("layout-{i}"));
        make_image_layout(&l, "v1.0.0", 200_000, 60 + i as u64);
        push_layout(&l, "v1.0.0", &reg, r);
    }
    for (i, t) in ["v1.0.0", "v1.1.0", "v2.0.0"].iter().enumerate() {
        let l = w.join(format!("tool-{i}"));
        make_image_layout(&l, t, 100_000, 70 + i as u64);
        push_layout(&l, t, &reg, "test/tool");
    }
    let site = w.join("site");
    std::fs::create_dir_all(&site).unwrap();
    for v in ["0.1.0", "0.2.0", "0.3.0", "1.0.0"] {
        package_chart(w, &site, "demo", v, &images);
    }
    for v in ["1.0.0", "1.1.0", "1.2.0"] {
        package_chart(w, &site, "other", v, &[]);
    }
    let ociw = w.join("oci");
    std::fs::create_dir_all(&ociw).unwrap();
    package_chart(w, &ociw, "ocidemo", "0.5.0", &[]);
    Helm::new("v4.1.4").push(&ociw.join("ocidemo-0.5.0.tgz"), &reg.host(), "charts");
    Helm::new("v4.1.4").run(&["repo", "index", site.to_str().unwrap()]);
    let mut web = nginx(&site);
    let connected = site_config(
        w,
        "site.yaml",
        &w.join("cache"),
        &web.url(),
        &reg.url(),
        false,
    );
    let warm = w.join("warm.yaml");
    std::fs::write(
        &warm,
        "concurrency: 3\nupstreams:\n\
         \x20 - name: charts\n    charts:\n\
         \x20     - {chart: demo, version: \">=0.2 <1\"}\n\
         \x20     - {chart: demo, version: latest, images: true, platforms: [linux/amd64]}\n\
         \x20     - {chart: other, newest: 2}\n\
         \x20 - name: reg\n    charts:\n\
         \x20     - {chart: charts/ocidemo, version: latest}\n\
         \x20   images:\n\
         \x20     - {repository: test/tool, tags: [\">=1.0 <2\", latest]}\n",
    )
    .unwrap();
    let cfg = connected.to_str().unwrap();
    let out = cli(&["warm", "--config", cfg, warm.to_str().unwrap()]);
    assert!(out.status.success(), "warm: {}", text(&out));
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    // demo 0.2.0, 0.3.0, 1.0.0; other 1.1.0, 1.2.0; ocidemo; tool v1.0.0, v1.1.0, latest; 2 images
    assert!(summary.contains("warm: 11 items"), "{summary}");
    assert!(summary.contains("0 failed"), "{summary}");
    // a second warm fetches nothing: no archive and no blob is asked for again
    let (tgz, blobs) = (nginx_hits(&web, ".tgz"), registry_gets(&reg, "/blobs/"));
    let out = cli(&["warm", "--config", cfg, warm.to_str().unwrap()]);
    assert!(out.status.success(), "second warm: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("11 already cached"),
        "{}",
        text(&out)
    );
    assert_eq!(nginx_hits(&web, ".tgz"), tgz, "no archive fetched again");
    assert_eq!(
        registry_gets(&reg, "/blobs/"),
        blobs,
        "no blob fetched again"
    );

    // what the connected side serves, to compare with the offline side
    let online = chartbridge_with(
        "  - {name: charts, kind: helm, url: 'WEB', index_ttl: 1h}\n  - {name: reg, kind: oci, url: 'REG', tag_ttl: 1h}\n"
            .replace("WEB", &web.url())
            .replace("REG", &reg.url())
            .as_str(),
        "",
        Some(&w.join("cache")),
    );
    let manifest = |base: &str, path: &str| {
        let r = client()
            .get(format!("{base}{path}"))
            .header(
                "Accept",
                "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json",
            )
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{base}{path}");
        r.bytes().unwrap().to_vec()
    };
    let expect_demo = manifest(&online.url(), "/v2/charts/demo/manifests/0.3.0");
    let expect_tool = manifest(&online.url(), "/v2/reg/test/tool/manifests/v1.1.0");
    let expect_latest = manifest(&online.url(), "/v2/reg/test/tool/manifests/latest");
    let tool_digest = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&expect_tool))
    );
    drop(online);

    // ---- export: an OCI-layout tar that skopeo reads
    let b1 = w.join("b1.tar");
    let out = cli(&["export", "--config", cfg, "--out", b1.to_str().unwrap()]);
    assert!(out.status.success(), "export: {}", text(&out));
    let raw = skopeo(&[
        "inspect",
        "--raw",
        &format!("oci-archive:{}:reg/test/tool:v1.1.0", b1.display()),
    ])
    .expect("skopeo reads the bundle");
    assert_eq!(
        raw.as_bytes(),
        expect_tool.as_slice(),
        "the manifest, byte for byte"
    );
    let copied = w.join("copied");
    skopeo(&[
        "copy",
        &format!("oci-archive:{}:reg/test/app1:v1.0.0", b1.display()),
        &format!("oci:{}:app1", copied.display()),
    ])
    .expect("skopeo copies an image out of the bundle");
    skopeo(&[
        "inspect",
        "--raw",
        &format!("oci-archive:{}:charts/demo:0.3.0", b1.display()),
    ])
    .expect("charts are in the bundle too");

    // ---- every upstream goes away
    web.stop();
    let reg_host = reg.host();
    drop(reg);

    // ---- the offline side, on a network namespace with only loopback
    let off_cache = w.join("offline-cache");
    let offline = site_config(
        w,
        "offline.yaml",
        &off_cache,
        "http://127.0.0.1:9/",
        &format!("http://{reg_host}"),
        true,
    );
    let offline_port = std::fs::read_to_string(&offline)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let results = w.join("results");
    std::fs::create_dir_all(&results).unwrap();
    let tools = concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-tools");
    let ctd = w.join("ctd");
    std::fs::create_dir_all(ctd.join(format!("certs.d/{reg_host}"))).unwrap();
    std::fs::write(
        ctd.join(format!("certs.d/{reg_host}/hosts.toml")),
        format!(
            "server = \"http://127.0.0.1:1\"\n\n[host.\"http://127.0.0.1:{offline_port}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )
    .unwrap();
    std::fs::write(
        ctd.join("config.toml"),
        format!(
            "version = 2\nroot = \"{c}/root\"\nstate = \"{c}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{c}/c.sock\"\n[ttrpc]\n  address = \"{c}/t.sock\"\n",
            c = ctd.display()
        ),
    )
    .unwrap();
    let script = format!(
        r#"set -u
ip link set lo up
R={results}
P={offline_port}
B=127.0.0.1:$P
{bin} import --config {offline} {b1} > $R/import.out 2>&1 || {{ echo import-failed > $R/failed; exit 1; }}
RUST_LOG=info {bin} serve --config {offline} > $R/serve.log 2>&1 &
SERVE=$!
for i in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$P) 2>/dev/null && break; sleep 0.1; done
for v in v3.17.3 v3.18.0 v4.1.4; do
  export HOME=$R/home-$v HELM_CACHE_HOME=$R/home-$v/c HELM_CONFIG_HOME=$R/home-$v/f HELM_DATA_HOME=$R/home-$v/d
  mkdir -p $R/$v-oci $R/$v-mirror
  {tools}/helm-$v pull oci://$B/charts/demo --version 0.3.0 --plain-http -d $R/$v-oci > $R/$v-oci.log 2>&1
  {tools}/helm-$v pull oci://$B/reg/charts/ocidemo --version 0.5.0 --plain-http -d $R/$v-oci >> $R/$v-oci.log 2>&1
  {tools}/helm-$v repo add off http://$B/charts > $R/$v-mirror.log 2>&1
  {tools}/helm-$v search repo off/ --versions > $R/$v-search.txt 2>&1
  {tools}/helm-$v pull off/demo --version 0.2.0 -d $R/$v-mirror >> $R/$v-mirror.log 2>&1
done
export HOME=$R
skopeo copy --src-tls-verify=false docker://$B/reg/test/tool:v1.1.0 oci:$R/tool:v1.1.0 > $R/skopeo-tag.log 2>&1
skopeo copy --src-tls-verify=false docker://$B/reg/test/tool@{tool_digest} oci:$R/tool-digest:x > $R/skopeo-digest.log 2>&1
skopeo inspect --raw --tls-verify=false docker://$B/reg/test/tool:latest > $R/latest.json 2> $R/latest.log
skopeo list-tags --tls-verify=false docker://$B/reg/test/tool > $R/tags.json 2> $R/tags.log
/usr/bin/containerd --config {ctd}/config.toml > $R/containerd.log 2>&1 &
CTD=$!
for i in $(seq 1 100); do [ -S {ctd}/c.sock ] && break; sleep 0.1; done
/usr/bin/ctr --address {ctd}/c.sock --namespace air image pull --snapshotter native --hosts-dir {ctd}/certs.d --platform linux/amd64 {reg_host}/test/app1:v1.0.0 > $R/ctr.log 2>&1
echo $? > $R/ctr.status
kill $CTD $SERVE
wait
"#,
        results = results.display(),
        bin = BIN,
        offline = offline.display(),
        b1 = b1.display(),
        ctd = ctd.display(),
    );
    std::fs::write(w.join("offline.sh"), &script).unwrap();
    let out = Command::new("unshare")
        .args(["-n", "bash"])
        .arg(w.join("offline.sh"))
        .output()
        .unwrap();
    let read = |f: &str| std::fs::read_to_string(results.join(f)).unwrap_or_default();
    assert!(
        !results.join("failed").exists(),
        "import: {}",
        read("import.out")
    );
    assert!(
        read("import.out").contains("verified and loaded"),
        "{}",
        read("import.out")
    );
    let _ = out;
    for v in HELM_VERSIONS {
        let oci = std::fs::read(results.join(format!("{v}-oci/demo-0.3.0.tgz")));
        assert_eq!(
            oci.unwrap_or_else(|e| panic!(
                "helm {v} OCI pull offline: {e}: {}",
                read(&format!("{v}-oci.log"))
            )),
            std::fs::read(site.join("demo-0.3.0.tgz")).unwrap(),
            "helm {v}, OCI view"
        );
        assert_eq!(
            std::fs::read(results.join(format!("{v}-oci/ocidemo-0.5.0.tgz"))).unwrap(),
            std::fs::read(ociw.join("ocidemo-0.5.0.tgz")).unwrap(),
            "helm {v}, an OCI chart"
        );
        let mirror = std::fs::read(results.join(format!("{v}-mirror/demo-0.2.0.tgz")));
        assert_eq!(
            mirror.unwrap_or_else(|e| panic!(
                "helm {v} mirror pull offline: {e}: {}",
                read(&format!("{v}-mirror.log"))
            )),
            std::fs::read(site.join("demo-0.2.0.tgz")).unwrap(),
            "helm {v}, mirror view"
        );
        // every exported version and nothing else
        let mut listed: Vec<String> = read(&format!("{v}-search.txt"))
            .lines()
            .skip(1)
            .map(|l| {
                let mut f = l.split_whitespace();
                format!("{} {}", f.next().unwrap_or(""), f.next().unwrap_or(""))
            })
            .collect();
        listed.sort();
        assert_eq!(
            listed,
            vec![
                "off/demo 0.2.0",
                "off/demo 0.3.0",
                "off/demo 1.0.0",
                "off/other 1.1.0",
                "off/other 1.2.0"
            ],
            "helm {v} search: {}",
            read(&format!("{v}-search.txt"))
        );
    }
    assert!(
        results.join("tool/index.json").exists(),
        "skopeo by tag: {}\n{}",
        read("skopeo-tag.log"),
        read("serve.log")
    );
    assert!(
        results.join("tool-digest/index.json").exists(),
        "skopeo by digest: {}",
        read("skopeo-digest.log")
    );
    assert_eq!(
        read("latest.json").as_bytes(),
        expect_latest.as_slice(),
        "latest: {}",
        read("latest.log")
    );
    let tags: serde_json::Value =
        serde_json::from_str(&read("tags.json")).unwrap_or_else(|_| panic!("{}", read("tags.log")));
    // `latest` was warmed too: it named v2.0.0 on the connected side
    assert_eq!(
        tags["Tags"],
        serde_json::json!(["latest", "v1.0.0", "v1.1.0", "v2.0.0"]),
        "only exported tags"
    );
    assert_eq!(
        read("ctr.status").trim(),
        "0",
        "ctr pull: {}\n{}",
        read("ctr.log"),
        read("containerd.log")
    );
    let _ = expect_demo;

    // ---- tampering: each bad bundle is refused whole and the cache is left as it was
    let before = snapshot(&off_cache);
    let big_blob = tar_blobs(&b1)
        .into_iter()
        .max_by_key(|h| {
            std::fs::metadata(w.join("cache/sha256").join(h))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .unwrap();
    let fresh = |name: &str| {
        let dir = w.join(format!("fresh-{name}"));
        site_config(
            w,
            &format!("{name}.yaml"),
            &dir,
            "http://127.0.0.1:9/",
            "http://127.0.0.1:9/",
            true,
        )
    };
    // (what, bundle, the refusal names this, refused also where the cache holds its blobs)
    let tampered: Vec<(&str, PathBuf, &str, bool)> = {
        let flipped = w.join("flipped.tar");
        rewrite_tar(&b1, &flipped, |p, mut d| {
            if p.ends_with(&big_blob) {
                d[100] ^= 0xff;
            }
            Some(d)
        });
        let missing = w.join("missing.tar");
        rewrite_tar(&b1, &missing, |p, d| (!p.ends_with(&big_blob)).then_some(d));
        let absent_layer = w.join("absent.tar");
        let bogus = format!("sha256:{}", "e".repeat(64));
        rewrite_tar(&b1, &absent_layer, |p, d| {
            if p != "index.json" {
                return Some(d);
            }
            let mut v: serde_json::Value = serde_json::from_slice(&d).unwrap();
            let m = serde_json::json!({"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":bogus,"size":2},"layers":[]});
            let _ = m;
            v["manifests"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": bogus, "size": 100,
                    "annotations": {"org.opencontainers.image.ref.name": "reg/x:y"}
                }));
            Some(serde_json::to_vec(&v).unwrap())
        });
        let truncated = w.join("truncated.tar");
        let all = std::fs::read(&b1).unwrap();
        std::fs::write(&truncated, &all[..all.len() / 2]).unwrap();
        // hostile entries the tar crate would not write itself: `../evil` set in the raw header
        let escape = w.join("escape.tar");
        {
            let mut b = tar::Builder::new(std::fs::File::create(&escape).unwrap());
            let mut h = tar::Header::new_old();
            let name = b"../evil";
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_size(2);
            h.set_mode(0o644);
            h.set_cksum();
            b.append(&h, &b"hi"[..]).unwrap();
            b.finish().unwrap();
        }
        let raw_entry = |file: &str, name: &[u8], kind: tar::EntryType| {
            let p = w.join(file);
            let mut b = tar::Builder::new(std::fs::File::create(&p).unwrap());
            let mut h = tar::Header::new_old();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_entry_type(kind);
            h.set_size(if kind == tar::EntryType::Regular {
                2
            } else {
                0
            });
            h.set_mode(0o644);
            h.set_cksum();
            let body: &[u8] = if kind == tar::EntryType::Regular {
                b"hi"
            } else {
                b""
            };
            b.append(&h, body).unwrap();
            b.finish().unwrap();
            p
        };
        let absolute = raw_entry("absolute.tar", b"/etc/evil", tar::EntryType::Regular);
        let hard = raw_entry("hard.tar", b"blobs/sha256/h", tar::EntryType::Link);
        let device = raw_entry("device.tar", b"blobs/sha256/d", tar::EntryType::Char);
        let stray = raw_entry("stray.tar", b"notes.txt", tar::EntryType::Regular);
        let link = w.join("link.tar");
        {
            let mut b = tar::Builder::new(std::fs::File::create(&link).unwrap());
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_cksum();
            b.append_link(&mut h, "blobs/sha256/link", "/etc/passwd")
                .unwrap();
            b.finish().unwrap();
        }
        vec![
            ("a flipped byte", flipped, "does not hash", true),
            (
                "a missing blob",
                missing,
                "neither in the bundle nor in the cache",
                false,
            ),
            (
                "a manifest naming an absent layer",
                absent_layer,
                "neither in the bundle nor in the cache",
                true,
            ),
            ("a truncated tar", truncated, "truncated", true),
            (
                "a path leaving the bundle",
                escape,
                "leaves the bundle",
                true,
            ),
            ("a symbolic link", link, "regular files only", true),
            ("an absolute path", absolute, "leaves the bundle", true),
            ("a hard link", hard, "regular files only", true),
            ("a device", device, "regular files only", true),
            ("a file outside the layout", stray, "unexpected path", true),
        ]
    };
    for (i, (what, bundle, needle, always)) in tampered.iter().enumerate() {
        if *always {
            let out = cli(&[
                "import",
                "--config",
                offline.to_str().unwrap(),
                bundle.to_str().unwrap(),
            ]);
            assert!(
                !out.status.success(),
                "{what} must be refused: {}",
                text(&out)
            );
            assert!(text(&out).contains(needle), "{what}: {}", text(&out));
            assert_eq!(
                snapshot(&off_cache),
                before,
                "{what}: the cache is unchanged"
            );
        }
        // onto an empty cache: refused, and nothing stays
        let f = fresh(&format!("t{i}"));
        let out = cli(&[
            "import",
            "--config",
            f.to_str().unwrap(),
            bundle.to_str().unwrap(),
        ]);
        assert!(
            !out.status.success(),
            "{what} (empty cache) must be refused: {}",
            text(&out)
        );
        assert!(text(&out).contains(needle), "{what}: {}", text(&out));
        let left: Vec<_> = snapshot(&w.join(format!("fresh-t{i}")))
            .into_iter()
            .filter(|(p, _)| {
                p.to_string_lossy().contains("/sha256/") || p.to_string_lossy().contains("/tmp/")
            })
            .collect();
        assert!(
            left.is_empty(),
            "{what}: nothing stays in the empty cache: {left:?}"
        );
    }
}

/// A `warm:` list in the configuration is fetched by `serve` itself, at start and again after
/// a reload (SIGHUP) that changes it.
#[test]
fn serve_warms_itself_from_the_configuration() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let site = w.join("site");
    std::fs::create_dir_all(&site).unwrap();
    for v in ["0.1.0", "0.2.0"] {
        package_chart(w, &site, "demo", v, &[]);
    }
    Helm::new("v4.1.4").run(&["repo", "index", site.to_str().unwrap()]);
    let web = nginx(&site);
    let warm = |v: &str| {
        format!("warm:\n  upstreams:\n    - name: up\n      charts:\n        - {{chart: demo, version: \"{v}\"}}\n")
    };
    let bridge = chartbridge_with(&helm_upstream("up", &web.url()), &warm("0.1.0"), None);
    wait_until("0.1.0 is fetched without any client asking", || {
        nginx_hits(&web, "demo-0.1.0.tgz HTTP") == 1
    });
    assert_eq!(nginx_hits(&web, "demo-0.2.0.tgz HTTP"), 0);
    let config = bridge.dir.path().join("config.yaml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("\"0.1.0\"", "\"0.2.0\"");
    std::fs::write(&config, text).unwrap();
    let _ = Command::new("kill")
        .args(["-HUP", &bridge.pid().to_string()])
        .status();
    wait_until("0.2.0 is fetched after the reload", || {
        nginx_hits(&web, "demo-0.2.0.tgz HTTP") == 1
    });
}

#[test]
fn an_incremental_bundle_holds_only_new_blobs_and_needs_its_base() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let site = w.join("site");
    std::fs::create_dir_all(&site).unwrap();
    for v in ["0.1.0", "0.2.0"] {
        package_chart(w, &site, "demo", v, &[]);
    }
    Helm::new("v4.1.4").run(&["repo", "index", site.to_str().unwrap()]);
    let web = nginx(&site);
    let cfg = site_config(
        w,
        "site.yaml",
        &w.join("cache"),
        &web.url(),
        "http://127.0.0.1:9/",
        false,
    );
    let cfg_s = cfg.to_str().unwrap();
    let list = |name: &str, version: &str| {
        let p = w.join(name);
        std::fs::write(
            &p,
            format!("upstreams:\n  - name: charts\n    charts:\n      - {{chart: demo, version: \"{version}\"}}\n"),
        )
        .unwrap();
        p
    };
    assert!(cli(&[
        "warm",
        "--config",
        cfg_s,
        list("w1.yaml", "0.1.0").to_str().unwrap()
    ])
    .status
    .success());
    // what cannot be warmed is named, the rest still warmed, and the exit status says so
    let bad = w.join("bad.yaml");
    std::fs::write(
        &bad,
        "upstreams:\n  - name: charts\n    charts:\n      - {chart: nosuch, version: latest}\n\
         \x20     - {chart: demo, version: \">=9\"}\n      - {chart: demo, version: \"0.1.0\"}\n\
         \x20 - name: elsewhere\n    charts:\n      - {chart: x, newest: 1}\n",
    )
    .unwrap();
    let out = cli(&["warm", "--config", cfg_s, bad.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    for needle in [
        "3 failed",
        "charts/nosuch: no such chart upstream",
        "charts/demo: no version matches",
        "elsewhere: no upstream of that name is configured",
        "1 already cached",
    ] {
        assert!(text(&out).contains(needle), "{needle}: {}", text(&out));
    }

    let b1 = w.join("b1.tar");
    assert!(
        cli(&["export", "--config", cfg_s, "--out", b1.to_str().unwrap()])
            .status
            .success()
    );
    assert!(cli(&[
        "warm",
        "--config",
        cfg_s,
        list("w2.yaml", "0.2.0").to_str().unwrap()
    ])
    .status
    .success());
    let b2 = w.join("b2.tar");
    let out = cli(&[
        "export",
        "--config",
        cfg_s,
        "--out",
        b2.to_str().unwrap(),
        "--since",
        b1.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let (in1, in2) = (tar_blobs(&b1), tar_blobs(&b2));
    assert!(
        in2.iter().all(|h| !in1.contains(h)),
        "the second bundle holds only new blobs"
    );
    let archive2 =
        chartbridge::ids::Digest::of(&std::fs::read(site.join("demo-0.2.0.tgz")).unwrap());
    assert!(
        in2.contains(&archive2.hex().to_string()),
        "and the new archive is among them"
    );
    drop(web);

    // filters: an upstream that is not there exports nothing; one chart exports its versions
    let none = w.join("none");
    let out = cli(&[
        "export",
        "--config",
        cfg_s,
        "--out",
        none.to_str().unwrap(),
        "--upstream",
        "nope",
    ]);
    assert!(text(&out).contains("export: 0 manifests"), "{}", text(&out));
    let demo = w.join("demo-only");
    let out = cli(&[
        "export",
        "--config",
        cfg_s,
        "--out",
        demo.to_str().unwrap(),
        "--chart",
        "charts/demo",
    ]);
    assert!(
        text(&out).contains("export: 3 manifests"),
        "two versions and the index: {}",
        text(&out)
    );
    assert!(
        demo.join("index.json").exists() && demo.join("oci-layout").exists(),
        "a directory layout"
    );

    // a cache too small for it: refused with the bytes needed and available, nothing stored
    let small = w.join("small.yaml");
    std::fs::write(
        &small,
        format!(
            "listen: 127.0.0.1:{}\ncache:\n  dir: {}\n  max_disk_bytes: 64\noffline: true\nupstreams:\n\
             \x20 - {{name: charts, kind: helm, url: 'http://127.0.0.1:9/'}}\n",
            free_port(),
            w.join("small").display()
        ),
    )
    .unwrap();
    let out = cli(&[
        "import",
        "--config",
        small.to_str().unwrap(),
        b1.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("needs") && text(&out).contains("are available"),
        "names needed and available bytes: {}",
        text(&out)
    );
    let kept: Vec<_> = snapshot(&w.join("small"))
        .into_iter()
        .filter(|(p, _)| p.to_string_lossy().contains("/sha256/"))
        .collect();
    assert!(kept.is_empty(), "nothing imported: {kept:?}");

    // alone, it is refused, naming its base
    let alone = site_config(
        w,
        "alone.yaml",
        &w.join("alone"),
        "http://127.0.0.1:9/",
        "http://127.0.0.1:9/",
        true,
    );
    let out = cli(&[
        "import",
        "--config",
        alone.to_str().unwrap(),
        b2.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let id1 = chartbridge::ids::Digest::of(&{
        let mut a = tar::Archive::new(std::fs::File::open(&b1).unwrap());
        let mut v = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            if e.path().unwrap().to_str() == Some("index.json") {
                std::io::Read::read_to_end(&mut e, &mut v).unwrap();
            }
        }
        v
    });
    assert!(
        text(&out).contains(&id1.to_string()),
        "names the base: {}",
        text(&out)
    );

    // after its base, both versions are served offline, and importing again changes nothing
    let off = site_config(
        w,
        "off.yaml",
        &w.join("off"),
        "http://127.0.0.1:9/",
        "http://127.0.0.1:9/",
        true,
    );
    let off_s = off.to_str().unwrap();
    for b in [&b1, &b2, &b2] {
        let out = cli(&["import", "--config", off_s, b.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let port: u16 = std::fs::read_to_string(&off)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut serve = Command::new(BIN)
        .args(["serve", "--config", off_s])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("serving", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    for v in ["0.1.0", "0.2.0"] {
        let r = get(&format!(
            "http://127.0.0.1:{port}/charts/-/demo/{v}/demo-{v}.tgz"
        ));
        assert_eq!(r.status(), 200, "{v}");
        assert_eq!(
            r.bytes().unwrap().to_vec(),
            std::fs::read(site.join(format!("demo-{v}.tgz"))).unwrap()
        );
    }
    let _ = serve.kill();
    let _ = serve.wait();
}
