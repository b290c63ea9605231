"""`legistra operator`: run the controller (kopf) namespace-scoped or cluster-wide."""

from __future__ import annotations

import logging


def run_operator(namespaces: list[str], clusterwide: bool, standalone: bool, liveness: str | None,
                 verbose: bool = False) -> None:
    import os

    import kopf

    import legistra.operator.handlers  # noqa: F401  (registers the handlers)
    from legistra.operator.peering import own_identity

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("aiohttp.access", "kopf.objects"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ["LEGISTRA_WATCH_NAMESPACES"] = "" if clusterwide else ",".join(namespaces)
    # kopf names this replica in the peering records after POD_ID; fixing it here lets our loops find it.
    os.environ["POD_ID"] = own_identity(os.environ)
    kopf.run(
        standalone=standalone,
        namespaces=namespaces,
        clusterwide=clusterwide,
        liveness_endpoint=liveness,
    )
