#!/usr/bin/env python3
"""How cost grows with the work (issue 14's table): the first tags/list of a helm upstream whose
index has 1k, 5k, 15k and 50k versions (fetch, parse, rewrite; time and peak RSS); start-up on a
cache of 10k, 100k and 1M blobs (time until listening, RSS); warm 5 KB blob req/s with 1, 10 and
100 configured upstreams, and read at random among 1k, 10k, 100k and 1M distinct cached blobs
with a 1 MiB memory tier (so reads go to the disk tier); cold pulls by 1, 8 and 32 clients of different images
at once, against the same clients pulling from the registry directly. Time and RSS figures are
the median of RUNS fresh processes, rates the median of RUNS wrk runs. Writes
benches/RESULTS-growth.md.

  ONLY=growth benches/load.sh
"""
import hashlib, os, platform, shutil, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402

ROOT = load.ROOT
RUNS = load.RUNS


def shape(xs, ys):
    """flat, linear or worse: how y grows against x from the first row to the last."""
    gx, gy = xs[-1] / xs[0], ys[-1] / max(ys[0], 1e-9)
    if gy < 1.5:
        return "flat"
    if gy <= gx * 1.5:
        return f"linear or less ({gy:.1f}x for {gx:.0f}x)"
    return f"worse than linear ({gy:.1f}x for {gx:.0f}x)"


def main():
    rows = []
    sizes = [(10, 100), (50, 100), (150, 100), (500, 100)]
    times, peaks = [], []
    for charts, versions in sizes:
        d = os.path.join(load.WORK, f"idx{charts}")
        os.makedirs(d)
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gen-index.py"), str(charts),
                        str(versions), f"{d}/index.yaml"], check=True)
        web, port = load.nginx(d)
        mb = os.path.getsize(f"{d}/index.yaml") / 1e6
        t_runs, p_runs = [], []
        for _ in range(RUNS):
            cb, cb_port = load.chartbridge(
                f"  - name: big\n    kind: helm\n    url: http://127.0.0.1:{port}\n    index_ttl: 1h\n")
            t = time.perf_counter()
            load.get(f"http://127.0.0.1:{cb_port}/v2/big/chart000/tags/list")
            t_runs.append(time.perf_counter() - t)
            p_runs.append(load.rss_kb(cb.pid)[1] / 1024)
            load.stop(cb)
        load.stop(web)
        n = charts * versions
        times.append(load.median(t_runs))
        peaks.append(load.median(p_runs))
        rows.append((f"first tags/list, {n:,} versions ({mb:.1f} MB index)",
                     f"{times[-1]:.3f} s", f"{peaks[-1]:.0f} MB peak RSS"))
        print(rows[-1], flush=True)
    ns = [c * v for c, v in sizes]
    rows.append(("growth of the first tags/list", shape(ns, times), shape(ns, peaks)))

    rows += blob_counts()
    rows += upstream_counts()
    rows += concurrent_cold_pulls()
    return rows


def oci(name, reg_port, extra=""):
    return f"  - name: {name}\n    kind: oci\n    url: http://127.0.0.1:{reg_port}\n    tag_ttl: 1h\n{extra}"


def upstream_counts():
    """A warm 5 KB blob through the last of 1, 10 or 100 configured upstreams."""
    rows, rates = [], []
    reg, reg_port = load.registry()
    blob = os.urandom(5 * 1024)
    d = load.push_image(reg_port, "bench/blobs", "v1", [blob])[0]
    counts = [1, 10, 100]
    for count in counts:
        cb, port = load.chartbridge("".join(oci(f"u{i}", reg_port) for i in range(count)))
        url = f"http://127.0.0.1:{port}/v2/u{count - 1}/bench/blobs/blobs/{d}"
        assert load.get(url) == blob
        r = load.wrk_median(url)
        rates.append(r["rps"])
        rows.append((f"warm 5 KB blob, {count} configured upstreams",
                     f"{r['rps']:.0f} req/s (p99 {r['p99']:.2f} ms)", f"{load.rss_kb(cb.pid)[0] / 1024:.1f} MB RSS"))
        print(rows[-1], flush=True)
        load.stop(cb)
    rows.append(("growth of the warm blob with upstreams", shape(counts, [1 / r for r in rates]), ""))
    load.stop(reg)
    return rows


def fill_cache(cache, count, upstream="reg", repo="bench/many"):
    """A cache as chartbridge leaves it after serving `count` distinct 5 KB blobs of one
    repository: each blob's content-addressed file under sha256/, and the link (an empty ref
    under refs/links/<upstream>/<repo>/) that lets the repository read it. Written here rather
    than pulled through a registry, so that a million blobs take minutes, not hours; every
    measurement first reads one blob back through chartbridge, whose upstream is unreachable,
    so a layout it did not accept would fail the run. Returns the digests."""
    blobs = os.path.join(cache, "sha256")
    links = os.path.join(cache, "refs", "links", upstream, repo.replace("/", "%2F"))
    os.makedirs(blobs)
    os.makedirs(links)
    digests = []
    for i in range(count):
        data = i.to_bytes(8, "big") * 640  # 5 KiB, distinct for each i
        h = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, h), "wb") as f:
            f.write(data)
        open(os.path.join(links, h), "wb").close()
        digests.append(f"sha256:{h}")
    return digests


