"""What `REDIS_URL` names: one Redis (redis://, rediss://, unix://) or a Redis Cluster
(redis+cluster://, rediss+cluster://) given by one or more seed nodes. Over TLS the
server's certificate is verified against the system's CAs and, when the URL names one
(`?ssl_ca_certs=/path/ca.pem`, redis-py's name for it), a private CA's."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, unquote, urlsplit

SINGLE_SCHEMES = ("redis", "rediss", "unix")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
TLS_SCHEMES = ("rediss", "rediss+cluster")
DEFAULT_PORT = 6379
CA_PARAMETER = "ssl_ca_certs"


def is_cluster(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


@dataclass(frozen=True)
class ClusterAddress:
    seeds: tuple[tuple[str, int], ...]
    tls: bool
    username: str | None
    password: str | None
    ca_file: str | None = None

    @classmethod
    def parse(cls, url: str) -> ClusterAddress:
        """`redis+cluster://[user:password@]host[:port][,host[:port]...]`; ValueError
        naming what is wrong."""
        parts = urlsplit(url)
        if parts.scheme not in CLUSTER_SCHEMES:
            raise ValueError("a cluster URI starts redis+cluster:// or rediss+cluster://")
        credentials, _, hosts = parts.netloc.rpartition("@")
        username, _, password = credentials.partition(":")
        seeds = tuple(_host_port(seed) for seed in hosts.split(",") if seed)
        if not seeds:
            raise ValueError("a cluster URI names at least one node (host:port)")
        return cls(
            seeds=seeds,
            tls=parts.scheme == "rediss+cluster",
            username=unquote(username) or None,
            password=unquote(password) or None,
            ca_file=ca_file(url),
        )

    def node_url(self, host: str, port: int) -> str:
        """A single-node URI of one of the cluster's nodes, with the credentials."""
        scheme = "rediss" if self.tls else "redis"
        credentials = ""
        if self.password is not None:
            credentials = f"{quote(self.username or '', safe='')}:{quote(self.password, safe='')}@"
        host = f"[{host}]" if ":" in host else host
        query = f"?{CA_PARAMETER}={quote(self.ca_file, safe='/')}" if self.ca_file else ""
        return f"{scheme}://{credentials}{host}:{port}{query}"


def ca_file(url: str) -> str | None:
    """The private CA a TLS URL names, if any."""
    values = parse_qs(urlsplit(url).query).get(CA_PARAMETER)
    return values[-1] if values else None


def _host_port(seed: str) -> tuple[str, int]:
    host, colon, port = seed.rpartition(":")
    if not colon or "]" in port:  # no port given (or an IPv6 literal without one)
        host, port = seed, str(DEFAULT_PORT)
    host = host.strip("[]")
    if not host:
        raise ValueError(f"cluster node {seed!r} has no host")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"cluster node {seed!r} has no valid port")
    return host, int(port)


def validate(url: str) -> None:
    """Raise ValueError unless `url` is a Redis URI the gateway can use."""
    parts = urlsplit(url)
    if parts.scheme in CLUSTER_SCHEMES:
        ClusterAddress.parse(url)
    elif parts.scheme not in SINGLE_SCHEMES:
        raise ValueError(
            "must be a redis://, rediss://, unix://, redis+cluster:// or rediss+cluster:// URI"
        )
    unknown = sorted(set(parse_qs(parts.query)) - {CA_PARAMETER})
    if unknown:
        raise ValueError(f"takes no query parameter but {CA_PARAMETER} (given: {unknown[0]})")
    ca = ca_file(url)
    if ca is not None:
        if parts.scheme not in TLS_SCHEMES:
            raise ValueError(f"{CA_PARAMETER} needs TLS: rediss:// or rediss+cluster://")
        if not os.path.isfile(ca):
            raise ValueError(f"{CA_PARAMETER} names no readable file: {ca}")
