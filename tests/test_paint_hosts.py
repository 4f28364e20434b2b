"""GANPaint answers only Host headers that name its own address, and loads nothing from off the machine."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
from fastapi.testclient import TestClient  # noqa: E402
from gdx_browser import chromium_page, make_run, serve  # noqa: E402

from gdx.paint import engine_from_run  # noqa: E402
from gdx.paint.server import allowed_hosts, create_app  # noqa: E402


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("run"), "toy", "toy", "features", samples=40)
    return create_app(engine_from_run(run, "features"))


@pytest.mark.parametrize("host, status", [
    ("evil.example", 400), ("evil.example:8765", 400), ("127.0.0.1.evil.example", 400), ("localhost.", 400),
    ("127.0.0.1:8765", 200), ("localhost:8765", 200), ("[::1]:8765", 200),
])
def test_only_the_bound_address_is_answered(app, host, status):
    with TestClient(app, base_url="http://127.0.0.1") as c:
        for path in ("/", "/api/info"):
            assert c.get(path, headers={"host": host}).status_code == status, (host, path)


def test_the_host_given_to_paint_is_allowed_too():
    assert "192.168.1.5" in allowed_hosts("192.168.1.5") and "evil.example" not in allowed_hosts("192.168.1.5")
    assert allowed_hosts("127.0.0.1") == ["localhost", "127.0.0.1", "[::1]", "::1"]


def test_the_cdn_api_docs_are_off(app):
    with TestClient(app, base_url="http://127.0.0.1") as c:
        assert c.get("/docs").status_code == 404 and c.get("/redoc").status_code == 404
        assert "/api/edit" in c.get("/openapi.json").json()["paths"]


@pytest.mark.browser
def test_no_page_makes_a_request_off_the_machine(app):
    with serve(app) as base, chromium_page() as (page, _errors):
        hosts: list[str] = []
        page.on("request", lambda r: hosts.append(urlsplit(r.url).hostname or r.url))
        for path in ("docs", "redoc", ""):
            page.goto(base + path)
            page.wait_for_load_state("networkidle")
        assert hosts and set(hosts) == {"127.0.0.1"}, sorted(set(hosts))
