"""Cluster credentials, the way kubectl finds them, through the `kubernetes` package's loader: the in-cluster
service account, or kubeconfig files (several merged from KUBECONFIG), a context and its namespace, client
certificates, tokens, token files and `exec` credential plugins (EKS, GKE, AKS). The one path for the operator
and the CLI; calling it again re-reads a rotated token or re-runs the plugin. Problems are one line that says
what to do."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from legistra.operator.kube import Credentials

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# What the loader reads from the environment (the operator captures these in its config).
CREDENTIAL_ENV = ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "KUBECONFIG")


class KubeconfigError(Exception):
    """No usable cluster credentials; the message says what to do."""


def _paths(kubeconfig: str | None, env: Mapping[str, str]) -> list[Path]:
    raw = kubeconfig or env.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p]


def cluster_credentials(kubeconfig: str | None, context: str | None, env: Mapping[str, str]) -> Credentials:
    """`env`: the environment the loader may read (KUBECONFIG, KUBERNETES_SERVICE_HOST); the caller passes it."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    source = env
    conf = client.Configuration()
    in_cluster = kubeconfig is None and not source.get("KUBECONFIG") and source.get("KUBERNETES_SERVICE_HOST") \
        and (SA_DIR / "token").exists()
    try:
        if in_cluster:
            config.load_incluster_config(client_configuration=conf)
            namespace = (SA_DIR / "namespace").read_text().strip()
        else:
            paths = _paths(kubeconfig, source)
            existing = [p for p in paths if p.is_file()]
            if not existing:
                where = ", ".join(str(p) for p in paths)
                raise KubeconfigError(f"no kubeconfig found at {where}; set KUBECONFIG or pass --kubeconfig")
            files = os.pathsep.join(str(p) for p in existing)
            config.load_kube_config(config_file=files, context=context, client_configuration=conf,
                                    persist_config=False)
            contexts, active = config.list_kube_config_contexts(config_file=files)
            chosen = next((c for c in contexts if c["name"] == context), active) if context else active
            namespace = ((chosen or {}).get("context") or {}).get("namespace") or "default"
    except ConfigException as exc:
        raise KubeconfigError(f"cannot use the kubeconfig: {' '.join(str(exc).split())}") from None
    auth = conf.api_key.get("authorization") or conf.api_key.get("BearerToken") or ""
    prefix = conf.api_key_prefix.get("authorization", "")
    token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") or prefix == "Bearer" else auth
    return Credentials(server=str(conf.host).rstrip("/"), token=token or None, ca_file=conf.ssl_ca_cert,
                       cert_file=conf.cert_file, key_file=conf.key_file, insecure=not conf.verify_ssl,
                       namespace=namespace)
