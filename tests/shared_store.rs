//! Replicas on one S3-compatible bucket (a real server: s3s-fs): what one replica fetched,
//! another serves with every upstream stopped, byte for byte; N replicas x M clients missing
//! one blob make one upstream fetch; a replica killed mid-download loses nothing; a bucket
//! gone mid-run still leaves clients with correct bytes.

use std::time::{Duration, Instant};

use crate::support::*;

fn replica(s3: &Proc, upstreams: &str, lease_ttl: &str) -> Proc {
    chartbridge_with(upstreams, &s3_store(s3, lease_ttl), None)
}

fn oci_manifest(bridge: &Proc, path: &str) -> (String, Vec<u8>) {
    let r = client()
        .get(format!("{}{path}", bridge.url()))
        .header(
            "Accept",
            "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json",
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    let d = r.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_string();
    (d, r.bytes().unwrap().to_vec())
}

#[test]
fn what_one_replica_fetched_another_serves_with_every_upstream_stopped() {
    let s3 = s3_server();
    let repo = ChartRepo::new(&[("demo", "0.1.0"), ("demo", "0.2.0")]);
    repo.index(None);
    let mut web = nginx(repo.dir.path());
    let mut reg = registry();
    let layout = tempfile::tempdir().unwrap();
    make_image_layout(layout.path(), "v1.0.0", 1_500_000, 11);
    push_layout(layout.path(), "v1.0.0", &reg, "team/app");
    let ups = format!(
        "{}{}",
        helm_upstream("charts", &web.url()),
        oci_upstream("reg", &reg.url(), "")
    );
    let a = replica(&s3, &ups, "30s");
    let b = replica(&s3, &ups, "30s");
    let out = tempfile::tempdir().unwrap();
    let expected = repo.bytes("demo-0.1.0.tgz");
    for v in ["v3.17.3", "v4.1.4"] {
        let got = Helm::new(v).pull_oci(
            &format!("{}/charts/demo", a.host()),
            "0.1.0",
            out.path(),
            "demo-0.1.0.tgz",
        );
        assert_eq!(got, expected, "helm {v} through A");
    }
    let via_a = tempfile::tempdir().unwrap();
    skopeo(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{}/reg/team/app:v1.0.0", a.host()),
        &format!("oci:{}:app", via_a.path().display()),
    ])
    .expect("skopeo through A");
    let (chart_digest_a, chart_a) = oci_manifest(&a, "/v2/charts/demo/manifests/0.1.0");
    let (image_digest_a, _) = oci_manifest(&a, "/v2/reg/team/app/manifests/v1.0.0");
    // the mirror view's index through A, so the bucket holds it too
    assert_eq!(get(&format!("{}/charts/index.yaml", a.url())).status(), 200);
    assert!(!s3_blobs(&s3).is_empty(), "the bucket holds the blobs");

    // every upstream goes away; B has never fetched anything
    web.stop();
    reg.stop();
    for v in ["v3.17.3", "v4.1.4"] {
        let got = Helm::new(v).pull_oci(
            &format!("{}/charts/demo", b.host()),
            "0.1.0",
            out.path(),
            "demo-0.1.0.tgz",
        );
        assert_eq!(got, expected, "helm {v} through B, upstreams stopped");
    }
    let (chart_digest_b, chart_b) = oci_manifest(&b, "/v2/charts/demo/manifests/0.1.0");
    assert_eq!(
        (chart_digest_b, chart_b),
        (chart_digest_a, chart_a),
        "the translated chart's manifest is the same on every replica"
    );
    let (image_digest_b, _) = oci_manifest(&b, "/v2/reg/team/app/manifests/v1.0.0");
    assert_eq!(image_digest_b, image_digest_a);
    let via_b = tempfile::tempdir().unwrap();
    skopeo(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{}/reg/team/app:v1.0.0", b.host()),
        &format!("oci:{}:app", via_b.path().display()),
    ])
    .expect("skopeo through B, upstreams stopped");
    let blobs = |p: &std::path::Path| {
        let mut v: Vec<_> = std::fs::read_dir(p.join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        blobs(via_a.path()),
        blobs(via_b.path()),
        "the same image, digest for digest"
    );
    // a bucket object damaged behind chartbridge's back: a replica that has not got it
    // streams it verified, so no client gets the wrong bytes whole and nothing is cached
    let big_layer = blobs(via_a.path())
        .into_iter()
        .map(|n| n.to_string_lossy().into_owned())
        .map(|h| {
            (
                std::fs::metadata(via_a.path().join("blobs/sha256").join(&h))
                    .unwrap()
                    .len(),
                h,
            )
        })
        .max()
        .unwrap()
        .1;
    // a range of a big layer only the bucket holds, through a replica that has nothing: the
    // bytes of that range (a ranged read of the bucket)
    let layer_bytes = std::fs::read(via_a.path().join("blobs/sha256").join(&big_layer)).unwrap();
    assert!(
        layer_bytes.len() > 1 << 20,
        "bigger than what is read whole"
    );
    let d = replica(&s3, &ups, "30s");
    let url = format!("{}/v2/reg/team/app/blobs/sha256:{big_layer}", d.url());
    assert_eq!(
        get_range(&url, "1000-1999", layer_bytes.len()),
        layer_bytes[1000..2000]
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        !d.dir.path().join("cache/sha256").join(&big_layer).exists(),
        "only the range was read, not the whole blob into the local tier"
    );
    drop(d);
    let object = s3
        .dir
        .path()
        .join("chartbridge/shared/blobs/sha256")
        .join(&big_layer);
    let mut bytes = std::fs::read(&object).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&object, &bytes).unwrap();
    let c = replica(&s3, &ups, "30s");
    oci_manifest(&c, "/v2/reg/team/app/manifests/v1.0.0");
    let got = client()
        .get(format!(
            "{}/v2/reg/team/app/blobs/sha256:{big_layer}",
            c.url()
        ))
        .send()
        .and_then(|r| r.bytes());
    assert!(
        got.map_or(true, |b| b.as_ref() != bytes.as_slice()),
        "the damaged object never reaches a client whole"
    );
    assert!(
        !c.dir.path().join("cache/sha256").join(&big_layer).exists(),
        "nor the local tier"
    );
    // the mirror view of B too: helm repo add + pull, from the bucket's copy of the index
    let helm = Helm::new("v4.1.4");
    helm.run(&["repo", "add", "b", &format!("{}/charts", b.url())]);
    helm.run(&[
        "pull",
        "b/demo",
        "--version",
        "0.1.0",
        "-d",
        out.path().to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(out.path().join("demo-0.1.0.tgz")).unwrap(),
        expected
    );
}

