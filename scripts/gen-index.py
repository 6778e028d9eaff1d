#!/usr/bin/env python3
"""Generates a Bitnami-shaped Helm repository index for benchmarks.

usage: gen-index.py CHARTS VERSIONS OUT_INDEX [REAL_CHART_TGZ]
CHARTS x VERSIONS entries (150 x 100 = 15,000 is Bitnami's size), each with the fields Bitnami's
entries carry (annotations, dependencies, maintainers, sources, a digest, a URL). When
REAL_CHART_TGZ is given (a `helm package` output named NAME-VERSION.tgz), its entry is added with
the real digest and a relative URL, so clients can pull one chart from the big repository.
Deterministic: the same arguments give the same bytes.
"""
import hashlib, os, sys


def main():
    charts, versions, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    real = sys.argv[4] if len(sys.argv) > 4 else None
    lines = ["apiVersion: v1", "entries:"]
    names = [f"chart{c:03d}" for c in range(charts)]
    real_name = real_version = None
    if real:
        stem = os.path.basename(real)[: -len(".tgz")]
        real_name, real_version = stem.rsplit("-", 1)
        names.append(real_name)
        names.sort()
    for name in names:
        lines.append(f"  {name}:")
        if name == real_name:
            digest = hashlib.sha256(open(real, "rb").read()).hexdigest()
            lines += [
                "  - apiVersion: v2",
                "    appVersion: 1.16.0",
                '    created: "2024-07-22T11:25:35.424530498Z"',
                "    description: A Helm chart for Kubernetes",
                f"    digest: {digest}",
                f"    name: {name}",
                "    type: application",
                "    urls:",
                f"    - {os.path.basename(real)}",
                f"    version: {real_version}",
            ]
            continue
        for v in range(versions):
            ver = f"{v // 100}.{(v // 10) % 10}.{v % 10}"
            digest = hashlib.sha256(f"{name}-{ver}".encode()).hexdigest()
            lines += [
                "  - annotations:",
                "      category: Database",
                "      images: |",
                f"        - name: {name}",
                f"          image: docker.io/bitnami/{name}:1.2.{v}-debian-12-r0",
                "      licenses: Apache-2.0",
                "    apiVersion: v2",
                f"    appVersion: 1.2.{v}",
                '    created: "2024-07-22T11:25:35.424530498Z"',
                "    dependencies:",
                "    - name: common",
                "      repository: oci://registry-1.docker.io/bitnamicharts",
                "      tags:",
                "      - bitnami-common",
                "      version: 2.x.x",
                f"    description: {name} is a generated chart standing in for a Bitnami chart, version {ver}.",
                f"    digest: {digest}",
                "    home: https://bitnami.com",
                f"    icon: https://bitnami.com/assets/stacks/{name}/img/{name}-stack-220x234.png",
                "    keywords:",
                "    - database",
                "    - sql",
                "    maintainers:",
                "    - name: Broadcom, Inc. All Rights Reserved.",
                "      url: https://github.com/bitnami/charts",
                f"    name: {name}",
                "    sources:",
                f"    - https://github.com/bitnami/charts/tree/main/bitnami/{name}",
                "    urls:",
                f"    - https://charts.bitnami.com/bitnami/{name}-{ver}.tgz",
                f"    version: {ver}",
            ]
    lines.append('generated: "2024-07-22T11:25:35.405163826Z"')
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")


main()
