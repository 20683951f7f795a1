"""What the server refuses, and how: bodies over the size limit, images over the pixel limit (decompression
bombs are refused from the image header, before any pixel is decoded), anything but an inline
`data:image/...;base64,` image unless remote URLs are explicitly allowed (then http(s) only, to public
addresses only, with size and time limits and no redirects), and requests without a valid bearer key when
keys are configured. No file path is ever taken from a request: images are bytes, decoded in memory.
"""
from __future__ import annotations

import asyncio
import binascii
import hmac
import ipaddress
import re
import socket
import warnings
from typing import Iterable

from vlrb.serve.errors import ApiError, bad_request

DATA_URI = re.compile(r"data:([\w.+-]+/[\w.+-]+)?((?:;[\w.+-]+(?:=[\w.+-]+)?)*),", re.ASCII)


# ---------------------------------------------------------------------------------------------- auth
def check_auth(authorization: str | None, keys: frozenset[str]) -> None:
    """`Authorization: Bearer <key>` must carry one of `keys` (no keys configured: open). Constant-time compare."""
    if not keys:
        return
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "missing bearer token: send 'Authorization: Bearer <key>'", code="invalid_api_key")
    if not any(hmac.compare_digest(token.encode(), k.encode()) for k in keys):
        raise ApiError(401, "invalid API key", code="invalid_api_key")


# ---------------------------------------------------------------------------------------------- body
async def read_body(headers, chunks, limit: int) -> bytes:
    """The request body, refused with a 413 as soon as it exceeds `limit` bytes (nothing beyond is stored)."""
    declared = headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    parts, n = [], 0
    async for chunk in chunks:
        n += len(chunk)
        if n > limit:
            raise _too_large(n, limit)
        parts.append(chunk)
    return b"".join(parts)


def _too_large(n: int, limit: int) -> ApiError:
    return ApiError(413, f"request body of {n}+ bytes exceeds the {limit}-byte limit (limits.max_body_bytes)",
                    code="request_too_large")


# ---------------------------------------------------------------------------------------------- images
def data_uri_bytes(url: str, param: str) -> bytes:
    """The bytes of a `data:image/<type>;base64,<payload>` URI; a 400 for any other data URI."""
    m = DATA_URI.match(url)
    if not m:
        raise bad_request("malformed data URI: expected data:image/<type>;base64,<payload>", param)
    mime, params = (m.group(1) or "text/plain").lower(), m.group(2).lower().split(";")
    if not mime.startswith("image/"):
        raise bad_request(f"a data URI of type {mime!r} is not an image (expected data:image/<type>;base64,...)",
                          param, code="invalid_image")
    if "base64" not in params:
        raise bad_request("an image data URI must be base64-encoded (data:image/<type>;base64,...)", param,
                          code="invalid_image")
    try:
        return binascii.a2b_base64(url[m.end():], strict_mode=True)  # C; b64decode(validate=True) adds a regex scan
    except (binascii.Error, ValueError):
        raise bad_request("the image data URI's payload is not valid base64", param, code="invalid_image") from None


