"""The server's settings (conf/serve.yaml), checked once at start-up: a bad value is a one-line ConfigError
naming its key, never a failure on the first request."""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from vlrb.errors import ConfigError
from vlrb.serve.schema import MU_LIMIT

COST_ESTIMATES = ("mean_cost", "tokens")
EXPLORE_POLICIES = ("none", "epsilon_greedy")
# background: exported while the first requests run eagerly; start: ready before the server listens; lazy: as in
# offline routing, after MIN_ITEMS_FOR_EXPORT inputs (a cached export is used at once in every case)
FAST_PATHS = ("background", "start", "lazy")


@dataclass(frozen=True)
class Upstream:
    """One model's OpenAI-compatible endpoint: `<base_url>/chat/completions`, called with `model` and the key
    read from the environment variable `api_key_env` (none: no Authorization header)."""

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float | None = None  # None: fallback.timeout_s


@dataclass(frozen=True)
class ServeSettings:
    model_name: str = "vlrb-router"
    route_only: bool = True
    mu: float = 0.0
    cost_estimate: str = "mean_cost"
    output_tokens: int = 256
    max_batch: int = 64
    max_wait_ms: float = 0.0
    max_queue: int = 1024
    workers: int = 1
    threads: int | None = None
    fast_path: str = "background"  # when the encoders' ONNX Runtime path is made (FAST_PATHS)
    upstreams: Mapping[str, Upstream] = field(default_factory=dict)
    attempts: int = 3
    timeout_s: float = 60.0
    max_body_bytes: int = 20_000_000
    max_pixels: int = 36_000_000
    max_side: int = 12_000
    max_aspect: float = 20.0
    max_images: int = 8
    allow_remote_images: bool = False
    remote_max_bytes: int = 10_000_000
    remote_timeout_s: float = 5.0
    api_keys: frozenset[str] = field(default_factory=frozenset, repr=False)
    breaker_failures: int = 5  # 0: no circuit breakers (vlrb.serve.health)
    breaker_window_s: float = 30.0
    breaker_open_s: float = 30.0
    feedback_path: str | None = None  # the feedback log (vlrb.feedback.store); None: off
    explore: str = "none"  # none | epsilon_greedy (vlrb.serve.explore)
    epsilon: float = 0.1
    explore_seed: int | None = None
    router_dir: str | None = None  # the served router's folder (recorded in the feedback log for training)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], models: Sequence[str], router_label: str = "router",
                    environ: Mapping[str, str] | None = None) -> "ServeSettings":
        """Settings from the plain (resolved) serve config; `models` are the router's model ids."""
        env = os.environ if environ is None else environ
        budget = _section(cfg, "budget")
        batching = _section(cfg, "batching")
        fallback = _section(cfg, "fallback")
        limits = _section(cfg, "limits")
        remote = _section(cfg, "remote_images")
        auth = _section(cfg, "auth")
        breaker = _section(cfg, "breaker")
        feedback = _section(cfg, "feedback")
        explore = _section(feedback, "explore", "feedback.explore")
        policy = str(explore.get("policy") or "none")
        if policy not in EXPLORE_POLICIES:
            raise ConfigError(f"feedback.explore.policy must be one of {EXPLORE_POLICIES}, got {policy!r}")
        seed = explore.get("seed")
        model_name = str(cfg.get("model_name") or f"vlrb-{router_label}")
        route_only = _bool(cfg.get("route_only", False), "route_only")
        upstreams = _upstreams(cfg.get("upstreams") or {}, models, env)
        if not route_only and not upstreams:
            raise ConfigError("upstreams is empty: configure at least one model's upstream (base_url, model, "
                              "api_key_env) or set route_only=true (one-shot routers only: a cascade needs the "
                              "answers of the models it calls)")
        fast_path = str(batching.get("fast_path", "background"))
        if fast_path not in FAST_PATHS:
            raise ConfigError(f"batching.fast_path must be one of {FAST_PATHS}, got {fast_path!r}")
        cost = str(budget.get("cost_estimate", "mean_cost"))
        if cost not in COST_ESTIMATES:
            raise ConfigError(f"budget.cost_estimate must be one of {COST_ESTIMATES}, got {cost!r}")
        keys_env = auth.get("api_keys_env")
        api_keys: frozenset[str] = frozenset()
        if keys_env:
            api_keys = frozenset(k.strip() for k in env.get(str(keys_env), "").split(",") if k.strip())
            if not api_keys:
                raise ConfigError(f"auth.api_keys_env={keys_env}: the environment variable is unset or empty "
                                  "(comma-separated bearer keys expected)")
        return cls(
            model_name=model_name,
            route_only=route_only,
            mu=_number(budget.get("mu", 0.0), "budget.mu", lo=-MU_LIMIT, hi=MU_LIMIT),
            cost_estimate=cost,
            output_tokens=_int(budget.get("output_tokens", 256), "budget.output_tokens", lo=0),
            max_batch=_int(batching.get("max_batch", 64), "batching.max_batch", lo=1),
            max_wait_ms=_number(batching.get("max_wait_ms", 0.0), "batching.max_wait_ms", lo=0),
            max_queue=_int(batching.get("max_queue", 1024), "batching.max_queue", lo=1),
            workers=_int(batching.get("workers", 1), "batching.workers", lo=1),
            threads=None if batching.get("threads") is None else _int(batching.get("threads"), "batching.threads", lo=1),
            fast_path=fast_path,
            upstreams=upstreams,
            attempts=_int(fallback.get("attempts", 3), "fallback.attempts", lo=1),
            timeout_s=_number(fallback.get("timeout_s", 60.0), "fallback.timeout_s", lo=1e-3),
            max_body_bytes=_int(limits.get("max_body_bytes", 20_000_000), "limits.max_body_bytes", lo=1),
            max_pixels=_int(limits.get("max_pixels", 36_000_000), "limits.max_pixels", lo=1),
            max_side=_int(limits.get("max_side", 12_000), "limits.max_side", lo=1),
            max_aspect=_number(limits.get("max_aspect", 20.0), "limits.max_aspect", lo=1.0),
            max_images=_int(limits.get("max_images", 8), "limits.max_images", lo=0),
            allow_remote_images=_bool(remote.get("allow", False), "remote_images.allow"),
            remote_max_bytes=_int(remote.get("max_bytes", 10_000_000), "remote_images.max_bytes", lo=1),
            remote_timeout_s=_number(remote.get("timeout_s", 5.0), "remote_images.timeout_s", lo=1e-3),
            api_keys=api_keys,
            breaker_failures=_int(breaker.get("failures", 5), "breaker.failures", lo=0),
            breaker_window_s=_number(breaker.get("window_s", 30.0), "breaker.window_s", lo=1e-3),
            breaker_open_s=_number(breaker.get("open_s", 30.0), "breaker.open_s", lo=1e-3),
            feedback_path=_feedback_path(feedback.get("path"), model_name),
            explore=policy,
            epsilon=_number(explore.get("epsilon", 0.1), "feedback.explore.epsilon", lo=0.0, hi=1.0),
            explore_seed=None if seed is None else _int(seed, "feedback.explore.seed", lo=0),
            router_dir=None if cfg.get("router_dir") is None else str(cfg.get("router_dir")),
        )


