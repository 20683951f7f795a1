"""Chat requests in the OpenAI format, checked field by field (a bad field is a 400 naming it).

    {"model": "<the router's name>", "messages": [{"role": "user", "content": "text" | [parts]}],
     "stream": false, "max_tokens": 256, "vlrb": {"mu": 0.5}}

Content parts: `{"type": "text", "text": ...}` and `{"type": "image_url", "image_url": {"url": ...}}` (or the
URL as a plain string). What the router reads: the text of the last user message and the first image of the
latest user message that has one (the question being asked now, and the picture it is about).

`vlrb` is vlrb's own field (the OpenAI client sends it with `extra_body={"vlrb": {...}}`); it is removed before
a request is forwarded. Keys: `mu` (a number: this request's budget knob, instead of the server's budget.mu), and
for a cascade (vlrb.serve.cascade) `answer_format` (choice | number | yesno | text: how its models' answers are read)
and `n_options` (the options of a choice item; 0: any letter); without them both are inferred from the prompt.
`models` (a non-empty list of the router's model ids) restricts this request's candidates to them (a one-shot router
only; unknown ids are a 400 from the service, which knows the models); `dataset` (a string) is a hint logged with
the decision for feedback (vlrb.serve.feedback).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from vlrb.data.answers import ANSWER_FORMATS
from vlrb.serve.errors import ApiError, bad_request

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
VLRB_KEYS = {"mu", "answer_format", "n_options", "models", "dataset"}
MAX_DATASET_CHARS = 200
MAX_OPTIONS = 26  # option letters A..Z
MU_LIMIT = 1e7  # |μ| beyond this changes no decision (vlrb.serve.calibrate.MU_LIMIT) and overflows nothing
MAX_TOKENS_LIMIT = 10_000_000  # a larger max_tokens is no request any model serves


@dataclass
class ChatRequest:
    body: dict  # as sent, minus `vlrb`: what is forwarded (with the upstream's model name)
    prompt: str  # text of the last user message
    image_url: str | None  # the image the router reads
    image_param: str | None  # where it is in the request (for error messages)
    image_urls: list[tuple[str, str]] = field(default_factory=list)  # every image (url, param)
    texts: list[str] = field(default_factory=list)  # every text (input token estimate)
    stream: bool = False
    mu: float | None = None
    max_tokens: int | None = None
    answer_format: str | None = None  # a cascade's reading of the answers (None: inferred from the prompt)
    n_options: int | None = None
    models: list[str] | None = None  # the client's restriction of the candidate models (None: every model)
    dataset: str | None = None  # the client's dataset hint (logged for feedback)


def parse_json(raw: bytes) -> Any:
    if not raw.strip():
        raise bad_request("empty request body: expected a JSON object", code="invalid_json")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad_request(f"request body is not valid JSON ({e})", code="invalid_json") from None
    except RecursionError:
        raise bad_request("request body is nested too deeply", code="invalid_json") from None


def parse_chat(raw: bytes, served_model: str, *, model_required: bool = True) -> ChatRequest:
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise bad_request(f"request body must be a JSON object, got {type(body).__name__}", code="invalid_json")
    model = body.get("model")
    if model is None and model_required:
        raise bad_request(f"'model' is required (this server serves {served_model!r})", "model")
    if model is not None and model != served_model:
        raise ApiError(404, f"the model {model!r} does not exist here; this server routes {served_model!r} "
                       "(GET /v1/models)", param="model", code="model_not_found")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' is required: a non-empty list of {role, content} objects", "messages")
    req = ChatRequest(body={k: v for k, v in body.items() if k != "vlrb"}, prompt="", image_url=None,
                      image_param=None)
    last_user_text = None
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise bad_request(f"{where} must be an object with 'role' and 'content'", where)
        role = msg.get("role")
        if role not in ROLES:
            raise bad_request(f"{where}.role must be one of {sorted(ROLES)}, got {role!r}", f"{where}.role")
        texts, images = _content(msg.get("content"), f"{where}.content")
        req.texts += texts
        req.image_urls += images
        if role == "user":
            last_user_text = "\n".join(texts)
            if images:
                req.image_url, req.image_param = images[0]
    if last_user_text is None:
        raise bad_request("'messages' has no user message to route", "messages")
    req.prompt = last_user_text
    req.stream = _flag(body.get("stream", False), "stream")
    for key in ("max_tokens", "max_completion_tokens"):
        v = body.get(key)
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_TOKENS_LIMIT:
                raise bad_request(f"'{key}' must be a whole number from 1 to {MAX_TOKENS_LIMIT}, got {v!r}", key)
            req.max_tokens = v
    req.mu, req.answer_format, req.n_options = _vlrb_field(body.get("vlrb"))
    req.models, req.dataset = _vlrb_pool(body.get("vlrb"))
    return req


def _content(content: Any, where: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(texts, [(image url, param)]) of one message's content."""
    if content is None:
        return [], []
    if isinstance(content, str):
        return [_unicode(content, where)], []
    if not isinstance(content, list):
        raise bad_request(f"{where} must be a string or a list of content parts", where)
    texts, images = [], []
    for j, part in enumerate(content):
        p = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise bad_request(f"{p}.text must be a string", f"{p}.text")
            texts.append(_unicode(part["text"], f"{p}.text"))
        elif kind == "image_url":
            iu = part.get("image_url")
            url = iu.get("url") if isinstance(iu, dict) else iu
            if not isinstance(url, str) or not url:
                raise bad_request(f"{p}.image_url.url must be a non-empty string", f"{p}.image_url")
            images.append((url, f"{p}.image_url"))
        else:
            raise bad_request(f"{p}: unsupported content part type {kind!r} (text and image_url are)", p)
    return texts, images


