"""Serve a trained router: an OpenAI-compatible HTTP server that routes each chat request to one of K models.

    python serve.py router_dir=logs/train/runs/<time>/router route_only=true

Modules, one concept each: `settings` (the validated server config), `decide` (the budget rule and cost
estimates), `batching` (concurrent requests share one router forward), `schema` (chat requests in the
OpenAI format), `security` (limits, image checks, auth), `upstream` (forwarding with fallback, streaming),
`metrics` (Prometheus, counted by route), `health` (a circuit breaker per upstream), `explore` (ε-greedy picks
with exact propensities), `feedback` (the decision log's writer thread, POST /v1/feedback bodies), `errors`
(OpenAI-style JSON errors), `service` (the router, batcher, costs, upstreams and breakers one app serves), `cascade` (serving a cascade router: its calls one at a time, each answer read
as the benchmark reads one), `dependencies` (how endpoints reach the service, and auth), `routes` (the
endpoints), `app` (`create_app`: the routes, error handlers and metrics put together; how to add an endpoint),
`calibrate` (finding μ for a target $/request). Importing this package does not import FastAPI;
`vlrb.serve.app.create_app` does.
"""
