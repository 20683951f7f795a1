"""Serve a trained router behind an OpenAI-compatible API: python serve.py router_dir=<train run>/router

    python serve.py router_dir=logs/train/runs/<time>/router route_only=true     # dry run: no upstreams
    python serve.py router_dir=... 'upstreams={GPT4o: {base_url: "https://api.openai.com/v1", model: gpt-4o,
                                               api_key_env: OPENAI_API_KEY}}' budget.mu=0.5

Settings: conf/serve.yaml. Endpoints: /v1/chat/completions, /v1/route, /v1/models, /health, /metrics.
A cascade router (cascade_validity, cascade_chain, ...) calls its models one at a time and needs upstreams
(README: Serving a cascade).
"""
from vlrb.jobs.entry import launch

if __name__ == "__main__":
    launch("serve", __file__)