def decode_image(raw: bytes, max_pixels: int, param: str, *, max_side: int = 12_000, max_aspect: float = 20.0,
                 resize=None):
    """A PIL RGB image from bytes; a 400 when it does not decode, or when its header says it has more than
    `max_pixels` pixels, a side longer than `max_side`, or one side more than `max_aspect` times the other (what a
    thin image becomes once its short side is resized for an encoder: 720,000 x 50 is 3.7 G pixels at 256).

    `resize`: the router's image encoder's first step (a torchvision Resize), run here, in the decoding thread, so
    every image that joins a batch is small, and exactly the image the encoder's own resize would make (which then
    changes nothing). An image more than twice that size is first reduced while it is decoded (a JPEG by its
    decoder's scaling, at 1/2, 1/4 or 1/8; others by an integer box filter), never below the resize target."""
    import io

    from PIL import Image

    try:
        with warnings.catch_warnings():  # PIL's own bomb warning: the limits below decide, with a 400
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(bytes(raw)))
        w, h = img.size
    except Image.DecompressionBombError as e:
        raise bad_request(f"image refused: {e}", param, code="image_too_large") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for a file that is not an image
        raise bad_request(f"image does not decode: {type(e).__name__}: {e}", param, code="invalid_image") from None
    if w * h > max_pixels or max(w, h) > max_side or max(w, h) > max_aspect * max(min(w, h), 1):
        raise bad_request(f"image refused: {w}x{h} exceeds the limits ({max_pixels} pixels, sides up to {max_side}, "
                          f"sides at most {max_aspect:g} times each other: limits.max_pixels/max_side/max_aspect)",
                          param, code="image_too_large")
    size = getattr(resize, "size", None)
    side = (size if isinstance(size, int) else min(size)) if size else None
    try:
        if side and min(w, h) > 2 * side:
            img.draft("RGB", (-(-w * side // min(w, h)), -(-h * side // min(w, h))))  # JPEG: decode at a scale
        img.load()
        if side and min(img.size) > 2 * side:
            img = img.reduce(min(img.size) // side)
        img = img.convert("RGB") if img.mode != "RGB" else img
        return resize(img) if resize is not None else img
    except Exception as e:  # noqa: BLE001
        raise bad_request(f"image does not decode: {type(e).__name__}: {e}", param, code="invalid_image") from None


def is_public_address(addr: str) -> bool:
    """True for a globally routable address; False for private, loopback, link-local, reserved, multicast,
    unspecified and shared (CGNAT) ranges, also when written as an IPv4-mapped IPv6 address."""
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def resolve_public(host: str, port: int) -> str:
    """An address of `host` to connect to; a 400 when any of its addresses is not public (so a name that
    resolves to both cannot be used to reach an inside address)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise bad_request(f"remote image host {host!r} does not resolve", "messages", code="invalid_image_url") from None
    addrs = [i[4][0] for i in infos]
    bad = [a for a in addrs if not is_public_address(a)]
    if not addrs or bad:
        raise bad_request(f"remote image host {host!r} resolves to a non-public address ({bad[0] if bad else 'none'}); "
                          "only public addresses are fetched", "messages", code="invalid_image_url")
    return addrs[0]


async def fetch_remote_image(client, url: str, *, max_bytes: int, timeout_s: float, param: str) -> bytes:
    """GET an http(s) image with the limits; connects to the checked address itself (a second DNS answer
    cannot redirect it inside), follows no redirect, wants an image/* content type."""
    import httpx

    try:
        u = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        raise bad_request("malformed image URL", param, code="invalid_image_url") from None
    if u.scheme not in ("http", "https") or not u.host:
        raise bad_request("image URLs must be http(s) or data:image URIs", param, code="invalid_image_url")
    port = u.port or (443 if u.scheme == "https" else 80)
    addr = await resolve_public(u.host, port)
    target = u.copy_with(host=addr)
    headers = {"Host": u.netloc.decode("ascii")}
    ext = {"sni_hostname": u.host} if u.scheme == "https" else {}

    async def get() -> bytes:
        async with client.stream("GET", target, headers=headers, extensions=ext, follow_redirects=False) as r:
            if r.status_code != 200:
                raise bad_request(f"remote image: HTTP {r.status_code} from {u.host}", param, code="invalid_image_url")
            ctype = r.headers.get("content-type", "")
            if not ctype.lower().startswith("image/"):
                raise bad_request(f"remote image: content type {ctype!r} is not an image", param, code="invalid_image")
            declared = r.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise bad_request(f"remote image over {max_bytes} bytes (remote_images.max_bytes)", param,
                                  code="image_too_large")
            parts, n = [], 0
            async for chunk in r.aiter_raw():  # raw: no decompression (a gzip bomb stays its wire size)
                n += len(chunk)
                if n > max_bytes:
                    raise bad_request(f"remote image over {max_bytes} bytes (remote_images.max_bytes)", param,
                                      code="image_too_large")
                parts.append(chunk)
            return b"".join(parts)

    try:
        return await asyncio.wait_for(get(), timeout_s)
    except (asyncio.TimeoutError, httpx.TimeoutException):
        raise bad_request(f"remote image: no complete answer from {u.host} within {timeout_s} s", param,
                          code="invalid_image_url") from None
    except httpx.HTTPError as e:
        raise bad_request(f"remote image: {type(e).__name__} fetching from {u.host}", param,
                          code="invalid_image_url") from None


def image_url_kind(url: str) -> str:
    """data | remote | other (a file path, file://, ftp://, ...: always refused)."""
    low = url[:16].lower()
    if low.startswith("data:"):
        return "data"
    if low.startswith(("http://", "https://")):
        return "remote"
    return "other"


def refuse_other(urls: Iterable[tuple[str, str]], allow_remote: bool) -> None:
    """A 400 for the first image URL that is neither an inline data URI nor (when allowed) http(s)."""
    for url, param in urls:
        kind = image_url_kind(url)
        if kind == "other":
            raise bad_request("image_url must be a data:image/<type>;base64,... URI"
                              + (" or an http(s) URL" if allow_remote else "") + "; file paths are never read",
                              param, code="invalid_image_url")
        if kind == "remote" and not allow_remote:
            raise bad_request("remote image URLs are not allowed on this server (remote_images.allow=false): "
                              "send the image inline as data:image/<type>;base64,...", param, code="invalid_image_url")
