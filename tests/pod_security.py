"""The Kubernetes "restricted" Pod Security Standard as a checker: every rule of the baseline and restricted
profiles (kubernetes.io/docs/concepts/security/pod-security-standards, as of v1.33), applied to a pod spec.

`violations(pod_spec)` names each broken rule with the field that breaks it; [] when the pod is admitted by a
namespace labelled `pod-security.kubernetes.io/enforce: restricted`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

# Baseline: the capabilities a container may add (restricted narrows it to NET_BIND_SERVICE).
BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
APPARMOR_TYPES = {"RuntimeDefault", "Localhost"}
SECCOMP_TYPES = {"RuntimeDefault", "Localhost"}
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def _containers(pod: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for i, c in enumerate(pod.get(kind) or []):
            yield f"spec.{kind}[{i}]", c


def violations(pod: Mapping[str, Any]) -> list[str]:
    """Each restricted-profile rule the pod spec breaks, as '<field>: <rule>'."""
    out: list[str] = []
    psc = pod.get("securityContext") or {}
    containers = list(_containers(pod))
    # -- baseline --
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            out.append(f"spec.{key}: host namespaces are not allowed")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("spec.securityContext.windowsOptions.hostProcess: HostProcess pods are not allowed")
    for i, v in enumerate(pod.get("volumes") or []):
        if "hostPath" in v:
            out.append(f"spec.volumes[{i}].hostPath: hostPath volumes are not allowed")
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(f"spec.volumes[{i}]: volume type {sorted(kinds - RESTRICTED_VOLUMES)} is not allowed "
                       f"(restricted allows {sorted(RESTRICTED_VOLUMES)})")
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            out.append(f"spec.securityContext.sysctls: {sysctl.get('name')} is not a safe sysctl")
    for where, ctx in [("spec.securityContext", psc), *((f"{p}.securityContext", c.get("securityContext") or {})
                                                        for p, c in containers)]:
        se = ctx.get("seLinuxOptions") or {}
        if se.get("type", "") not in SELINUX_TYPES:
            out.append(f"{where}.seLinuxOptions.type: {se['type']} is not allowed")
        if se.get("user") or se.get("role"):
            out.append(f"{where}.seLinuxOptions: user and role must not be set")
        armor = (ctx.get("appArmorProfile") or {}).get("type")
        if armor is not None and armor not in APPARMOR_TYPES:
            out.append(f"{where}.appArmorProfile.type: {armor} is not allowed")
        if ctx.get("runAsUser") == 0:
            out.append(f"{where}.runAsUser: 0 (root) is not allowed")
        seccomp = (ctx.get("seccompProfile") or {}).get("type")
        if seccomp is not None and seccomp not in SECCOMP_TYPES:
            out.append(f"{where}.seccompProfile.type: {seccomp} is not allowed (RuntimeDefault or Localhost)")
        if where != "spec.securityContext" and ctx.get("runAsNonRoot") is False:
            out.append(f"{where}.runAsNonRoot: must not be false")
    if psc.get("runAsNonRoot") is False:
        out.append("spec.securityContext.runAsNonRoot: must not be false")
    for prefix, c in containers:
        sc = c.get("securityContext") or {}
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"{prefix}.securityContext.windowsOptions.hostProcess: HostProcess is not allowed")
        if sc.get("privileged"):
            out.append(f"{prefix}.securityContext.privileged: privileged containers are not allowed")
        if sc.get("procMount", "Default") != "Default":
            out.append(f"{prefix}.securityContext.procMount: must be Default")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                out.append(f"{prefix}.ports: hostPort {port['hostPort']} is not allowed")
        # -- restricted --
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{prefix}.securityContext.allowPrivilegeEscalation: must be false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{prefix}.securityContext.capabilities.drop: must include ALL")
        added = set(caps.get("add") or [])
        if added - {"NET_BIND_SERVICE"}:
            out.append(f"{prefix}.securityContext.capabilities.add: only NET_BIND_SERVICE may be added, not "
                       f"{sorted(added - {'NET_BIND_SERVICE'})}")
        if sc.get("runAsNonRoot") is not True and psc.get("runAsNonRoot") is not True:
            out.append(f"{prefix}: runAsNonRoot must be true in the pod's or the container's securityContext")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or (psc.get("seccompProfile") or {}).get("type")
        if seccomp not in SECCOMP_TYPES:
            out.append(f"{prefix}: seccompProfile.type must be RuntimeDefault or Localhost (pod or container)")
    return out
