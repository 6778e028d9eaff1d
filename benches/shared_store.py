#!/usr/bin/env python3
"""Shared-store figures (issue 11): a replica on an S3-compatible bucket (s3s-fs, the server
the tests use) against a replica on its own disk, in one run.

usage: ONLY=store benches/load.sh   (or python3 benches/shared_store.py after a release build)

- cold pull, bucket: replica A pulls a 4-layer image (4 x 5 MB) and a chart from CNCF
  distribution into the bucket; a fresh replica B, whose local tier is empty, then pulls the
  same through the bucket. Against: a disk-store replica's cold pull from the registry, and the
  registry directly.
- warm blob GETs (5 KB and 20 MB) on B once its local tier holds them, against the disk-store
  replica (wrk, servers on core 0, wrk on core 1).
Median of RUNS runs; writes benches/RESULTS-store.md.
"""
import os, platform, shutil, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402

S3S = os.path.join(load.ROOT, "target", "test-tools", "s3s", "bin", "s3s-fs")


def s3s():
    port = load.free_port()
    d = tempfile.mkdtemp(dir=load.WORK)
    os.makedirs(f"{d}/chartbridge")
    p = load.start([S3S, "--host", "127.0.0.1", "--port", str(port), "--access-key", "AK",
                    "--secret-key", "SK", d], port)
    return p, port


def replica(upstreams, s3_port=None):
    port = load.free_port()
    d = tempfile.mkdtemp(dir=load.WORK)
    store = ""
    if s3_port:
        store = (f"  store:\n    kind: s3\n    bucket: chartbridge\n    endpoint: http://127.0.0.1:{s3_port}\n"
                 "    credentials: {access_key_id_env: B_KEY, secret_access_key_env: B_SECRET}\n")
    open(f"{d}/config.yaml", "w").write(
        f"listen: 127.0.0.1:{port}\ncache:\n  dir: {d}/cache\n{store}upstreams:\n{upstreams}")
    env = dict(os.environ, RUST_LOG="error", B_KEY="AK", B_SECRET="SK")
    p = load.start([load.BIN, "serve", "--config", f"{d}/config.yaml"], port, env=env, log=f"{d}/log")
    return p, port


def pull(host, repo):
    """skopeo copy of the image (all layers), seconds."""
    dest = tempfile.mkdtemp(dir=load.WORK)
    t = time.perf_counter()
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{host}/{repo}:v1",
                    f"dir:{dest}"], check=True, capture_output=True)
    took = time.perf_counter() - t
    shutil.rmtree(dest)
    return took


def main():
    _, reg = load.registry()
    rows = {k: [] for k in ["direct", "disk_cold", "bucket_cold"]}
    warm = {}
    small = os.urandom(5 << 10)
    big = os.urandom(20 << 20)
    for n in range(load.RUNS):
        repo = f"bench/img{n}"
        layers = [os.urandom(5 << 20) for _ in range(4)]
        load.push_image(reg, repo, "v1", layers)
        ups = f"  - {{name: reg, kind: oci, url: 'http://127.0.0.1:{reg}'}}\n"
        rows["direct"].append(pull(f"127.0.0.1:{reg}", repo))
        disk, disk_port = replica(ups)
        rows["disk_cold"].append(pull(f"127.0.0.1:{disk_port}", f"reg/{repo}"))
        s3p, s3_port = s3s()
        a, a_port = replica(ups, s3_port)
        pull(f"127.0.0.1:{a_port}", f"reg/{repo}")
        load.stop(a)
        b, b_port = replica(ups, s3_port)
        rows["bucket_cold"].append(pull(f"127.0.0.1:{b_port}", f"reg/{repo}"))
        if n == load.RUNS - 1:
            # warm blobs: on B (after its local tier holds them) and on the disk replica
            ds = load.push_blob(reg, repo, small)[0]
            db = load.push_blob(reg, repo, big)[0]
            for name, port in [("bucket", b_port), ("disk", disk_port)]:
                for label, dg in [("5KB", ds), ("20MB", db)]:
                    url = f"http://127.0.0.1:{port}/v2/reg/{repo}/blobs/{dg}"
                    load.get(url)
                    r = load.wrk_median(url, conns=8 if label == "20MB" else 32)
                    warm[(name, label)] = r["rps"] * (20 if label == "20MB" else 1)
        for p in (disk, b, s3p):
            load.stop(p)
    med = {k: statistics.median(v) for k, v in rows.items()}
    cpu = load.cpu_model()
    out = [
        "# Shared store: a replica on a bucket against one on its own disk (benches/shared_store.py)", "",
        f"{cpu}, {os.cpu_count()} cores, {platform.machine()}; median of {load.RUNS} runs; s3s-fs (plain "
        "files on the same disk) as the bucket, CNCF distribution as the upstream, all on 127.0.0.1.", "",
        "| cold pull, 4 x 5 MB layers (skopeo copy) | seconds | vs registry direct |", "|---|---|---|",
        f"| registry directly | {med['direct']:.3f} | 1.00x |",
        f"| disk-store replica, from the registry | {med['disk_cold']:.3f} | {med['disk_cold'] / med['direct']:.2f}x |",
        f"| bucket replica with an empty local tier, from the bucket | {med['bucket_cold']:.3f} | "
        f"{med['bucket_cold'] / med['direct']:.2f}x |", "",
        "| warm blob GET (local tier holds it) | bucket replica | disk replica | ratio |", "|---|---|---|---|",
        f"| 5 KB, req/s | {warm[('bucket', '5KB')]:.0f} | {warm[('disk', '5KB')]:.0f} | "
        f"{warm[('bucket', '5KB')] / warm[('disk', '5KB')]:.2f}x |",
        f"| 20 MB, MB/s | {warm[('bucket', '20MB')]:.0f} | {warm[('disk', '20MB')]:.0f} | "
        f"{warm[('bucket', '20MB')] / warm[('disk', '20MB')]:.2f}x |",
    ]
    text = "\n".join(out) + "\n"
    print(text)
    open(os.path.join(load.ROOT, "benches", "RESULTS-store.md"), "w").write(text)


if __name__ == "__main__":
    try:
        main()
    finally:
        for p in list(load.procs):
            load.stop(p)
        shutil.rmtree(load.WORK, ignore_errors=True)
