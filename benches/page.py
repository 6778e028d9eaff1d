#!/usr/bin/env python3
"""The catalog page on the Bitnami-shaped 15,000-version index (scripts/gen-index.py): how long
each page type takes warm (median over RUNS rounds of 20 requests each, one keep-alive
connection), and whether the page costs the pull path anything: warm manifest-by-tag and 5 KB
blob rates of this binary against BASE_BIN (a build without the page), measured alternately in
the same run with wrk. Servers on core 0, clients on core 1. Writes benches/RESULTS-page.md.

  ONLY=page benches/load.sh                      # page timings only
  BASE_BIN=/tmp/chartbridge-base ONLY=page benches/load.sh   # and the before/after
"""
import http.client, os, platform, shutil, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402  (the shared harness: nginx, wrk, pinning, medians)

ROOT = load.ROOT
RUNS = load.RUNS
BASE_BIN = os.environ.get("BASE_BIN")


def chartbridge(binary, upstreams):
    port = load.free_port()
    d = tempfile.mkdtemp(dir=load.WORK)
    open(f"{d}/config.yaml", "w").write(
        f"listen: 127.0.0.1:{port}\ncache:\n  dir: {d}/cache\nupstreams:\n{upstreams}")
    env = dict(os.environ, RUST_LOG="error")
    p = load.start([binary, "serve", "--config", f"{d}/config.yaml"], port, env=env, log=f"{d}/log")
    return p, port


def page_ms(port, path, n=20):
    """Median milliseconds of n GETs of path (as a browser asks), one connection."""
    c = http.client.HTTPConnection("127.0.0.1", port)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        c.request("GET", path, headers={"Accept": "text/html"})
        r = c.getresponse()
        body = r.read()
        times.append((time.perf_counter() - t) * 1000)
        if r.status != 200:
            raise SystemExit(f"{path}: HTTP {r.status}: {body[:300]!r}")
    c.close()
    return load.median(times), len(body)


def main():
    rows = []
    big = os.path.join(load.WORK, "bigrepo")
    os.makedirs(big)
    shutil.copy(f"{load.demo_chart()[0]}/demo-0.1.0.tgz", big)
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gen-index.py"), "150", "100",
                    f"{big}/index.yaml", f"{big}/demo-0.1.0.tgz"], check=True)
    for name in ("blob5k.bin",):
        open(os.path.join(big, name), "wb").write(os.urandom(5 * 1024))
    web, web_port = load.nginx(big)
    ups = f"  - name: big\n    kind: helm\n    url: http://127.0.0.1:{web_port}\n    index_ttl: 1h\n"
    cb, port = chartbridge(load.BIN, ups)
    # warm: the index, one chart version pulled (its page shows README and values)
    load.get(f"http://127.0.0.1:{port}/big/index.yaml")
    load.get(f"http://127.0.0.1:{port}/v2/big/demo/manifests/0.1.0")
    load.get(f"http://127.0.0.1:{port}/big/-/demo/0.1.0/demo-0.1.0.tgz")
    pages = [
        ("home (150 charts, 15,001 versions counted)", "/-/"),
        ("upstream page 1 of 3", "/-/u/big"),
        ("upstream filtered (`chart04`)", "/-/u/big?filter=chart04"),
        ("chart page (100 versions, 2 pages)", "/-/u/big/c/chart042"),
        ("chart page 2", "/-/u/big/c/chart042?page=2"),
        ("version page (README, values)", "/-/u/big/c/demo?version=0.1.0"),
        ("search `chart07`", "/-/?q=chart07"),
    ]
    for what, path in pages:
        page_ms(port, path, n=3)  # first look (parse of nothing: the index is in memory)
        runs = [page_ms(port, path) for _ in range(RUNS)]
        ms = load.median([r[0] for r in runs])
        size = runs[0][1]
        rows.append((what, f"`{path}`", f"{ms:.2f}", f"{size / 1024:.0f}"))
        print(rows[-1], flush=True)
    load.stop(cb)

    cost = []
    if BASE_BIN:
        paths = {"warm manifest by tag (helm upstream)": "/v2/big/demo/manifests/0.1.0"}
        results = {b: {k: [] for k in paths} for b in ("base", "head")}
        import random
        for _ in range(RUNS):
            # in a random order each round: a VM's neighbours move rates by a quarter run to run
            order = [("base", BASE_BIN), ("head", load.BIN)]
            random.shuffle(order)
            for label, binary in order:
                p, pt = chartbridge(binary, ups)
                for k, path in paths.items():
                    load.get(f"http://127.0.0.1:{pt}{path}")
                    load.wrk(f"http://127.0.0.1:{pt}{path}")  # warm-up
                    results[label][k].append(load.wrk(f"http://127.0.0.1:{pt}{path}")["rps"])
                load.stop(p)
        for k in paths:
            b, h = load.median(results["base"][k]), load.median(results["head"][k])
            spread = lambda xs: f"{min(xs):.0f}-{max(xs):.0f}"
            cost.append((k, f"{b:.0f} ({spread(results['base'][k])})", f"{h:.0f} ({spread(results['head'][k])})",
                         f"{h / b:.2f}x"))
            print(cost[-1], flush=True)
    return rows, cost


def write(rows, cost, took):
    cpu = load.cpu_model()
    out = ["# Catalog page on the 15,000-version index", "",
           f"Produced by `benches/page.py` (RUNS={RUNS}); {platform.machine()}, {os.cpu_count()} cores "
           f"({cpu}); chartbridge pinned to core {load.SERVER_CPU}, clients to core {load.LOAD_CPU}. "
           f"Run took {took:.0f} s.", "",
           "Each figure: median over the runs of the median of 20 GETs on one keep-alive connection, "
           "warm (the index in memory, as after any pull).", "",
           "| page | path | ms | KiB |", "|---|---|---|---|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    if cost:
        out += ["", "The pull path with and without the page (wrk -t1 -c32, "
                f"{load.DURATION} per run, the two binaries in a random order each round, same run):", "",
                "| request | without the page, req/s (range) | with it, req/s (range) | ratio of medians |",
                "|---|---|---|---|"]
        out += ["| " + " | ".join(r) + " |" for r in cost]
    load.save("RESULTS-page.md", out)


if __name__ == "__main__":
    t0 = time.time()
    try:
        rows, cost = main()
        write(rows, cost, time.time() - t0)
    finally:
        for p in list(load.procs):
            load.stop(p)
        shutil.rmtree(load.WORK, ignore_errors=True)
