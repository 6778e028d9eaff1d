#!/usr/bin/env python3
"""How cost grows with the work (issue 14's table): the first tags/list of a helm upstream whose
index has 1k, 5k, 15k and 50k versions (fetch, parse, rewrite; time and peak RSS); start-up on a
cache of 10k, 100k and 1M blobs (time until listening, RSS); warm 5 KB blob req/s with 1, 10 and
100 configured upstreams, and read at random among 1k and 10k distinct cached blobs with a 1 MiB
memory tier (so reads go to the disk tier); cold pulls by 1, 8 and 32 clients of different images
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

    counts = [10_000, 100_000, 1_000_000]
    starts, rss = [], []
    for count in counts:
        cache = os.path.join(load.WORK, f"cache{count}")
        blobs = os.path.join(cache, "sha256")
        os.makedirs(blobs)
        for i in range(count):
            data = i.to_bytes(4, "big")
            with open(os.path.join(blobs, hashlib.sha256(data).hexdigest()), "wb") as f:
                f.write(data)
        s_runs, r_runs = [], []
        for _ in range(RUNS):
            t = time.perf_counter()
            cb, _ = load.chartbridge("  - name: reg\n    kind: oci\n    url: http://127.0.0.1:9\n", cache=cache)
            s_runs.append(time.perf_counter() - t)
            time.sleep(0.3)
            r_runs.append(load.rss_kb(cb.pid)[0] / 1024)
            load.stop(cb)
        starts.append(load.median(s_runs))
        rss.append(load.median(r_runs))
        rows.append((f"start-up on {count:,} cached blobs", f"{starts[-1]:.3f} s", f"{rss[-1]:.1f} MB RSS"))
        print(rows[-1], flush=True)
        shutil.rmtree(cache, ignore_errors=True)
    rows.append(("growth of start-up", shape(counts, starts), shape(counts, rss)))
    rows += upstream_counts()
    rows += random_reads()
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


def random_reads():
    """5 KB blobs read at random among K distinct cached ones; the memory tier holds 1 MiB, so
    nearly every read comes from the disk tier."""
    rows, rates = [], []
    reg, reg_port = load.registry()
    counts = [1_000, 10_000]
    digests = []
    for i in range(counts[-1]):
        digests.append(load.push_blob(reg_port, "bench/many", os.urandom(5 * 1024))[0])
    cache = os.path.join(load.WORK, "randomcache")
    upstream = oci("reg", reg_port)
    cfg_extra = "  max_memory_bytes: 1MiB\n"
    for count in counts:
        port = load.free_port()
        d = load.tempfile.mkdtemp(dir=load.WORK)
        open(f"{d}/config.yaml", "w").write(
            f"listen: 127.0.0.1:{port}\ncache:\n  dir: {cache}\n{cfg_extra}upstreams:\n{upstream}")
        cb = load.start([load.BIN, "serve", "--config", f"{d}/config.yaml"], port,
                        env=dict(os.environ, RUST_LOG="error"))
        for dg in digests[:count]:
            load.get(f"http://127.0.0.1:{port}/v2/reg/bench/many/blobs/{dg}")  # cold once: cached and linked
        lua = os.path.join(d, "random.lua")
        with open(lua, "w") as f:
            f.write("local d = {" + ",".join(f'"{x}"' for x in digests[:count]) + "}\n"
                    "request = function() return wrk.format(nil, \"/v2/reg/bench/many/blobs/\" .. d[math.random(#d)]) end\n")
        runs = []
        for _ in range(RUNS):
            out = subprocess.run(["taskset", "-c", load.LOAD_CPU, "wrk", "-t1", "-c32", f"-d{load.DURATION}",
                                  "-s", lua, f"http://127.0.0.1:{port}"], capture_output=True, text=True,
                                 check=True).stdout
            assert "Non-2xx" not in out, out
            runs.append(float(load.re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)))
        rates.append(load.median(runs))
        rows.append((f"warm 5 KB blobs read at random among {count:,} cached (1 MiB memory tier)",
                     f"{rates[-1]:.0f} req/s", f"{load.rss_kb(cb.pid)[0] / 1024:.1f} MB RSS"))
        print(rows[-1], flush=True)
        load.stop(cb)
    rows.append(("growth of random reads with distinct blobs", shape(counts, [1 / r for r in rates]), ""))
    rows.append(("random reads among 100k and 1M cached blobs", "not measured: filling the cache "
                 "through the registry takes longer than this run's budget", ""))
    load.stop(reg)
    return rows


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
