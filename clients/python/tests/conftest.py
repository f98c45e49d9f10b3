"""The suite runs against a live llmesh server that the caller prepared (tests/tests/sdks.rs
in the Rust suite does): its URL, an API key of a credited member, that member's email and
password, a second member, an admin, and the priced chat model."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import pytest

import llmesh


@dataclass(frozen=True)
class Live:
    url: str
    api_key: str
    email: str
    password: str
    other_email: str
    admin_email: str
    admin_password: str
    model: str
    access_ttl: float


def _need(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run the suite through `cargo test -p llmesh-tests --test sdks`, which starts a server")
    return value


@pytest.fixture(scope="session")
def live() -> Live:
    return Live(
        url=_need("LLMESH_URL"),
        api_key=_need("LLMESH_API_KEY"),
        email=_need("LLMESH_EMAIL"),
        password=_need("LLMESH_PASSWORD"),
        other_email=_need("LLMESH_OTHER_EMAIL"),
        admin_email=_need("LLMESH_ADMIN_EMAIL"),
        admin_password=_need("LLMESH_ADMIN_PASSWORD"),
        model=_need("LLMESH_MODEL"),
        access_ttl=float(_need("LLMESH_ACCESS_TTL_SECS")),
    )


@pytest.fixture
def client(live: Live) -> Iterator[llmesh.Client]:
    with llmesh.connect(live.url, api_key=live.api_key) as c:
        yield c
