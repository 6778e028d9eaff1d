#!/usr/bin/env python3
"""Before/after figures for two hardening findings (issue 15), against a given binary.

usage: benches/hardening.py BINARY [BINARY...]

For each binary, on this machine:
- slow headers: the server runs with a 1,024-descriptor limit (soft and hard); 1,100 clients
  connect and send one header line every 5 s. Reported: connections the server still holds
  after 15 s, and whether (and how fast) a new client is answered then.
- bcrypt: a protected upstream with a cost-12 htpasswd entry; 4 threads loop wrong passwords
  for 8 s while one thread times anonymous requests to a public upstream. Reported: p50 and
  p99 of those anonymous requests, and the time to refuse a wrong password for a known user and
  for an unknown one (median of 5 each, before the attack, so backoff does not apply).

Old binaries do not know the newer config keys, so the config uses only keys both know.
Prints a Markdown table.
"""
import base64, os, socket, statistics, subprocess, sys, tempfile, threading, time, urllib.request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, t=20):
    end = time.time() + t
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def start(binary, cfg, nofile=None):
    d = tempfile.mkdtemp()
    path = os.path.join(d, "c.yaml")
    open(path, "w").write(cfg.replace("DIR", d))
    cmd = [binary, "serve", "--config", path]
    if nofile:
        cmd = ["prlimit", f"--nofile={nofile}:{nofile}", "--"] + cmd
    env = dict(os.environ, RUST_LOG="error")
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return p, d


def timed_get(url, headers=None, timeout=10):
    req = urllib.request.Request(url, headers=headers or {})
    t = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            code = r.status
    except urllib.error.HTTPError as e:
        code = e.code
    except Exception:
        code = None
    return code, time.perf_counter() - t


def slow_headers(binary):
    port = free_port()
    cfg = f"listen: 127.0.0.1:{port}\ncache:\n  dir: DIR/cache\nupstreams: []\n"
    p, _ = start(binary, cfg, nofile=1024)
    wait_port(port)
    socks, stop = [], threading.Event()
    for _ in range(1100):
        try:
            s = socket.create_connection(("127.0.0.1", port), 2)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        except OSError:
            pass

    def trickle():
        while not stop.is_set():
            for s in socks:
                try:
                    s.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    pass
            stop.wait(5)

    t = threading.Thread(target=trickle)
    t.start()
    time.sleep(15)
    held = subprocess.run(
        ["ss", "-Htn", "state", "established", f"sport = :{port}"],
        capture_output=True, text=True,
    ).stdout.count("\n")
    code, took = timed_get(f"http://127.0.0.1:{port}/healthz", timeout=10)
    stop.set()
    t.join()
    for s in socks:
        s.close()
    p.kill()
    return held, code, took


def basic(user, pw):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}


def bcrypt_load(binary):
    site = tempfile.mkdtemp()
    open(os.path.join(site, "index.yaml"), "w").write("apiVersion: v1\nentries: {}\n")
    web_port, port = free_port(), free_port()
    web = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(web_port), "--bind", "127.0.0.1", "-d", site],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_port(web_port)
    ht = os.path.join(site, "htpasswd")
    subprocess.run(["htpasswd", "-B", "-C", "12", "-bc", ht, "alice", "right"], check=True,
                   capture_output=True)
    url = f"http://127.0.0.1:{web_port}/"
    cfg = (f"listen: 127.0.0.1:{port}\ncache:\n  dir: DIR/cache\nupstreams:\n"
           f"  - {{name: priv, kind: helm, url: '{url}', access: {{htpasswd_file: {ht}}}}}\n"
           f"  - {{name: pub, kind: helm, url: '{url}', index_ttl: 1h}}\n")
    p, _ = start(binary, cfg)
    wait_port(port)
    base = f"http://127.0.0.1:{port}"
    timed_get(f"{base}/pub/index.yaml")
    # two of each: four failures stay under the five a new binary allows before backing off
    known = statistics.mean(
        timed_get(f"{base}/priv/index.yaml", basic("alice", f"wrong{i}"))[1] for i in range(2))
    unknown = statistics.mean(
        timed_get(f"{base}/priv/index.yaml", basic(f"nobody{i}", "wrong"))[1] for i in range(2))
    stop = threading.Event()

    def attack(n):
        i = 0
        while not stop.is_set():
            timed_get(f"{base}/priv/index.yaml", basic("alice", f"guess{n}-{i}"))
            i += 1

    threads = [threading.Thread(target=attack, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(1)
    lat, end = [], time.time() + 8
    while time.time() < end:
        lat.append(timed_get(f"{base}/pub/index.yaml")[1])
        time.sleep(0.02)
    stop.set()
    for t in threads:
        t.join()
    p.kill()
    web.kill()
    lat.sort()
    return statistics.median(lat), lat[int(len(lat) * 0.99) - 1], known, unknown


def main():
    rows = []
    for b in sys.argv[1:]:
        held, code, took = slow_headers(b)
        p50, p99, known, unknown = bcrypt_load(b)
        rows.append((b, held, code, took, p50, p99, known, unknown))
    print("| binary | slow-header conns held after 15 s (1,100 tried, nofile 1024) | new client | "
          "anonymous p50 / p99 under 4 loops of wrong passwords | refuse wrong pw: known / unknown user |")
    print("|---|---|---|---|---|")
    for b, held, code, took, p50, p99, known, unknown in rows:
        client = f"{code} in {took * 1000:.0f} ms" if code else f"no answer in {took:.0f} s"
        print(f"| {b} | {held} | {client} | {p50 * 1000:.1f} ms / {p99 * 1000:.1f} ms | "
              f"{known * 1000:.0f} ms / {unknown * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
