"""Price tables: $ per 1M input/output tokens per model, in VL-RouterBench's config/pricing.yaml layout."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import yaml

from vlrb.errors import VlrbError


class PricingError(VlrbError, ValueError):
    pass


@dataclass(frozen=True)
class Price:
    input_per_1m: float
    output_per_1m: float

    def cost(self, input_tokens, output_tokens):
        """C = in · p_in / 1e6 + out · p_out / 1e6 ($ per request); works on numpy arrays."""
        return input_tokens * self.input_per_1m / 1e6 + output_tokens * self.output_per_1m / 1e6


class PriceTable:
    def __init__(self, prices: Mapping[str, Price], aliases: Mapping[str, str] | None = None, source: str = ""):
        self.prices = dict(prices)
        self.aliases = dict(aliases or {})
        self.source = source

    @classmethod
    def from_mapping(cls, table: Mapping, source: str = "") -> "PriceTable":
        """`table` is the YAML's top level: {"pricing": {model: {input_price_per_1m, output_price_per_1m, aliases}}}."""
        entries = table.get("pricing", table) if isinstance(table, Mapping) else None
        if not isinstance(entries, Mapping) or not entries:
            raise PricingError(f"{source or 'price table'}: expected a `pricing:` mapping of model -> prices")
        prices, aliases = {}, {}
        for model, e in entries.items():
            if not isinstance(e, Mapping):
                raise PricingError(f"{source}: entry for {model!r} must be a mapping, got {e!r}")
            kind = e.get("type", "token_based")
            if kind != "token_based":
                raise PricingError(f"{source}: {model!r} has type {kind!r}; only token_based prices are supported")
            try:
                p = Price(float(e["input_price_per_1m"]), float(e["output_price_per_1m"]))
            except (KeyError, TypeError, ValueError):
                raise PricingError(f"{source}: {model!r} needs numeric input_price_per_1m and output_price_per_1m") from None
            if p.input_per_1m < 0 or p.output_per_1m < 0:
                raise PricingError(f"{source}: {model!r} has a negative price")
            prices[str(model)] = p
            for a in e.get("aliases") or []:
                aliases[str(a)] = str(model)
        return cls(prices, aliases, source)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "PriceTable":
        path = Path(path)
        if not path.exists():
            raise PricingError(f"price table {path} does not exist")
        try:
            table = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise PricingError(f"price table {path} is not valid YAML: {e}") from None
        return cls.from_mapping(table or {}, source=str(path))

    @classmethod
    def from_config(cls, cfg: dict | None) -> "PriceTable":
        """`cfg` is the `pricing` config group as a dict: `path: FILE` wins over the inline `pricing:` table."""
        if cfg is None:
            raise PricingError("no price table configured (pricing=<name> or pricing.path=FILE)")
        if cfg.get("path"):
            return cls.from_yaml(cfg["path"])
        return cls.from_mapping(dict(cfg), source="conf/pricing")

    @property
    def models(self) -> list[str]:
        return sorted(self.prices)

    def canonical(self, key: str) -> str | None:
        """The canonical model id for a key seen in logs (itself or an alias), else None."""
        if key in self.prices:
            return key
        return self.aliases.get(key)

    def __getitem__(self, model: str) -> Price:
        m = self.canonical(model)
        if m is None:
            raise PricingError(missing_price_message(model, self.source))
        return self.prices[m]


def missing_price_message(model: str, source: str = "") -> str:
    return (f"model {model!r} appears in the logs but has no price in {source or 'the price table'}. "
            f"Add it to the table, e.g. `pricing: {{{model}: {{type: token_based, input_price_per_1m: 0.20, "
            f"output_price_per_1m: 0.20}}}}`, and pass it with pricing.path=FILE (or add an alias to an existing entry), "
            f"or leave the model out with data.models=[...].")


def manifest_prices(root) -> dict[str, dict[str, float]] | None:
    """Per-model $ per 1M tokens a built benchmark recorded (its manifest.json: model -> [input, output]), as
    {model: {"input_per_1m", "output_per_1m"}}; None when it has none (records that carried their own cost)."""
    import json

    f = Path(root) / "manifest.json" if root is not None else None
    if f is None or not f.exists():
        return None
    prices = json.loads(f.read_text()).get("prices")
    return {m: {"input_per_1m": p[0], "output_per_1m": p[1]} for m, p in prices.items()} if prices else None