/// The figure the issue asks for: 3 replicas x 4 concurrent clients missing one 20 MB blob
/// and one chart archive make one upstream fetch of each.
#[test]
fn replicas_missing_one_blob_together_fetch_it_once() {
    let s3 = s3_server();
    let reg = registry_logged();
    let layout = tempfile::tempdir().unwrap();
    make_image_layout(layout.path(), "v1.0.0", 20 << 20, 21);
    push_layout(layout.path(), "v1.0.0", &reg, "team/big");
    let repo = ChartRepo::new(&[("demo", "0.1.0")]);
    repo.index(None);
    let web = nginx(repo.dir.path());
    let ups = format!(
        "{}{}",
        helm_upstream("charts", &web.url()),
        oci_upstream("reg", &reg.url(), "")
    );
    let replicas: Vec<Proc> = (0..3).map(|_| replica(&s3, &ups, "30s")).collect();
    // each replica learns the manifest (tag resolution is per replica; it is small)
    let mut layer = String::new();
    for r in &replicas {
        let index: serde_json::Value =
            serde_json::from_slice(&oci_manifest(r, "/v2/reg/team/big/manifests/v1.0.0").1)
                .unwrap();
        let amd64 = index["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        let m: serde_json::Value = serde_json::from_slice(
            &oci_manifest(r, &format!("/v2/reg/team/big/manifests/{amd64}")).1,
        )
        .unwrap();
        layer = m["layers"][0]["digest"].as_str().unwrap().to_string();
        // and the chart's index
        assert_eq!(
            get(&format!("{}/v2/charts/demo/tags/list", r.url())).status(),
            200
        );
    }
    let expected_layer = std::fs::read(
        layout
            .path()
            .join("blobs/sha256")
            .join(layer.trim_start_matches("sha256:")),
    )
    .unwrap();
    let before_blob = registry_gets(&reg, &layer);
    let before_tgz = nginx_hits(&web, "demo-0.1.0.tgz HTTP");
    let started = Instant::now();
    let mut clients = Vec::new();
    for r in &replicas {
        for _ in 0..4 {
            let (u, l) = (r.url(), layer.clone());
            // the layer, cold everywhere; the chart's manifest, whose synthesis needs the
            // archive (cold on every replica): both at once
            clients.push(std::thread::spawn(move || {
                let chart = std::thread::spawn({
                    let u = u.clone();
                    move || {
                        let r = client()
                            .get(format!("{u}/v2/charts/demo/manifests/0.1.0"))
                            .header("Accept", "application/vnd.oci.image.manifest.v1+json")
                            .send()
                            .unwrap();
                        let m: serde_json::Value = r.json().unwrap();
                        let c = m["layers"][0]["digest"].as_str().unwrap().to_string();
                        client()
                            .get(format!("{u}/v2/charts/demo/blobs/{c}"))
                            .send()
                            .unwrap()
                            .bytes()
                            .unwrap()
                            .to_vec()
                    }
                });
                let big = client()
                    .get(format!("{u}/v2/reg/team/big/blobs/{l}"))
                    .send()
                    .unwrap()
                    .bytes()
                    .unwrap()
                    .to_vec();
                (big, chart.join().unwrap())
            }));
        }
    }
    for c in clients {
        let (big, chart) = c.join().unwrap();
        assert!(
            big == expected_layer,
            "every client gets the whole, right layer"
        );
        assert_eq!(chart, repo.bytes("demo-0.1.0.tgz"));
    }
    let fetches = registry_gets(&reg, &layer) - before_blob;
    let chart_fetches = nginx_hits(&web, "demo-0.1.0.tgz HTTP") - before_tgz;
    eprintln!(
        "3 replicas x 4 clients, one cold 20 MB layer and one chart: {fetches} layer fetch(es), \
         {chart_fetches} chart fetch(es) upstream, {:?}",
        started.elapsed()
    );
    assert_eq!(
        fetches, 1,
        "one upstream fetch of the layer across replicas"
    );
    assert_eq!(
        chart_fetches, 1,
        "one upstream fetch of the chart across replicas"
    );
    let waited: f64 = replicas
        .iter()
        .map(|r| {
            metric(
                &get(&format!("{}/metrics", r.url())).text().unwrap(),
                "chartbridge_store_leases_total",
                &["outcome=\"waited\""],
            )
        })
        .sum();
    assert!(
        waited >= 2.0,
        "the other replicas waited on the lease: {waited}"
    );
}

