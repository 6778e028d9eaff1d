#!/usr/bin/env python3
"""chartbridge's scripted load run: starts nginx, CNCF distribution (direct, and in proxy mode)
and chartbridge on this machine, measures them in the same run, and writes one table with the
median of RUNS runs and ratios against the peers to benches/RESULTS.md.

Servers are pinned to core 0 and the load generator (wrk) to core 1. Everything listens on
127.0.0.1. Called by benches/load.sh, which installs the tools and builds the release binary.
"""
import hashlib, http.client, json, os, platform, re, shutil, signal, socket, statistics
import subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "chartbridge")
HELM = os.path.join(ROOT, "target", "test-tools", "helm-v4.1.4")
RUNS = int(os.environ.get("RUNS", "3"))
# ONLY=cold (or blobs, api, index, jsonindex, startup) runs one section, for quick checks; RESULTS.md is
# only written by a full run.
ONLY = os.environ.get("ONLY")
DURATION = os.environ.get("DURATION", "4s")
# COLD_CACHE=/dev/shm/x puts the cold-pull section's cache on that directory (e.g. a tmpfs), to
# tell the disk's share of the cold-pull overhead from chartbridge's own.
COLD_CACHE = os.environ.get("COLD_CACHE")
SERVER_CPU, LOAD_CPU = "0", "1"
WORK = tempfile.mkdtemp(prefix="cb-bench-")
procs = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"nothing listening on {port}")


def start(cmd, port, env=None, log=None):
    out = open(log or os.devnull, "w")
    p = subprocess.Popen(["taskset", "-c", SERVER_CPU] + cmd, stdout=out, stderr=out, env=env)
    procs.append(p)
    wait_port(port)
    return p


def stop(p):
    p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    if p in procs:
        procs.remove(p)


def median(xs):
    return statistics.median(xs)


# ---------------------------------------------------------------- peers

# nginx's access log line, when on, is about as long as chartbridge's (timestamp, level, method,
# path, status, request id, bytes, time, cache tier, upstream), and written the same way: one
# write per request, unbuffered.
NGINX_LOG_FORMAT = ("'$time_iso8601  INFO access: method=$request_method path=$uri status=$status "
                    "request_id=$request_id bytes=$body_bytes_sent ms=$request_time cache=memory upstream=reg'")


def nginx(root, log=False):
    port = free_port()
    d = tempfile.mkdtemp(dir=WORK)
    access = f"log_format bench {NGINX_LOG_FORMAT}; access_log {d}/access.log bench;" if log else "access_log off;"
    conf = f"""daemon off; master_process off; worker_processes 1; pid {d}/pid; error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{ {access} sendfile on; tcp_nopush on; keepalive_requests 100000;
  client_body_temp_path {d}/1; proxy_temp_path {d}/2; fastcgi_temp_path {d}/3; uwsgi_temp_path {d}/4; scgi_temp_path {d}/5;
  types {{ application/octet-stream bin; application/x-yaml yaml; application/gzip tgz; application/json json; }}
  server {{ listen 127.0.0.1:{port}; root {root}; }} }}
"""
    open(f"{d}/nginx.conf", "w").write(conf)
    p = start(["/usr/sbin/nginx", "-c", f"{d}/nginx.conf", "-p", d], port)
    return p, port


def registry(proxy_of=None):
    port = free_port()
    d = tempfile.mkdtemp(dir=WORK)
    proxy = f"proxy: {{remoteurl: http://127.0.0.1:{proxy_of}}}\n" if proxy_of else ""
    open(f"{d}/config.yml", "w").write(
        "version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\n"
        f"storage: {{filesystem: {{rootdirectory: {d}/data}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n{proxy}")
    p = start(["/usr/bin/docker-registry", "serve", f"{d}/config.yml"], port)
    return p, port


def chartbridge(upstreams, cache=None, log=False, cache_extra=""):
    """chartbridge on its own cache; `log`: its access log on (to a file, as in production);
    `cache_extra`: more `cache:` settings, as indented YAML lines."""
    port = free_port()
    d = tempfile.mkdtemp(dir=WORK)
    cache = cache or f"{d}/cache"
    open(f"{d}/config.yaml", "w").write(
        f"listen: 127.0.0.1:{port}\ncache:\n  dir: {cache}\n{cache_extra}upstreams:\n{upstreams}")
    env = dict(os.environ, RUST_LOG="error,access=info" if log else "error")
    p = start([BIN, "serve", "--config", f"{d}/config.yaml"], port, env=env, log=f"{d}/log")
    return p, port


