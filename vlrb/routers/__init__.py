"""Routers: one module per family, all registered by name (the name is also `conf/router/<name>.yaml`).

Importing this package registers every router family listed below; a new family adds its import here.
"""
from vlrb.routers.base import Router, create_router, get_router_class, list_routers, read_router, register_router
from vlrb.routers import baselines  # noqa: F401  (registers oracle, strongest, cheapest, per_dataset, random)
from vlrb.routers import kmeans, knn, mlp, ovr  # noqa: F401  (feature routers: kmeans, knn, prknn, linear, mlp, ovr)
from vlrb.routers import calibrated  # noqa: F401  (vlrb_cal: vlrb's own calibrated, cost-aware router)
from vlrb.routers import e2e  # noqa: F401  (end-to-end routers: routerdc, cosinecls, zooter, vlc)

__all__ = ["Router", "create_router", "get_router_class", "list_routers", "read_router", "register_router"]
