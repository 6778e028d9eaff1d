#!/usr/bin/env python3
"""How cost grows with the work (issue 14's table, first rows): the first tags/list of a helm
upstream whose index has 1k, 5k, 15k and 50k versions (fetch, parse, rewrite; time and peak RSS),
and start-up on a cache of 10k and 100k blobs (time until listening, RSS). Each figure is the
median of RUNS fresh processes. Writes benches/RESULTS-growth.md.

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

    counts = [10_000, 100_000]
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
    return rows


def write(rows, took):
    cpu = ""
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    out = ["# How cost grows with the work", "",
           f"Produced by `benches/growth.py` (RUNS={RUNS}, median of fresh processes); {platform.machine()}, "
           f"{os.cpu_count()} cores ({cpu}). Run took {took:.0f} s. Absolute figures: each row has no "
           "peer; the shape column compares the first row with the last.", "",
           "| work | time | memory |", "|---|---|---|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    path = os.path.join(ROOT, "benches", "RESULTS-growth.md")
    open(path, "w").write("\n".join(out) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    t0 = time.time()
    try:
        rows = main()
        write(rows, time.time() - t0)
    finally:
        for p in list(load.procs):
            load.stop(p)
        shutil.rmtree(load.WORK, ignore_errors=True)
