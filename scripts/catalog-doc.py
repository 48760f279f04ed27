#!/usr/bin/env python3
"""Writes docs/catalog.md from the manifests in catalog/ (run after changing one)."""
import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEED = {
    "hello": "— (minimal release for tests and benchmarks)",
    "redis": "Caches and NoSQL: Redis",
    "memcached": "Caches: memcached",
    "kvstore": "Persistent memcached-protocol store (the role of kumofs and flare)",
    "postgresql": "Storage: PostgreSQL",
    "zeo": "Storage: object database (ZEO)",
    "mariadb": "Storage: MySQL/MariaDB (`request(mysql, 'i2')`)",
    "wordpress": "PaaS: LAMP with WordPress (`request(wordpress, 'i5')`)",
    "frontend": "Front ends: Apache/nginx front end with shared sites",
    "haproxy": "Front ends: HAProxy",
    "varnish": "Front ends: Varnish",
    "stunnel": "Front ends: stunnel",
    "kvm": "IaaS: qemu virtual machines (`request(kvm, 'i1')`)",
    "nbd": "Storage: block devices (NBD)",
}

out = [
    "# The catalog",
    "",
    "Software releases shipped in `catalog/` and embedded in the binary: `slapos up` supplies them all, "
    "and their names are aliases in `slapos request`. Each installs from Debian packages (or PyPI where "
    "Debian lacks it) into its own release directory, without touching the system. Each folder has a README; "
    "this table is generated from the manifests by `scripts/catalog-doc.py`.",
    "",
    "| release | stands for (seed) | software types | parameters | connection parameters |",
    "|---|---|---|---|---|",
]
for d in sorted((ROOT / "catalog").iterdir()):
    manifest = d / "software.toml"
    if not manifest.exists():
        continue
    m = tomllib.loads(manifest.read_text())
    params, conns = [], []
    for t in m.get("type", {}).values():
        schema = t.get("parameters") or {}
        for p, spec in (schema.get("properties") or {}).items():
            default = f" = {spec['default']}" if "default" in spec else ""
            required = " (required)" if p in (schema.get("required") or []) else ""
            params.append(f"`{p}`{default}{required}")
        conns += [f"`{k}`" for k in (t.get("connection") or {})]
        shared = t.get("shared")
        if shared:
            params += [f"shared: `{p}`" for p in ((shared.get("parameters") or {}).get("properties") or {})]
            conns += [f"shared: `{k}`" for k in (shared.get("connection") or {})]
    out.append(
        f"| [{m['name']}](../catalog/{d.name}/README.md) | {SEED.get(m['name'], '')} | "
        f"{', '.join(m.get('type', {}))} | {', '.join(params) or '—'} | {', '.join(conns)} |"
    )
out += [
    "",
    "## The seed's stacks not covered yet",
    "",
    "- Full-text search, S3, file conversion (office documents, images, video, OCR), Java, Perl, WSGI and "
    "Node.js stacks, Postfix, a WebSocket front end, the Web Runner IDE, sheepdog.",
    "",
]
(ROOT / "docs" / "catalog.md").write_text("\n".join(out))
