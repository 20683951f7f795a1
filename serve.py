"""Serve a trained router behind an OpenAI-compatible API: python serve.py router_dir=<train run>/router

    python serve.py router_dir=logs/train/runs/<time>/router route_only=true     # dry run: no upstreams
    python serve.py router_dir=... 'upstreams={GPT4o: {base_url: "https://api.openai.com/v1", model: gpt-4o,
                                               api_key_env: OPENAI_API_KEY}}' budget.mu=0.5

Settings: conf/serve.yaml. Endpoints: /v1/chat/completions, /v1/route, /v1/models, /health, /metrics.
"""
import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(config_path="conf", config_name="serve", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from vlrb.jobs import serve

    serve.main(cfg)


if __name__ == "__main__":
    main()