def _feedback_path(v: Any, model_name: str) -> str | None:
    """feedback.path with `{model_name}` filled in (a name safe as a file name); null or "": logging off."""
    if v is None or v == "":
        return None
    if not isinstance(v, str):
        raise ConfigError(f"feedback.path must be a file path (or null: no feedback log), got {v!r}")
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", model_name)
    return v.replace("{model_name}", safe)


def _upstreams(raw: Any, models: Sequence[str], env: Mapping[str, str]) -> dict[str, Upstream]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"upstreams must map model id -> {{base_url, model, api_key_env}}, got {raw!r}")
    out = {}
    for mid, u in raw.items():
        where = f"upstreams.{mid}"
        if mid not in models:
            raise ConfigError(f"{where}: {mid!r} is not one of the router's models {list(models)}")
        if not isinstance(u, Mapping) or not u.get("base_url"):
            raise ConfigError(f"{where}: expected a mapping with base_url (and model, api_key_env), got {u!r}")
        base = str(u["base_url"]).rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.base_url must start with http:// or https://, got {base!r}")
        key = None
        if u.get("api_key_env"):
            key = env.get(str(u["api_key_env"]))
            if not key:
                raise ConfigError(f"{where}.api_key_env={u['api_key_env']}: the environment variable is unset")
        timeout = u.get("timeout_s")
        out[str(mid)] = Upstream(base_url=base, model=str(u.get("model") or mid), api_key=key,
                                 timeout_s=None if timeout is None else _number(timeout, f"{where}.timeout_s", lo=1e-3))
    return out


def _section(cfg: Mapping, key: str, where: str | None = None) -> Mapping:
    v = cfg.get(key) or {}
    if not isinstance(v, Mapping):
        raise ConfigError(f"{where or key} must be a mapping, got {v!r}")
    return v


def _number(v: Any, key: str, lo: float | None = None, hi: float | None = None) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a number, got {v!r}") from None
    if not math.isfinite(x) or (lo is not None and x < lo) or (hi is not None and x > hi):
        raise ConfigError(f"{key} must be a finite number" + (f" >= {lo:g}" if lo is not None else "")
                          + (f" and <= {hi:g}" if hi is not None else "") + f", got {v!r}")
    return x


def _int(v: Any, key: str, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"{key} must be an integer >= {lo}, got {v!r}")
    return v


def _bool(v: Any, key: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{key} must be true or false, got {v!r}")
    return v
