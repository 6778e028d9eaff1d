#!/usr/bin/env python3
"""Air-gap figures (issue 9): warm, export and import of a cache of a few hundred MB, each
against a peer doing the same bytes' worth of work in the same run.

usage: benches/airgap.py          (after `cargo build --release`; load.sh's tools installed)

Corpus: CNCF distribution holding IMAGES images of LAYERS random (incompressible) layers of
LAYER_MB each, and nginx serving a helm-built repository of CHARTS versions of a chart.
- warm: `chartbridge warm` of every chart version and every image into an empty cache, against
  `skopeo copy docker://... oci:DIR` of the same images (charts are a few KB; the bytes are
  the images). Then a second warm of the same list (nothing fetched).
- export: `chartbridge export --out x.tar` of that cache, against `tar -cf` of the cache
  directory (the same bytes, no checks).
- import: `chartbridge import` of the bundle into an empty cache, against `tar -xf` of it plus
  `sha256sum` of every blob (what the import's verification reads).
Reported: median seconds of RUNS runs, the ratio to the peer, max RSS (GNU time's) and
the bundle's size. Prints a Markdown table and writes benches/RESULTS-airgap.md.
"""
import os, platform, shutil, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402  (peers and helpers of the main load run)

RUNS = int(os.environ.get("RUNS", "3"))
IMAGES = int(os.environ.get("IMAGES", "3"))
LAYERS = int(os.environ.get("LAYERS", "2"))
LAYER_MB = int(os.environ.get("LAYER_MB", "50"))
CHARTS = int(os.environ.get("CHARTS", "20"))


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def main():
    work = load.WORK
    # ---- the connected side's upstreams
    _, reg = load.registry()
    images = []
    for i in range(IMAGES):
        layers = [os.urandom(LAYER_MB << 20) for _ in range(LAYERS)]
        load.push_image(reg, f"bench/img{i}", "v1.0.0", layers)
        images.append(f"bench/img{i}")
        del layers
    site = os.path.join(work, "site")
    os.makedirs(site)
    env = dict(os.environ, HOME=tempfile.mkdtemp(dir=work))
    subprocess.run([load.HELM, "create", f"{work}/demo"], check=True, capture_output=True, env=env)
    for v in range(CHARTS):
        subprocess.run([load.HELM, "package", f"{work}/demo", "--version", f"0.{v}.0", "-d", site],
                       check=True, capture_output=True, env=env)
    subprocess.run([load.HELM, "repo", "index", site], check=True, capture_output=True, env=env)
    _, web = load.nginx(site)

    def config(name, cache, offline=False):
        p = os.path.join(work, name)
        open(p, "w").write(
            f"listen: 127.0.0.1:{load.free_port()}\ncache:\n  dir: {cache}\n  max_disk_bytes: 8GiB\n"
            f"offline: {str(offline).lower()}\nupstreams:\n"
            f"  - {{name: charts, kind: helm, url: 'http://127.0.0.1:{web}/'}}\n"
            f"  - {{name: reg, kind: oci, url: 'http://127.0.0.1:{reg}'}}\n")
        return p

    warm = os.path.join(work, "warm.yaml")
    open(warm, "w").write(
        "upstreams:\n  - name: charts\n    charts:\n      - {chart: demo, newest: %d}\n"
        "  - name: reg\n    images:\n%s" % (
            CHARTS, "".join(f"      - {{repository: {r}, tags: [v1.0.0]}}\n" for r in images)))
    env = dict(os.environ, RUST_LOG="warn")
    rows = {k: [] for k in ["warm", "skopeo", "warm2", "export", "tar", "import", "untar"]}
    rss = {k: [] for k in ["warm", "export", "import"]}
    size = cache_bytes = 0
    for n in range(RUNS):
        d = tempfile.mkdtemp(dir=work)
        cfg = config(f"site{n}.yaml", f"{d}/cache")
        t, m = load.timed([load.BIN, "warm", "--config", cfg, warm], env)
        rows["warm"].append(t), rss["warm"].append(m)
        t, _ = load.timed([load.BIN, "warm", "--config", cfg, warm], env)
        rows["warm2"].append(t)
        t0 = time.perf_counter()
        for r in images:
            subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://127.0.0.1:{reg}/{r}:v1.0.0",
                            f"oci:{d}/skopeo:{r.replace('/', '-')}"], check=True, capture_output=True)
        rows["skopeo"].append(time.perf_counter() - t0)
        cache_bytes = du(f"{d}/cache")

        bundle = f"{d}/site.tar"
        t, m = load.timed([load.BIN, "export", "--config", cfg, "--out", bundle], env)
        rows["export"].append(t), rss["export"].append(m)
        size = os.path.getsize(bundle)
        t, _ = load.timed(["tar", "-cf", f"{d}/plain.tar", "-C", d, "cache"])
        rows["tar"].append(t)
        os.remove(f"{d}/plain.tar")

        off = config(f"off{n}.yaml", f"{d}/offline", offline=True)
        t, m = load.timed([load.BIN, "import", "--config", off, bundle], env)
        rows["import"].append(t), rss["import"].append(m)
        os.makedirs(f"{d}/x")
        t0 = time.perf_counter()
        subprocess.run(["tar", "-xf", bundle, "-C", f"{d}/x"], check=True)
        subprocess.run(f"sha256sum {d}/x/blobs/sha256/* > /dev/null", shell=True, check=True)
        rows["untar"].append(time.perf_counter() - t0)
        shutil.rmtree(d)

    med = {k: statistics.median(v) for k, v in rows.items()}
    mrss = {k: statistics.median(v) // 1024 for k, v in rss.items()}
    cpu = load.cpu_model()
    out = [
        "# Air gap: warm, export, import (benches/airgap.py)", "",
        f"{cpu}, {os.cpu_count()} cores, {platform.machine()}; median of {RUNS} runs. Corpus: "
        f"{IMAGES} images of {LAYERS} random {LAYER_MB} MB layers on CNCF distribution, {CHARTS} "
        f"versions of a `helm create` chart on nginx; cache {cache_bytes / 1e6:.0f} MB on disk, "
        f"bundle {size / 1e6:.0f} MB.", "",
        "| step | chartbridge | peer (same run) | ratio | chartbridge max RSS |", "|---|---|---|---|---|",
        f"| warm (empty cache) | {med['warm']:.2f} s | skopeo copy of the images to an OCI layout: "
        f"{med['skopeo']:.2f} s | {med['warm'] / med['skopeo']:.2f}x | {mrss['warm']} MB |",
        f"| warm again (nothing new) | {med['warm2']:.2f} s | - | - | - |",
        f"| export to a tar | {med['export']:.2f} s | tar -cf of the cache dir: {med['tar']:.2f} s | "
        f"{med['export'] / med['tar']:.2f}x | {mrss['export']} MB |",
        f"| import (verify + load) | {med['import']:.2f} s | tar -xf + sha256sum of every blob: "
        f"{med['untar']:.2f} s | {med['import'] / med['untar']:.2f}x | {mrss['import']} MB |",
    ]
    text = "\n".join(out) + "\n"
    print(text)
    open(os.path.join(load.ROOT, "benches", "RESULTS-airgap.md"), "w").write(text)


if __name__ == "__main__":
    try:
        main()
    finally:
        for p in list(load.procs):
            load.stop(p)
        shutil.rmtree(load.WORK, ignore_errors=True)