def demo_chart(made={}):
    """`helm create` + `helm package` of a demo chart, once per run: (its directory, helm's env)."""
    if not made:
        made["dir"] = os.path.join(WORK, "charts")
        os.makedirs(made["dir"])
        made["env"] = dict(os.environ, HOME=tempfile.mkdtemp(dir=WORK))
        subprocess.run([HELM, "create", f"{WORK}/demo"], check=True, capture_output=True, env=made["env"])
        subprocess.run([HELM, "package", f"{WORK}/demo", "-d", made["dir"]], check=True, capture_output=True,
                       env=made["env"])
    return made["dir"], made["env"]


def rss_kb(pid):
    fields = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        fields[k] = v.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


# ---------------------------------------------------------------- registry data

def push_blob(port, repo, data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.request("POST", f"/v2/{repo}/blobs/uploads/", body=b"")
    r = c.getresponse()
    r.read()
    assert r.status == 202, (r.status, repo)
    loc = r.getheader("Location")
    loc = loc.split("127.0.0.1:%d" % port, 1)[-1] if loc.startswith("http") else loc
    sep = "&" if "?" in loc else "?"
    c.request("PUT", f"{loc}{sep}digest={d}", body=data,
              headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(data))})
    r = c.getresponse()
    r.read()
    assert r.status == 201, (r.status, repo)
    return d, len(data)


def push_image(port, repo, tag, layers):
    cfg = json.dumps({"architecture": "amd64", "os": "linux",
                      "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    cd, cs = push_blob(port, repo, cfg)
    descs = []
    for data in layers:
        d, s = push_blob(port, repo, data)
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s})
    m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
                    "layers": descs}).encode()
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.request("PUT", f"/v2/{repo}/manifests/{tag}", body=m,
              headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    r = c.getresponse()
    r.read()
    assert r.status == 201, r.status
    return [x["digest"] for x in descs]


def get(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req) as r:
        return r.read()


# ---------------------------------------------------------------- load

def wrk(url, conns=32, headers=()):
    cmd = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{conns}", f"-d{DURATION}", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def lat(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)\b", out)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise SystemExit(f"wrk saw errors on {url}:\n{out}")
    return {"rps": rps, "p50": lat(50), "p99": lat(99)}


def wrk_median(url, **kw):
    runs = [wrk(url, **kw) for _ in range(RUNS)]
    return {k: median([r[k] for r in runs]) for k in runs[0]}


def wrk_rounds(urls, **kw):
    """The median per URL of RUNS rounds, each round running every URL once in turn, so a
    drift of the machine's speed during the run falls on all peers alike."""
    runs = {k: [] for k in urls}
    for _ in range(RUNS):
        for k, u in urls.items():
            runs[k].append(wrk(u, **kw))
    return {k: {m: median([r[m] for r in rs]) for m in rs[0]} for k, rs in runs.items()}


def timed(cmd, env=None):
    """(seconds, max RSS in KiB) of a command that must succeed. The RSS comes from GNU time,
    not from our own wait4: a child's ru_maxrss counts the address space it was forked with,
    so measured from this Python process it would report at least Python's own peak."""
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "maxrss %M"] + cmd, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, env=env)
    took = time.perf_counter() - t
    err = p.stderr.decode(errors="replace")
    if p.returncode != 0:
        raise SystemExit(f"{cmd} failed: {err}")
    return took, int(re.findall(r"^maxrss (\d+)$", err, re.M)[-1])  # seconds, KiB


# ---------------------------------------------------------------- the run

