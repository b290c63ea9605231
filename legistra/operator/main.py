"""`legistra operator`: run the controller (kopf) namespace-scoped or cluster-wide."""

from __future__ import annotations

import logging


def run_operator(namespaces: list[str], clusterwide: bool, standalone: bool, liveness: str | None,
                 verbose: bool = False) -> None:
    import kopf

    import legistra.operator.handlers  # noqa: F401  (registers the handlers)
    from legistra.operator.config import OperatorConfig

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("aiohttp.access", "kopf.objects"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    config = OperatorConfig.from_env(() if clusterwide else tuple(namespaces))
    kopf.run(
        standalone=standalone,
        namespaces=namespaces,
        clusterwide=clusterwide,
        liveness_endpoint=liveness,
        # kopf names this replica in the peering records after it; our own loops look for the same name.
        identity=config.pod_id,  # type: ignore[arg-type]  # kopf.Identity is a NewType of str
        memo=kopf.Memo(config=config),
    )
