"""The feedback log: one embedded SQLite database (WAL) holding every routed request's decision and the feedback
clients post about it.

    store = FeedbackStore("logs/feedback.sqlite")              # created on first use; safe for concurrent writers
    store.log_decisions([Decision(...), ...])                  # the server, once per routed batch
    store.add_feedback(request_id, reward=1.0)                 # POST /v1/feedback; UnknownRequest for an unknown id
    log = read_log("logs/feedback.sqlite")                     # training: arrays, one row per decision with feedback

Tables (format `vlrb-feedback/1`):
  decisions(id, time, router, models, pool, chosen, answered_by, propensity, policy, scores, costs, mu, dataset,
            features)
      `models`: the router's models in score order (JSON); `pool`: the candidates of this request (JSON; a request's
      own restriction, open circuit breakers and missing upstreams removed); `chosen`: the policy's pick and
      `propensity` the probability it had of picking it (1 under the greedy rule); `answered_by`: the model whose
      answer the client got (a fallback may differ from `chosen`; NULL when nothing answered or route-only);
      `scores`, `costs`: (K,) JSON lists; `features`: the fused feature vector the router read (float32 bytes), so
      a router can be trained on the log without the requests' text and images.
  feedback(seq, id, time, reward, cost)
      appended, never updated: a request may get several; `read_log` keeps the last. reward in [0, 1].
  meta(key, value): format, and what the server recorded about its router (e.g. the router folder).

A transaction per write: a process killed mid-write leaves the database as it was before that write (SQLite's
atomic commit); the WAL lets readers (training) work while the server writes.
"""
from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from vlrb.errors import VlrbError