def main():
    rows = []  # (section, what, figures...)
    want = lambda section: ONLY in (None, section)
    def row(*cols):
        rows.append(cols)
        print(" | ".join(str(c) for c in cols), flush=True)

    data_dir = os.path.join(WORK, "www")
    os.makedirs(data_dir)
    blobs = {"5 KB": os.urandom(5 * 1024), "50 KB": os.urandom(50 * 1024), "20 MB": os.urandom(20 << 20)}
    for name, b in blobs.items():
        open(os.path.join(data_dir, name.replace(" ", "") + ".bin"), "wb").write(b)

    web, web_port = nginx(data_dir)
    web_log, web_log_port = nginx(data_dir, log=True)
    reg, reg_port = registry()
    prox, prox_port = registry(proxy_of=reg_port)
    digests = push_image(reg_port, "bench/blobs", "v1", list(blobs.values()))
    layers = [os.urandom(5 << 20) for _ in range(4)]
    push_image(reg_port, "bench/multi", "v1.0.0", layers)
    for t in ["v1.1.0", "v1.2.0", "v2.0.0-rc.1"]:
        push_image(reg_port, "bench/multi", t, layers)
    oci_upstream = f"  - name: reg\n    kind: oci\n    url: http://127.0.0.1:{reg_port}\n    tag_ttl: 1h\n"
    cb, cb_port = chartbridge(oci_upstream)
    row("section", "what", "chartbridge", "nginx", "distribution proxy", "distribution direct",
        "vs nginx", "vs proxy")

    if want("blobs"):
        # warm blobs: access logs off on both sides, then on on both sides
        cb_log, cb_log_port = chartbridge(oci_upstream, log=True)
        for (name, b), d in zip(blobs.items(), digests):
            urls = {
                "cb": f"http://127.0.0.1:{cb_port}/v2/reg/bench/blobs/blobs/{d}",
                "nginx": f"http://127.0.0.1:{web_port}/{name.replace(' ', '')}.bin",
                "cb_log": f"http://127.0.0.1:{cb_log_port}/v2/reg/bench/blobs/blobs/{d}",
                "nginx_log": f"http://127.0.0.1:{web_log_port}/{name.replace(' ', '')}.bin",
                "proxy": f"http://127.0.0.1:{prox_port}/v2/bench/blobs/blobs/{d}",
                "direct": f"http://127.0.0.1:{reg_port}/v2/bench/blobs/blobs/{d}",
            }
            for u in urls.values():
                assert get(u) == b, u  # warm and check bytes
            conns = 8 if name == "20 MB" else 32
            r = wrk_rounds(urls, conns=conns)
            mb = len(b) / 1e6
            fmt = lambda k: f"{r[k]['rps']:.0f} ({r[k]['p50']:.2f} / {r[k]['p99']:.2f})"
            row("warm blob GET", f"{name} req/s (p50 / p99 ms), access logs off",
                *(fmt(k) for k in ["cb", "nginx", "proxy", "direct"]),
                f"{r['cb']['rps'] / r['nginx']['rps']:.2f}x", f"{r['cb']['rps'] / r['proxy']['rps']:.1f}x")
            row("warm blob GET", f"{name} req/s (p50 / p99 ms), access logs on", fmt("cb_log"), fmt("nginx_log"),
                "", "", f"{r['cb_log']['rps'] / r['nginx_log']['rps']:.2f}x", "")
            if name == "20 MB":
                row("warm blob GET", "20 MB MB/s, access logs off (on)",
                    *(f"{r[k]['rps'] * mb:.0f} ({r[k + '_log']['rps'] * mb:.0f})" for k in ["cb", "nginx"]),
                    *(f"{r[k]['rps'] * mb:.0f}" for k in ["proxy", "direct"]),
                    f"{r['cb']['rps'] / r['nginx']['rps']:.2f}x ({r['cb_log']['rps'] / r['nginx_log']['rps']:.2f}x)", "")
        stop(cb_log)

    if want("api"):
        # warm manifest by tag and tags/list, each against nginx serving the same bytes as a
        # static file (the ceiling for an answer already in memory)
        accept = "Accept: application/vnd.oci.image.manifest.v1+json"
        chart_repo, helm_env = demo_chart()
        subprocess.run([HELM, "repo", "index", chart_repo], check=True, capture_output=True, env=helm_env)
        site, site_port = nginx(chart_repo)
        cbh, cbh_port = chartbridge(f"  - name: h\n    kind: helm\n    url: http://127.0.0.1:{site_port}\n    index_ttl: 1h\n")
        cases = [
            ("warm manifest GET", "OCI upstream, by tag", f"{cb_port}/v2/reg/bench/multi/manifests/v1.0.0",
             "bench/multi/manifests/v1.0.0", [accept]),
            ("warm tags/list", "OCI upstream", f"{cb_port}/v2/reg/bench/multi/tags/list",
             "bench/multi/tags/list", []),
            ("warm manifest GET", "helm upstream, by tag", f"{cbh_port}/v2/h/demo/manifests/0.1.0", None, [accept]),
            ("warm tags/list", "helm upstream", f"{cbh_port}/v2/h/demo/tags/list", None, []),
        ]
        static = os.path.join(WORK, "static")
        os.makedirs(static)
        for i, (_, _, path, _, headers) in enumerate(cases):
            body = get(f"http://127.0.0.1:{path}", dict(h.split(": ", 1) for h in headers))
            open(os.path.join(static, f"{i}.json"), "wb").write(body)
        st, st_port = nginx(static)
        for i, (section, what, path, reg_path, headers) in enumerate(cases):
            urls = {"cb": f"http://127.0.0.1:{path}", "nginx": f"http://127.0.0.1:{st_port}/{i}.json"}
            if reg_path:
                urls["proxy"] = f"http://127.0.0.1:{prox_port}/v2/{reg_path}"
                urls["direct"] = f"http://127.0.0.1:{reg_port}/v2/{reg_path}"
            for u in urls.values():
                get(u, dict(h.split(": ", 1) for h in headers))
            r = wrk_rounds(urls, headers=headers)
            fmt = lambda k: f"{r[k]['rps']:.0f} ({r[k]['p50']:.2f} / {r[k]['p99']:.2f})" if k in r else "-"
            row(section, f"{what}, req/s (p50 / p99 ms)", *(fmt(k) for k in ["cb", "nginx", "proxy", "direct"]),
                f"{r['cb']['rps'] / r['nginx']['rps']:.2f}x static",
                f"{r['cb']['rps'] / r['proxy']['rps']:.1f}x" if "proxy" in r else "")
        stop(st)
        stop(cbh)
        stop(site)
        stop(cb)

    if want("cold"):
        # cold pull of a 4-layer image (20 MB) and of a chart, each run on an empty cache
        skopeo_env = dict(os.environ, HOME=WORK)
        chart_repo, helm_env = demo_chart()
        subprocess.run([HELM, "push", f"{chart_repo}/demo-0.1.0.tgz", f"oci://127.0.0.1:{reg_port}/charts", "--plain-http"],
                       check=True, capture_output=True, env=helm_env)
        cold = {"img_cb": [], "img_direct": [], "chart_cb": [], "chart_direct": []}
        for i in range(RUNS):
            cache = tempfile.mkdtemp(dir=COLD_CACHE) if COLD_CACHE else None
            cb, cb_port = chartbridge(f"  - name: reg\n    kind: oci\n    url: http://127.0.0.1:{reg_port}\n", cache)
            # alternate which goes first (image and chart alike), so neither always meets a
            # colder registry page cache
            order = [("img_cb", f"127.0.0.1:{cb_port}/reg"), ("img_direct", f"127.0.0.1:{reg_port}")]
            for key, host in (order if i % 2 == 0 else order[::-1]):
                dest = tempfile.mkdtemp(dir=WORK)
                t, _ = timed(["skopeo", "copy", "--src-tls-verify=false", f"docker://{host}/bench/multi:v1.0.0", f"dir:{dest}"], env=skopeo_env)
                cold[key].append(t)
                shutil.rmtree(dest)
            charts = [("chart_cb", f"127.0.0.1:{cb_port}/reg"), ("chart_direct", f"127.0.0.1:{reg_port}")]
            for key, host in (charts if i % 2 == 0 else charts[::-1]):
                dest = tempfile.mkdtemp(dir=WORK)
                t, _ = timed([HELM, "pull", f"oci://{host}/charts/demo", "--version", "0.1.0", "--plain-http", "-d", dest], env=helm_env)
                cold[key].append(t)
            stop(cb)
        c = {k: median(v) for k, v in cold.items()}
        row("cold pull", "4-layer 20 MB image (skopeo), s", f"{c['img_cb']:.3f}", "-", "-", f"{c['img_direct']:.3f}",
            "", f"{c['img_cb'] / c['img_direct']:.2f}x direct")
        row("cold pull", "chart (helm v4 pull), s", f"{c['chart_cb']:.3f}", "-", "-", f"{c['chart_direct']:.3f}",
            "", f"{c['chart_cb'] / c['chart_direct']:.2f}x direct")

    if want("index"):
        # the 15k-version index
        big = os.path.join(WORK, "bigrepo")
        os.makedirs(big)
        shutil.copy(f"{demo_chart()[0]}/demo-0.1.0.tgz", big)
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gen-index.py"), "150", "100",
                        f"{big}/index.yaml", f"{big}/demo-0.1.0.tgz"], check=True)
        stop(web)
        web, web_port = nginx(big)
        size_mb = os.path.getsize(f"{big}/index.yaml") / 1e6
        first, idle, loaded = [], [], []
        for _ in range(RUNS):
            cb, cb_port = chartbridge(f"  - name: big\n    kind: helm\n    url: http://127.0.0.1:{web_port}\n    index_ttl: 1h\n")
            time.sleep(0.3)
            idle.append(rss_kb(cb.pid)[0])
            t = time.perf_counter()
            get(f"http://127.0.0.1:{cb_port}/v2/big/chart042/tags/list")
            first.append(time.perf_counter() - t)
            loaded.append(rss_kb(cb.pid))
            if len(first) < RUNS:
                stop(cb)
        warm = wrk_median(f"http://127.0.0.1:{cb_port}/v2/big/chart042/tags/list")
        row("15k-version index", f"first tags/list ({size_mb:.1f} MB index: fetch, parse, rewrite), s", f"{median(first):.3f}", "", "", "", "", "")
        row("15k-version index", "warm tags/list req/s (p50 / p99 ms)", f"{warm['rps']:.0f} ({warm['p50']:.2f} / {warm['p99']:.2f})", "", "", "", "", "")
        row("memory", "chartbridge RSS idle, MB", f"{median(idle) / 1024:.1f}", "", "", "", "", "")
        row("memory", "chartbridge RSS with the 15k index loaded (peak), MB",
            f"{median([l[0] for l in loaded]) / 1024:.1f} ({median([l[1] for l in loaded]) / 1024:.1f})", "", "", "", "", "")

        # helm pull of one chart: through chartbridge over OCI vs helm repo add+update+pull directly
        via, direct = [], []
        for _ in range(RUNS):
            home = tempfile.mkdtemp(dir=WORK)
            env = dict(os.environ, HOME=home, HELM_CACHE_HOME=f"{home}/c", HELM_CONFIG_HOME=f"{home}/f", HELM_DATA_HOME=f"{home}/d")
            dest = tempfile.mkdtemp(dir=WORK)
            via.append(timed([HELM, "pull", f"oci://127.0.0.1:{cb_port}/big/demo", "--version", "0.1.0", "--plain-http", "-d", dest], env=env))
            t1 = timed([HELM, "repo", "add", "big", f"http://127.0.0.1:{web_port}"], env=env)
            t2 = timed([HELM, "repo", "update"], env=env)
            t3 = timed([HELM, "pull", "big/demo", "--version", "0.1.0", "-d", dest], env=env)
            direct.append((t1[0] + t2[0] + t3[0], max(t1[1], t2[1], t3[1])))
        v_t, v_m = median([x[0] for x in via]), median([x[1] for x in via])
        d_t, d_m = median([x[0] for x in direct]), median([x[1] for x in direct])
        row("helm pull, 15k repo", "wall s (helm peak RSS MB): chartbridge OCI vs repo add+update+pull",
            f"{v_t:.3f} ({v_m / 1024:.0f})", "-", "-", f"direct: {d_t:.3f} ({d_m / 1024:.0f})", "",
            f"{d_t / v_t:.1f}x faster, {d_m / v_m:.1f}x less memory")
    if want("jsonindex"):
        # the mirror view of the 15k index as JSON (the default) and as YAML: what helm pays to
        # read it (search, wall time and peak RSS, every helm version), and chartbridge's rate
        big = os.path.join(WORK, "jsonrepo")
        os.makedirs(big)
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gen-index.py"), "150", "100",
                        f"{big}/index.yaml"], check=True)
        site, site_port = nginx(big)
        cb, cb_port = chartbridge(
            f"  - name: j\n    kind: helm\n    url: http://127.0.0.1:{site_port}\n    index_ttl: 1h\n"
            f"  - name: y\n    kind: helm\n    url: http://127.0.0.1:{site_port}\n    index_ttl: 1h\n"
            f"    index_format: yaml\n")
        sizes = {f: len(get(f"http://127.0.0.1:{cb_port}/{f}/index.yaml")) / 1e6 for f in ["j", "y"]}
        row("index as JSON", f"index bytes served, MB: JSON vs YAML", f"{sizes['j']:.1f} vs {sizes['y']:.1f}",
            "", "", "", "", "")
        for version in ["v3.17.3", "v3.18.0", "v4.1.4"]:
            helm = os.path.join(ROOT, "target", "test-tools", f"helm-{version}")
            res = {}
            for f in ["j", "y"]:
                # one repository per helm home: `helm search` reads every configured index
                home = tempfile.mkdtemp(dir=WORK)
                env = dict(os.environ, HOME=home, HELM_CACHE_HOME=f"{home}/c", HELM_CONFIG_HOME=f"{home}/f",
                           HELM_DATA_HOME=f"{home}/d")
                timed([helm, "repo", "add", f, f"http://127.0.0.1:{cb_port}/{f}"], env=env)
                runs = [timed([helm, "search", "repo", f"{f}/chart042", "--versions"], env=env) for _ in range(RUNS)]
                res[f] = (median([r[0] for r in runs]), median([r[1] for r in runs]))
            row("index as JSON", f"helm {version} search repo --versions, s (helm peak RSS MB): JSON vs YAML",
                f"{res['j'][0]:.2f} ({res['j'][1] / 1024:.0f}) vs {res['y'][0]:.2f} ({res['y'][1] / 1024:.0f})",
                "", "", "", "", f"{res['y'][0] / res['j'][0]:.1f}x faster, {res['y'][1] / res['j'][1]:.1f}x less memory")
        rates = {f: wrk_median(f"http://127.0.0.1:{cb_port}/{f}/index.yaml", conns=4) for f in ["j", "y"]}
        row("index as JSON", "chartbridge warm index.yaml req/s (p99 ms): JSON vs YAML",
            f"{rates['j']['rps']:.0f} ({rates['j']['p99']:.1f}) vs {rates['y']['rps']:.0f} ({rates['y']['p99']:.1f})",
            "", "", "", "", "")
        stop(cb)
        stop(site)

    if want("startup"):
        # start-up on a cache of 100k blobs (the scan indexes sizes and mtimes for LRU)
        cache = os.path.join(WORK, "bigcache")
        blobs_dir = os.path.join(cache, "sha256")
        os.makedirs(blobs_dir)
        for i in range(100_000):
            data = i.to_bytes(4, "big")
            with open(os.path.join(blobs_dir, hashlib.sha256(data).hexdigest()), "wb") as f:
                f.write(data)
        took = []
        for _ in range(RUNS):
            t = time.perf_counter()
            cb, cb_port = chartbridge("  - name: reg\n    kind: oci\n    url: http://127.0.0.1:9\n", cache=cache)
            took.append(time.perf_counter() - t)
            stop(cb)
        row("start-up", "until listening, cache of 100k blobs, s", f"{median(took):.3f}", "", "", "", "", "")
    return rows


