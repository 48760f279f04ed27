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
TESTS = {
    "frontend": "`catalog_frontends.rs` (curl-like GETs through two shared sites, by path and by Host)",
    "haproxy": "`catalog_frontends.rs` (both backends reached, reconfigured to one)",
    "varnish": "`catalog_frontends.rs` (second GET a cache hit)",
    "stunnel": "`catalog_frontends.rs` (`openssl s_client`, certificate kept over stop/start)",
    "hello": "`catalog_frontends.rs` (the backends, destroyed with the front ends), `node_e2e.rs`",
    "kvm": "`catalog_iaas.rs` (QMP `query-status`, a shell on the serial console, after boot and after start)",
    "nbd": "`catalog_iaas.rs` (`qemu-img info nbd://…`, `qemu-io` blocks survive stop/start)",
    "mariadb": "`catalog_lamp.rs` (the `mariadb` client, a row survives stop/start)",
    "wordpress": "`catalog_lamp.rs` (install page, installation finished, the MariaDB child destroyed with its parent)",
    "postgresql": "`catalog_data.rs` (`psql`, a row survives stop/start)",
    "zeo": "`catalog_data.rs` (a ZODB client, an object survives stop/start)",
    "kvstore": "`catalog_data.rs` (memcached text protocol, a value survives stop/start)",
    "redis": "`node_e2e.rs` under `slapos up` (RESP `PING`, data survives stop/start)",
    "memcached": "`node_e2e.rs` under `slapos up` (memcached text protocol)",
}
out += [
    "",
    "## Tests",
    "",
    "Each release (but `hello`, the minimal one the node's tests use) is deployed by a real `slapos proxy` (or `slapos up`) and `slapos node run` in the tests "
    "of `crates/slapos/tests/`, requested with `slapos request`, used with the real client of its software, "
    "then stopped (no process, port closed), started again (serving again; data kept where there is data) and "
    "destroyed: `Doomed::assert_gone` (`tests/common/cluster.rs`) checks that the partitions are free on the "
    "master and empty, that no process runs in them or as their users, that nothing listens on their "
    "addresses and that their users own no file left in `/tmp`, `/var/tmp`, `/dev/shm` or the node's "
    "directories. A bad parameter is refused at request time, with a message naming it.",
    "",
    "| release | test |",
    "|---|---|",
]
out += [f"| {name} | {test} |" for name, test in sorted(TESTS.items())]
out += [
    "",
    "Downloads go through the node's cache (`download_cache`, else `<software_root>/.cache`): `.deb` files by "
    "name, fetched files by sha256, PyPI wheels by name, so a second installation of a release downloads "
    "nothing (see [software-release.md](software-release.md#download-cache)).",
]
out += [
    "",
    "## The seed's stacks not covered yet",
    "",
    "- Full-text search, S3, file conversion (office documents, images, video, OCR), Java, Perl, WSGI and "
    "Node.js stacks, Postfix, a WebSocket front end, the Web Runner IDE, sheepdog.",
    "",
]
(ROOT / "docs" / "catalog.md").write_text("\n".join(out))