/// A replica killed -9 mid-download: its claim expires, another replica takes it over and
/// serves the blob whole; the bucket never holds a partial object; the restarted replica
/// serves it too. The slow upstream is the in-process fault server (a real registry cannot
/// stall a body on demand).
#[test]
fn a_replica_killed_mid_download_loses_nothing() {
    use crate::support::fault::{Behavior, FaultServer};
    let s3 = s3_server();
    let good = noise(3 << 20, 77);
    let d = chartbridge::ids::Digest::of(&good);
    let fake = FaultServer::start();
    let path = format!("/v2/img/blobs/{d}");
    fake.route(
        &path,
        vec![Behavior::Stall {
            body: good.clone(),
            send: good.len() / 2,
            pause: Duration::from_secs(60),
        }],
    );
    let ups = oci_upstream("f", &fake.url(), "    timeouts: {idle: 90s}\n");
    let cache_a = tempfile::tempdir().unwrap();
    let mut a = chartbridge_with(&ups, &s3_store(&s3, "2s"), Some(cache_a.path()));
    let url = format!("{}/v2/f/img/blobs/{d}", a.url());
    let reader = std::thread::spawn(move || {
        client()
            .get(&url)
            .send()
            .map(|r| r.bytes().map(|b| b.len()).unwrap_or(0))
            .unwrap_or(0)
    });
    wait_until("A is mid-download", || fake.hits(&path) == 1);
    std::thread::sleep(Duration::from_millis(300));
    a.kill9();
    assert!(reader.join().unwrap() < good.len());
    assert!(
        s3_blobs(&s3).iter().all(|(h, _)| h != d.hex()),
        "no partial blob in the bucket"
    );
    // B asks while A's claim is still in the bucket: it waits for the claim to expire
    fake.route(&path, vec![Behavior::ok(&good, "application/octet-stream")]);
    let b = replica(&s3, &ups, "2s");
    let t = Instant::now();
    let got = get(&format!("{}/v2/f/img/blobs/{d}", b.url()));
    assert_eq!(got.status(), 200);
    assert!(got.bytes().unwrap().to_vec() == good, "B serves it whole");
    eprintln!("B took over A's expired claim after {:?}", t.elapsed());
    assert_eq!(fake.hits(&path), 2, "A's broken fetch and B's");
    wait_until("the blob is in the bucket, whole", || {
        s3_blobs(&s3).contains(&(d.hex().to_string(), good.len() as u64))
    });
    // A restarted on its old local tier serves it (from the bucket), with no upstream call
    let a2 = chartbridge_with(&ups, &s3_store(&s3, "2s"), Some(cache_a.path()));
    let again = get(&format!("{}/v2/f/img/blobs/{d}", a2.url()));
    assert!(again.bytes().unwrap().to_vec() == good);
    assert_eq!(fake.hits(&path), 2);
}