def _unicode(text: str, where: str) -> str:
    """The text, when it can be encoded (JSON admits lone UTF-16 surrogates such as "\\ud800"; no tokenizer or
    upstream does): a 400 for this request alone, before it joins a batch."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise bad_request(f"{where} is not valid Unicode text (a lone surrogate {text[e.start]!r} at character "
                          f"{e.start})", where, code="invalid_text") from None
    return text


def _flag(v: Any, key: str) -> bool:
    if not isinstance(v, bool):
        raise bad_request(f"'{key}' must be true or false, got {v!r}", key)
    return v


def _vlrb_field(v: Any) -> tuple[float | None, str | None, int | None]:
    """(mu, answer_format, n_options) of the `vlrb` field, each None when not given."""
    if v is None:
        return None, None, None
    if not isinstance(v, dict):
        raise bad_request("'vlrb' must be an object, e.g. {\"mu\": 0.5}", "vlrb")
    unknown = set(v) - VLRB_KEYS
    if unknown:
        raise bad_request(f"'vlrb' has unknown keys {sorted(unknown)} (known: {sorted(VLRB_KEYS)})", "vlrb")
    mu, fmt, n_options = v.get("mu"), v.get("answer_format"), v.get("n_options")
    if mu is not None and (isinstance(mu, bool) or not isinstance(mu, (int, float)) or not math.isfinite(mu)
                           or abs(mu) > MU_LIMIT):
        raise bad_request(f"'vlrb.mu' must be a number from {-MU_LIMIT:g} to {MU_LIMIT:g}, got {mu!r}", "vlrb.mu")
    if fmt is not None and fmt not in ANSWER_FORMATS:
        raise bad_request(f"'vlrb.answer_format' must be one of {list(ANSWER_FORMATS)}, got {fmt!r}",
                          "vlrb.answer_format")
    if n_options is not None and (isinstance(n_options, bool) or not isinstance(n_options, int)
                                  or not 0 <= n_options <= MAX_OPTIONS):
        raise bad_request(f"'vlrb.n_options' must be a whole number from 0 to {MAX_OPTIONS} (0: any letter), got "
                          f"{n_options!r}", "vlrb.n_options")
    return None if mu is None else float(mu), fmt, n_options


def _vlrb_pool(v: Any) -> tuple[list[str] | None, str | None]:
    """(models, dataset) of the `vlrb` field (already checked to be an object or None by `_vlrb_field`)."""
    if v is None:
        return None, None
    models, dataset = v.get("models"), v.get("dataset")
    if models is not None:
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise bad_request(f"'vlrb.models' must be a list of model ids, got {models!r}", "vlrb.models")
        if not models:
            raise bad_request("'vlrb.models' is empty: name at least one model to route among (GET /health lists "
                              "them)", "vlrb.models", code="empty_pool")
        models = list(dict.fromkeys(models))
    if dataset is not None and (not isinstance(dataset, str) or len(dataset) > MAX_DATASET_CHARS):
        raise bad_request(f"'vlrb.dataset' must be a string of at most {MAX_DATASET_CHARS} characters, got "
                          f"{str(dataset)[:50]!r}", "vlrb.dataset")
    return models, dataset
