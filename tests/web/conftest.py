"""Shared by the dashboard's tests: a real SQLite file written by common.storage, with deals
(price history included) and rejections."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn
from support import wait_until

from common.storage import Rejection, Storage
from web.app import WebConfig, create_app

EVIL_TITLE = "<script>window.__pwned = 1</script> & <b>bold</b>"
HISTORY = [
    [7_000_000, 2599, 7_001_440, 2499, 7_002_880, -1, 7_004_320, 1999],  # Amazon
    [7_000_000, 2399, 7_002_000, 2199, 7_004_000, 1899],  # New
]


def make_db(path: Path, n: int = 30, now: float = 1_000_000.0) -> Path:
    with Storage.open(path) as s:
        deals = [
            {
                "asin": f"B{i:09d}",
                "title": EVIL_TITLE if i == 3 else f"thing {i}",
                "price_type": 1,
                "current": 1000 + i,
                "avg90": 2000,
                "drop_percent": float(i % 10) * 5,
                "sales_rank": 100 * i,
                "offers": i % 5,
                "profit": (i * 37) % 101,
                "raw": json.dumps({"rootCategory": i % 3}),
                "history": json.dumps(HISTORY),
            }
            for i in range(n)
        ]
        s.commit_deals(1, deals, now=now)
        s.add_candidates(1, ["X000000001", "X000000002", "X000000003"], source="test", now=now)
        s.reject_candidates(
            1,
            [
                Rejection("X000000001", "min_drop", "min_drop", {"drop": 3, "min": 20}),
                Rejection("X000000002", "max_rank", "max_rank", {"note": "<img src=x onerror=1>"}),
            ],
            now=now + 10,
        )
    return path


@pytest.fixture
def deals_db(tmp_path: Path) -> Path:
    return make_db(tmp_path / "fleet.db")


class LiveServer:
    """The dashboard app served by a real uvicorn on 127.0.0.1, port 0, in a thread."""

    def __init__(self, config: WebConfig) -> None:
        self.app = create_app(config)
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        wait_until(lambda: self.server.started, 20, message="uvicorn started")
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        assert not self.thread.is_alive(), "uvicorn did not stop"

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=10, allow_redirects=False, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.post(self.url + path, timeout=10, **kwargs)


@pytest.fixture
def live(deals_db: Path) -> Iterator[LiveServer]:
    with LiveServer(WebConfig(db=deals_db)) as server:
        yield server


@pytest.fixture
def db_maker() -> Any:
    """``make_db`` (test modules cannot import this conftest by name)."""
    return make_db


@pytest.fixture
def server() -> Any:
    """The ``LiveServer`` class, to serve an app of a test's own configuration."""
    return LiveServer