FORMAT = "vlrb-feedback/1"
POLICIES = ("greedy", "epsilon_greedy", "thompson")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    id TEXT PRIMARY KEY,
    time REAL NOT NULL,
    router TEXT NOT NULL,
    models TEXT NOT NULL,
    pool TEXT NOT NULL,
    chosen TEXT NOT NULL,
    answered_by TEXT,
    propensity REAL NOT NULL CHECK (propensity > 0 AND propensity <= 1),
    policy TEXT NOT NULL,
    scores TEXT NOT NULL,
    costs TEXT NOT NULL,
    mu REAL NOT NULL,
    dataset TEXT NOT NULL DEFAULT '',
    features BLOB
);
CREATE TABLE IF NOT EXISTS feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL REFERENCES decisions(id),
    time REAL NOT NULL,
    reward REAL NOT NULL CHECK (reward >= 0 AND reward <= 1),
    cost REAL
);
CREATE INDEX IF NOT EXISTS feedback_id ON feedback(id);
"""


class FeedbackError(VlrbError):
    """A feedback database that cannot be read or written as asked (the message names the file)."""


class UnknownRequest(FeedbackError, KeyError):
    """Feedback for a request id the log has no decision for."""


@dataclass
class Decision:
    """One routed request, as logged."""

    id: str
    router: str
    models: Sequence[str]
    pool: Sequence[str]
    chosen: str
    propensity: float = 1.0
    policy: str = "greedy"
    scores: Sequence[float] = ()
    costs: Sequence[float] = ()
    mu: float = 0.0
    answered_by: str | None = None
    dataset: str = ""
    features: np.ndarray | None = None
    time: float = field(default_factory=time.time)

    def row(self) -> tuple:
        if self.chosen not in self.models:
            raise FeedbackError(f"decision {self.id}: chosen model {self.chosen!r} is not one of the router's models")
        if not (0.0 < float(self.propensity) <= 1.0):
            raise FeedbackError(f"decision {self.id}: propensity must be in (0, 1], got {self.propensity}")
        if self.policy not in POLICIES:
            raise FeedbackError(f"decision {self.id}: policy must be one of {POLICIES}, got {self.policy!r}")
        feats = None if self.features is None else np.ascontiguousarray(self.features, dtype="<f4").tobytes()
        return (self.id, float(self.time), self.router, json.dumps(list(self.models)), json.dumps(list(self.pool)),
                self.chosen, self.answered_by, float(self.propensity), self.policy,
                json.dumps([float(s) for s in self.scores]), json.dumps([float(c) for c in self.costs]),
                float(self.mu), str(self.dataset or ""), feats)


def check_reward(reward: Any) -> float:
    """A reward in [0, 1] (True/False count as 1/0); a FeedbackError otherwise."""
    if isinstance(reward, bool):
        return float(reward)
    if not isinstance(reward, (int, float)) or not math.isfinite(reward) or not 0.0 <= reward <= 1.0:
        raise FeedbackError(f"reward must be a number in [0, 1] (or true/false), got {reward!r}")
    return float(reward)


class FeedbackStore:
    """The feedback database at `path` (created with its folder when missing). One connection, guarded by a lock:
    callable from any thread (the server calls it from worker threads)."""

    def __init__(self, path: str | Path, *, create: bool = True):
        self.path = Path(path)
        if not self.path.exists() and not create:
            raise FeedbackError(f"{self.path}: no feedback database there")
        if self.path.is_dir():
            raise FeedbackError(f"{self.path} is a folder; the feedback log is one SQLite file (e.g. feedback.sqlite)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: atomic and durable across a process kill
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(SCHEMA)
            found = self._db.execute("SELECT value FROM meta WHERE key='format'").fetchone()
        except sqlite3.DatabaseError as e:
            raise FeedbackError(f"{self.path}: not a vlrb feedback database ({e})") from None
        if found is None:
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (FORMAT,))
        elif found[0] != FORMAT:
            raise FeedbackError(f"{self.path}: feedback format {found[0]!r}; this vlrb reads {FORMAT!r}")

    # ------------------------------------------------------------------ writes
    def _write(self, sql: str, rows: Iterable[tuple]) -> None:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(sql, rows)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def set_meta(self, **values: Any) -> None:
        self._write("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in values.items()])

    def meta(self) -> dict[str, Any]:
        with self._lock:
            rows = self._db.execute("SELECT key, value FROM meta WHERE key != 'format'").fetchall()
        return {k: json.loads(v) for k, v in rows}

    def log_decisions(self, decisions: Sequence[Decision]) -> None:
        """Every decision in one transaction (a routed batch); an id logged before is an error."""
        rows = [d.row() for d in decisions]
        try:
            self._write("INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        except sqlite3.IntegrityError as e:
            raise FeedbackError(f"{self.path}: a decision id is already logged ({e})") from None

    def set_answered_by(self, request_id: str, model: str | None) -> None:
        self._write("UPDATE decisions SET answered_by = ? WHERE id = ?", [(model, request_id)])

    def add_feedback(self, request_id: str, reward: Any, cost: float | None = None) -> None:
        """Append one feedback row; UnknownRequest when no decision has this id."""
        reward = check_reward(reward)
        if cost is not None and (not isinstance(cost, (int, float)) or isinstance(cost, bool)
                                 or not math.isfinite(cost) or cost < 0):
            raise FeedbackError(f"cost must be a non-negative number of $, got {cost!r}")
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                if self._db.execute("SELECT 1 FROM decisions WHERE id = ?", (request_id,)).fetchone() is None:
                    self._db.execute("ROLLBACK")
                    raise UnknownRequest(f"no routed request with id {request_id!r} in the feedback log")
                self._db.execute("INSERT INTO feedback (id, time, reward, cost) VALUES (?, ?, ?, ?)",
                                 (request_id, time.time(), reward, None if cost is None else float(cost)))
                self._db.execute("COMMIT")
            except UnknownRequest:
                raise
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    # ------------------------------------------------------------------ reads
    def count(self, table: str = "feedback") -> int:
        if table not in ("decisions", "feedback"):
            raise ValueError(table)
        with self._lock:
            return int(self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def rows(self, with_feedback: bool = True) -> list[tuple]:
        """Decision rows (with the last feedback's reward and cost; None where there is none), oldest first."""
        join = "JOIN" if with_feedback else "LEFT JOIN"
        sql = (f"SELECT d.*, f.reward, f.cost FROM decisions d {join} "
               "(SELECT id, reward, cost, MAX(seq) FROM feedback GROUP BY id) f ON f.id = d.id ORDER BY d.time, d.id")
        with self._lock:
            return self._db.execute(sql).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass
class FeedbackLog:
    """The decisions that got feedback, as arrays (row i: one request), over one model list."""

    ids: np.ndarray  # (n,) request ids
    models: list[str]  # the router's models (every decision of one log must share them)
    chosen: np.ndarray  # (n,) int index into models: the model whose outcome `reward` is
    propensity: np.ndarray  # (n,) P(the logging policy chose it)
    reward: np.ndarray  # (n,) float in [0, 1]
    cost: np.ndarray  # (n,) $ of the chosen call: the feedback's cost, else the server's estimate
    scores: np.ndarray  # (n, K) the router's scores then
    costs: np.ndarray  # (n, K) the estimated costs then
    pool: np.ndarray  # (n, K) bool: the candidates of each request
    X: np.ndarray | None  # (n, D) float32 fused features, None when the logging router read none
    datasets: np.ndarray  # (n,) the client's dataset hint ("" none)
    time: np.ndarray  # (n,) unix seconds
    policy: np.ndarray  # (n,) str
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


def read_log(path: str | Path) -> FeedbackLog:
    """The feedback log at `path` as arrays: every decision that has feedback and whose answer came from the model
    the policy chose (a fallback's outcome says nothing about the choice whose propensity was logged)."""
    path = Path(path)
    if not path.is_file():
        raise FeedbackError(f"data.path={path}: no feedback database there (serve.py writes it: feedback.path in "
                            "conf/serve.yaml)")
    store = FeedbackStore(path, create=False)
    try:
        rows, meta = store.rows(), store.meta()
    finally:
        store.close()
    rows = [r for r in rows if r[6] is None or r[6] == r[5]]  # answered_by NULL (route-only) or the chosen model
    if not rows:
        raise FeedbackError(f"{path}: no routed request has feedback yet (POST /v1/feedback)")
    models = json.loads(rows[0][3])
    if any(json.loads(r[3]) != models for r in rows):
        raise FeedbackError(f"{path}: decisions of routers over different model lists; one log per model pool")
    index = {m: j for j, m in enumerate(models)}
    feats = [r[13] for r in rows]
    X = None
    if all(f is not None for f in feats):
        X = np.stack([np.frombuffer(f, dtype="<f4") for f in feats]).astype(np.float32)
    costs = np.array([json.loads(r[10]) for r in rows], dtype=np.float64).reshape(len(rows), -1)
    chosen = np.array([index[r[5]] for r in rows], dtype=np.int64)
    est = costs[np.arange(len(rows)), chosen] if costs.shape[1] == len(models) else np.zeros(len(rows))
    pools = [set(json.loads(r[4])) for r in rows]
    return FeedbackLog(
        ids=np.array([r[0] for r in rows], dtype=object), models=models, chosen=chosen,
        propensity=np.array([r[7] for r in rows], dtype=np.float64),
        reward=np.array([r[14] for r in rows], dtype=np.float64),
        cost=np.array([e if r[15] is None else r[15] for r, e in zip(rows, est)], dtype=np.float64),
        scores=np.array([json.loads(r[9]) for r in rows], dtype=np.float64).reshape(len(rows), -1), costs=costs,
        pool=np.array([[m in p for m in models] for p in pools], dtype=bool), X=X,
        datasets=np.array([r[12] for r in rows], dtype=object), time=np.array([r[1] for r in rows]),
        policy=np.array([r[8] for r in rows], dtype=object), meta=meta)