def cpu_model():
    """The CPU's model name, as every RESULTS file names the machine it ran on."""
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def save(name, lines):
    """Writes benches/<name> from its lines."""
    path = os.path.join(ROOT, "benches", name)
    open(path, "w").write("\n".join(lines) + "\n")
    print(f"wrote {path}")


def write_results(rows, took):
    cpu = cpu_model()
    mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    header, body = rows[0], rows[1:]
    out = ["# Benchmark results", "",
           f"Produced by `benches/load.sh` (RUNS={RUNS}, wrk -t1 for {DURATION} per run, 32 connections, "
           "8 for the 20 MB blob), every figure the median of the runs, all peers measured in the same run.",
           f"Machine: {platform.machine()}, {os.cpu_count()} cores ({cpu}), {mem} GiB; servers pinned to core "
           f"{SERVER_CPU}, wrk to core {LOAD_CPU}; everything on 127.0.0.1. Run took {took:.0f} s. wrk runs "
           "of peers are interleaved round by round. Access logs, where on, go to a file, one write per "
           "request on both sides.",
           "Peers: nginx serving the same bytes from disk (sendfile; for manifests and tag lists, the bytes "
           "chartbridge answers, saved as static files), CNCF distribution 2.8 (Debian "
           "`docker-registry`) direct and as a pull-through proxy of the direct one; chartbridge mirrors "
           "the direct one (kind: oci) or nginx (kind: helm).", "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in body:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    save("RESULTS.md", out)


if __name__ == "__main__":
    t0 = time.time()
    try:
        rows = main()
        if ONLY is None:
            write_results(rows, time.time() - t0)
    finally:
        for p in list(procs):
            stop(p)
        shutil.rmtree(WORK, ignore_errors=True)
