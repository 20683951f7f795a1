"""Routers: one module per family. Each router class names itself (`name`), and `conf/router/<name>.yaml` names
the class (`_target_`). Importing this package imports every family, so vlrb's own router classes are known
(`vlrb.components.own_classes`: what a saved router folder may name).
"""
from vlrb.routers.base import Router, read_router
from vlrb.routers import baselines  # noqa: F401  (oracle, strongest, cheapest, per_dataset, random)
from vlrb.routers import kmeans, knn, mlp, ovr  # noqa: F401  (feature routers: kmeans, knn, prknn, linear, mlp, ovr)
from vlrb.routers import calibrated  # noqa: F401  (vlrb_cal: vlrb's own calibrated, cost-aware router)
from vlrb.routers import offpolicy  # noqa: F401  (offpolicy: learned from a traffic log's partial labels)
from vlrb.routers import onboard  # noqa: F401  (onboarded: a trained router that new models joined)
from vlrb.routers import e2e  # noqa: F401  (end-to-end routers: routerdc, cosinecls, zooter, vlc)
from vlrb.routers import cascade, cascade_learned  # noqa: F401  (cascades: validity, agreement, chain, verify)

__all__ = ["Router", "read_router"]