/// The bucket goes away mid-run: what the local tier holds is served, what it does not is
/// fetched through from the upstream, correct, and the store says it is degraded while
/// /readyz stays ready.
#[test]
fn a_bucket_gone_mid_run_still_leaves_clients_with_correct_bytes() {
    let mut s3 = s3_server();
    let repo = ChartRepo::new(&[("demo", "0.1.0"), ("demo", "0.2.0")]);
    repo.index(None);
    let web = nginx(repo.dir.path());
    let bridge = replica(&s3, &helm_upstream("charts", &web.url()), "30s");
    let out = tempfile::tempdir().unwrap();
    let helm = Helm::new("v4.1.4");
    let from = format!("{}/charts/demo", bridge.host());
    assert_eq!(
        helm.pull_oci(&from, "0.1.0", out.path(), "demo-0.1.0.tgz"),
        repo.bytes("demo-0.1.0.tgz")
    );
    s3.stop();
    assert_eq!(
        helm.pull_oci(&from, "0.1.0", out.path(), "demo-0.1.0.tgz"),
        repo.bytes("demo-0.1.0.tgz"),
        "what this replica holds"
    );
    assert_eq!(
        helm.pull_oci(&from, "0.2.0", out.path(), "demo-0.2.0.tgz"),
        repo.bytes("demo-0.2.0.tgz"),
        "fetched through, not cached in the bucket"
    );
    assert_eq!(get(&format!("{}/readyz", bridge.url())).status(), 200);
    let m = get(&format!("{}/metrics", bridge.url())).text().unwrap();
    assert_eq!(metric(&m, "chartbridge_store_degraded", &[]), 1.0, "{m}");
    let log = std::fs::read_to_string(bridge.dir.path().join("server.log")).unwrap();
    assert!(log.contains("object store degraded"), "{log}");
    assert!(!log.contains("SK"), "no secret in the log");
}

/// The air gap on a bucket: warm and export from an S3-backed cache, import into another
/// bucket, serve from it offline.
#[test]
fn export_and_import_work_on_a_bucket_backed_cache() {
    use std::process::{Command, Stdio};
    let (s3_a, s3_b) = (s3_server(), s3_server());
    let repo = ChartRepo::new(&[("demo", "0.1.0")]);
    repo.index(None);
    let web = nginx(repo.dir.path());
    let work = tempfile::tempdir().unwrap();
    let config = |name: &str, s3: &Proc, upstream: &str, offline: bool| {
        let p = work.path().join(name);
        std::fs::write(
            &p,
            format!(
                "listen: 127.0.0.1:{}\ncache:\n  dir: {}\n{}offline: {offline}\nupstreams:\n{}",
                free_port(),
                work.path().join(format!("{name}.local")).display(),
                s3_store(s3, "30s"),
                helm_upstream("charts", upstream)
            ),
        )
        .unwrap();
        p
    };
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_chartbridge"))
            .args(args)
            .env("RUST_LOG", "warn")
            .env("CB_TEST_S3_KEY", "AK")
            .env("CB_TEST_S3_SECRET", "SK")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let site = config("site.yaml", &s3_a, &web.url(), false);
    let list = work.path().join("warm.yaml");
    std::fs::write(
        &list,
        "upstreams:\n  - name: charts\n    charts:\n      - {chart: demo, version: \"0.1.0\"}\n",
    )
    .unwrap();
    run(&[
        "warm",
        "--config",
        site.to_str().unwrap(),
        list.to_str().unwrap(),
    ]);
    let bundle = work.path().join("b.tar");
    run(&[
        "export",
        "--config",
        site.to_str().unwrap(),
        "--out",
        bundle.to_str().unwrap(),
    ]);
    drop(web);
    let off = config("off.yaml", &s3_b, "http://127.0.0.1:9/", true);
    run(&[
        "import",
        "--config",
        off.to_str().unwrap(),
        bundle.to_str().unwrap(),
    ]);
    assert!(
        s3_blobs(&s3_b)
            .iter()
            .any(|(h, _)| *h == chartbridge::ids::Digest::of(&repo.bytes("demo-0.1.0.tgz")).hex()),
        "the archive is in the second bucket"
    );
    // a replica on the second bucket with an empty local tier serves it offline
    std::fs::remove_dir_all(work.path().join("off.yaml.local")).unwrap();
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
    let mut serve = Command::new(env!("CARGO_BIN_EXE_chartbridge"))
        .args(["serve", "--config", off.to_str().unwrap()])
        .env("CB_TEST_S3_KEY", "AK")
        .env("CB_TEST_S3_SECRET", "SK")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("serving", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let r = get(&format!(
        "http://127.0.0.1:{port}/charts/-/demo/0.1.0/demo-0.1.0.tgz"
    ));
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().to_vec(), repo.bytes("demo-0.1.0.tgz"));
    let _ = serve.kill();
    let _ = serve.wait();
}
