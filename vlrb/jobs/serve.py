"""`serve.py`: load the trained router, check the settings, run the app under uvicorn until stopped."""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from vlrb.errors import ConfigError
from vlrb.jobs.common import load_router_dir, run_job, to_plain

log = logging.getLogger("vlrb.serve")


def main(cfg: DictConfig) -> None:
    run_job(serve, cfg)


def load(cfg: DictConfig):
    """(trained router, ServeSettings) from the serve config; every config error is raised here, before serving."""
    from vlrb.artifact import router_folder
    from vlrb.serve.cascade import check_settings
    from vlrb.serve.service import warm_up
    from vlrb.serve.settings import ServeSettings

    path = cfg.get("router_dir")
    plain = to_plain(cfg)
    if isinstance(plain.get("upstreams"), str):
        plain["upstreams"] = read_upstreams(plain["upstreams"])
    router = load_router_dir(cfg)
    plain["router_dir"] = str(router_folder(path).resolve())  # the feedback log names it (its feature recipe)
    settings = ServeSettings.from_config(plain, router.models, router_label=router.name)
    check_settings(router, settings)  # a cascade needs upstreams (README: Serving a cascade)
    if settings.feedback_path:
        check_feedback_path(settings.feedback_path)
    try:  # one request's worth now: the encoders load, and a router that cannot serve says so in one line
        warm_up(router)
    except (ValueError, RuntimeError, OSError) as e:
        raise ConfigError(f"router_dir={path}: this router cannot score new requests ({e})") from None
    if str(cfg.host) not in ("127.0.0.1", "localhost", "::1") and not settings.api_keys:
        log.warning("listening on %s with no auth.api_keys_env: whoever reaches this port spends your upstream keys",
                    cfg.host)
    return router, settings


def check_feedback_path(path: str) -> None:
    """The feedback log opens (created when missing), or a one-line ConfigError naming feedback.path."""
    import sqlite3

    from vlrb.feedback.store import FeedbackError, FeedbackStore

    try:
        FeedbackStore(path).close()
    except (FeedbackError, OSError, sqlite3.Error) as e:
        raise ConfigError(f"feedback.path={path}: the feedback log cannot be opened ({e}); fix it or set "
                          "feedback.path=null") from None


def read_upstreams(path: str) -> dict:
    """`upstreams=<file.yaml>`: the model id -> {base_url, model, api_key_env} mapping from a YAML file."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"upstreams={path}: no such file (a YAML mapping model id -> {{base_url, model, api_key_env}}, "
                          "or the mapping itself: 'upstreams={GPT4o: {base_url: ...}}')")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"upstreams={path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"upstreams={path}: expected a mapping model id -> {{base_url, model, api_key_env}}")
    return data


def serve(cfg: DictConfig) -> None:
    import uvicorn

    from vlrb.serve.app import create_app

    router, settings = load(cfg)
    app = create_app(router, settings)
    # log_config=None: uvicorn's lines go through Hydra's logging (console + <run dir>/serve.log)
    uvicorn.run(app, host=str(cfg.host), port=int(cfg.port), log_config=None, access_log=bool(cfg.access_log),
                timeout_graceful_shutdown=5)