def blob_counts():
    """Start-up on caches of 10k, 100k and 1M blobs (time until listening, RSS), and 5 KB blobs
    read at random among 1k, 10k, 100k and 1M of them with a 1 MiB memory tier, so that nearly
    every read comes from the disk tier (the files are in the page cache: they were just
    written, and 1M blobs are 5 GB)."""
    rows, starts, rss, rates = [], [], [], []
    start_counts = [10_000, 100_000, 1_000_000]
    read_counts = [1_000, 10_000, 100_000, 1_000_000]
    upstream = "  - name: reg\n    kind: oci\n    url: http://127.0.0.1:9\n"
    for count in read_counts:
        cache = os.path.join(load.WORK, f"cache{count}")
        digests = fill_cache(cache, count)
        if count in start_counts:
            s_runs, r_runs = [], []
            for _ in range(RUNS):
                t = time.perf_counter()
                cb, _ = load.chartbridge(upstream, cache=cache)
                s_runs.append(time.perf_counter() - t)
                time.sleep(0.3)
                r_runs.append(load.rss_kb(cb.pid)[0] / 1024)
                load.stop(cb)
            starts.append(load.median(s_runs))
            rss.append(load.median(r_runs))
            rows.append((f"start-up on {count:,} cached blobs", f"{starts[-1]:.3f} s", f"{rss[-1]:.1f} MB RSS"))
            print(rows[-1], flush=True)
        rates.append(random_reads(cache, digests, upstream))
        rows.append((f"warm 5 KB blobs read at random among {count:,} cached (1 MiB memory tier)",
                     f"{rates[-1][0]:.0f} req/s", f"{rates[-1][1]:.1f} MB RSS"))
        print(rows[-1], flush=True)
        shutil.rmtree(cache, ignore_errors=True)
    rows.append(("growth of start-up", shape(start_counts, starts), shape(start_counts, rss)))
    rows.append(("growth of random reads with distinct blobs",
                 shape(read_counts, [1 / r for r, _ in rates]), shape(read_counts, [m for _, m in rates])))
    return rows


def random_reads(cache, digests, upstream):
    """req/s (median of RUNS wrk runs after one to warm up) and RSS of a fresh chartbridge
    serving 5 KB blobs picked at random among `digests`."""
    cb, port = load.chartbridge(upstream, cache=cache, cache_extra="  max_memory_bytes: 1MiB\n")
    d = load.tempfile.mkdtemp(dir=load.WORK)
    one = digests[len(digests) // 2]
    want = (len(digests) // 2).to_bytes(8, "big") * 640
    assert load.get(f"http://127.0.0.1:{port}/v2/reg/bench/many/blobs/{one}") == want
    with open(f"{d}/digests", "w") as f:
        f.write("\n".join(digests) + "\n")
    lua = os.path.join(d, "random.lua")
    with open(lua, "w") as f:
        f.write(f'local d = {{}}\nfor line in io.lines("{d}/digests") do d[#d + 1] = line end\n'
                'request = function() return wrk.format(nil, "/v2/reg/bench/many/blobs/" .. d[math.random(#d)]) end\n')
    runs = []
    for i in range(RUNS + 1):
        out = subprocess.run(["taskset", "-c", load.LOAD_CPU, "wrk", "-t1", "-c32", f"-d{load.DURATION}",
                              "-s", lua, f"http://127.0.0.1:{port}"], capture_output=True, text=True,
                             check=True).stdout
        assert "Non-2xx" not in out and "Socket errors" not in out, out
        if i:  # the first run warms up: links read from the ref store, the allocator's pools
            runs.append(float(load.re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)))
    mem = load.rss_kb(cb.pid)[0] / 1024
    load.stop(cb)
    return load.median(runs), mem


def concurrent_cold_pulls():
    """N skopeo clients pulling N different images (a 1 MB layer each) at once, through a fresh
    chartbridge and directly from the registry: wall time until all are done."""
    rows = []
    reg, reg_port = load.registry()
    for i in range(32):
        load.push_image(reg_port, f"bench/img{i}", "v1", [os.urandom(1 << 20)])
    env = dict(os.environ, HOME=load.WORK)

    def pull_all(host, n):
        t = time.perf_counter()
        procs = [subprocess.Popen(["skopeo", "copy", "--src-tls-verify=false", f"docker://{host}/bench/img{i}:v1",
                                   f"dir:{load.tempfile.mkdtemp(dir=load.WORK)}"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(n)]
        assert all(p.wait() == 0 for p in procs)
        return time.perf_counter() - t

    for n in [1, 8, 32]:
        via, direct = [], []
        for _ in range(RUNS):
            cb, port = load.chartbridge(oci("reg", reg_port))
            via.append(pull_all(f"127.0.0.1:{port}/reg", n))
            load.stop(cb)
            direct.append(pull_all(f"127.0.0.1:{reg_port}", n))
        v, dd = load.median(via), load.median(direct)
        rows.append((f"cold pulls, {n} clients of different images at once",
                     f"{v:.2f} s via chartbridge, {dd:.2f} s direct ({v / dd:.2f}x)", ""))
        print(rows[-1], flush=True)
    load.stop(reg)
    return rows


def write(rows, took):
    cpu = load.cpu_model()
    out = ["# How cost grows with the work", "",
           f"Produced by `benches/growth.py` (RUNS={RUNS}, median of fresh processes); {platform.machine()}, "
           f"{os.cpu_count()} cores ({cpu}). Run took {took:.0f} s. Absolute figures: each row has no "
           "peer; the shape column compares the first row with the last.", "",
           "| work | time | memory |", "|---|---|---|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    load.save("RESULTS-growth.md", out)


if __name__ == "__main__":
    t0 = time.time()
    try:
        rows = main()
        write(rows, time.time() - t0)
    finally:
        for p in list(load.procs):
            load.stop(p)
        shutil.rmtree(load.WORK, ignore_errors=True)
