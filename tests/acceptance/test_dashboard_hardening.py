"""The dashboard's edges over HTTP: what it shows of the store URL, which hosts it answers, who
may read, how fast a token can be guessed, and hostile cookies, form fields and ids — each a 4xx,
never a 500."""

from __future__ import annotations

import logging
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from tests.acceptance.test_dashboard_browser import serve
from tests.conftest import open_basic_app, postgres_url_or_skip, with_query

import oncely
from oncely.errors import ConfigError
from oncely.web.app import create_app, host_names
from oncely.web.auth import SESSION_COOKIE
from oncely.web.throttle import Bucket, Throttle

with warnings.catch_warnings():  # Starlette asks for httpx2; httpx serves the test client fine
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

TOKEN = "edges-token-5f0c9e2b41"
BIG_ID = 2**63  # one past what either store holds


@pytest.fixture
def app(any_url: str) -> Iterator[oncely.App]:
    app = open_basic_app(any_url)
    assert app.enqueue_job("record", {"n": 1}).id == 1
    yield app
    app.close()


def client(app: oncely.App, token: str | None = TOKEN, **options: object) -> TestClient:
    return TestClient(create_app(app, token, **options),  # type: ignore[arg-type]
                      base_url="http://127.0.0.1:8700")


def sign_in(web: TestClient) -> str:
    import re

    assert web.post("/login", data={"token": TOKEN}, follow_redirects=False).status_code == 303
    return re.search(r'name="csrf" value="([^"]+)"', web.get("/jobs/1").text).group(1)


# 1. a password in the URL's query string; reads behind the token -------------------------------

@pytest.mark.postgres
def test_a_password_given_as_a_query_parameter_never_reaches_a_page() -> None:
    schema = f"oncely_t_{uuid.uuid4().hex[:12]}"
    url = with_query(postgres_url_or_skip(), password="s3cret-in-query", schema=schema)
    app = open_basic_app(url)
    app.enqueue_job("record", {"n": 1})
    try:
        web = client(app)
        for path in ("/", "/jobs", "/workers", "/api/doctor", "/login"):
            page = web.get(path)
            assert page.status_code == 200 and "s3cret-in-query" not in page.text, path
        assert "password=***" in web.get("/").text
    finally:
        app.close()
        import psycopg

        with psycopg.connect(postgres_url_or_skip(), autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_auth_reads_puts_every_read_behind_the_token(app: oncely.App) -> None:
    web = client(app, auth="reads")
    assert web.get("/api/jobs").status_code == 401
    assert web.get("/metrics").status_code == 401
    assert web.get("/api/doctor").status_code == 401
    page = web.get("/jobs/1", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/login"
    assert web.get("/login").status_code == 200 and web.get("/healthz").status_code == 200
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert web.get("/api/jobs", headers=bearer).status_code == 200
    sign_in(web)
    assert web.get("/jobs/1").status_code == 200 and web.get("/api/jobs").status_code == 200
    with pytest.raises(ConfigError, match="needs a token"):
        create_app(app, None, auth="reads")


# 2. the Host header: DNS rebinding ------------------------------------------------------------

def test_only_the_hosts_it_is_served_as_are_answered(app: oncely.App) -> None:
    web = client(app, allowed_hosts=["dash.example.com"])
    for path in ("/", "/api/jobs", "/api/jobs/1", "/api/doctor", "/metrics", "/login"):
        refused = web.get(path, headers={"Host": "attacker.example"})
        assert refused.status_code == 400, path
        assert "record" not in refused.text and refused.headers["x-frame-options"] == "DENY"
    for host in ("127.0.0.1:8700", "localhost:8700", "[::1]:8700", "dash.example.com",
                 "DASH.example.com:443"):
        assert web.get("/api/jobs", headers={"Host": host}).status_code == 200, host
    assert web.get("/api/jobs", headers={"Host": "dash.example.com.attacker.example"}
                   ).status_code == 400


def test_allowed_hosts_are_host_names_and_their_ports_are_dropped(
    app: oncely.App, caplog: pytest.LogCaptureFixture
) -> None:
    """A Host is matched by its name, its port ignored: an entry with a port (as a proxy's URL has
    it) used to be kept whole, a name no header could match."""
    assert host_names(["jobs.example.com:443", "DASH.example.com", "[fd00::5]:8443", "fd00::6",
                       "10.0.0.5:80", "*.example.com", "", "jobs.example.com"], "0.0.0.0") == [
        "localhost", "127.0.0.1", "[::1]", "0.0.0.0", "jobs.example.com", "dash.example.com",
        "[fd00::5]", "[fd00::6]", "10.0.0.5", "*.example.com"]
    assert host_names([], "not an address") == ["localhost", "127.0.0.1", "[::1]"]
    for entry in ("https://jobs.example.com", "jobs.example.com/", "a b", "a*b", "*example.com",
                  "jobs.example.com:0", "jobs.example.com:https", "[fd00::zz]", "\x1b[31m"):
        with pytest.raises(ConfigError, match="is not a host name"):
            create_app(app, TOKEN, [entry])
    web = client(app, allowed_hosts=["jobs.example.com:443"])
    for host in ("jobs.example.com", "jobs.example.com:443", "JOBS.example.com:8443"):
        assert web.get("/api/jobs", headers={"Host": host}).status_code == 200, host
    assert web.get("/api/jobs", headers={"Host": "jobs.example.com.evil"}).status_code == 400
    caplog.set_level(logging.WARNING, "oncely.web")
    anyone = client(app, allowed_hosts=["*"])
    for _ in range(3):
        assert anyone.get("/api/jobs", headers={"Host": "attacker.example"}).status_code == 200
    assert sum("DNS rebinding" in record.message for record in caplog.records) == 1


# 5. guessing the token ------------------------------------------------------------------------

def test_signing_in_to_a_dashboard_without_a_token_is_no_wrong_guess(
    app: oncely.App, caplog: pytest.LogCaptureFixture
) -> None:
    web_app = create_app(app, None)
    now = [0.0]
    web_app.state.dashboard.guard.throttle = Throttle(monotonic=lambda: now[0])
    web = TestClient(web_app, base_url="http://127.0.0.1:8700")
    caplog.set_level(logging.WARNING, "oncely.web")
    for i in range(12):
        answer = web.post("/login", data={"token": f"any-guess-at-all-{i:04d}"})
        assert answer.status_code == 403 and "started without a token" in answer.text
    assert not [r for r in caplog.records if "wrong token" in r.message]
    assert web_app.state.dashboard.guard.throttle.wait("testclient") == 0  # no bucket spent


def test_tokens_shorter_than_16_characters_are_refused(app: oncely.App) -> None:
    for token in ("x", "tooshort-15char", " " * 20, "é" * 20):
        with pytest.raises(ConfigError, match="16-1024 printable ASCII characters without spaces"):
            create_app(app, token)
    create_app(app, "sixteen-chars-ok")


def test_wrong_tokens_are_throttled_per_client_then_for_everyone(
    app: oncely.App, caplog: pytest.LogCaptureFixture
) -> None:
    web_app = create_app(app, TOKEN)
    now = [0.0]
    web_app.state.dashboard.guard.throttle = Throttle(monotonic=lambda: now[0])
    web = TestClient(web_app, base_url="http://127.0.0.1:8700")
    caplog.set_level(logging.WARNING, "oncely.web")
    codes = [web.post("/login", data={"token": f"wrong-guess-{i:08d}"}).status_code
             for i in range(12)]
    assert codes == [403] * 5 + [429] * 7  # the per-client burst, then nothing is compared
    throttled = web.post("/login", data={"token": TOKEN}, follow_redirects=False)
    assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) == 10
    bearer = web.get("/api/jobs", headers={"Authorization": "Bearer also-wrong-000000"})
    assert bearer.status_code == 429
    failures = [r for r in caplog.records if "wrong token" in r.getMessage()]
    assert len(failures) == 5  # each failure logged once, none of the refused ones
    assert all(TOKEN not in r.getMessage() for r in caplog.records)
    now[0] += 10.0  # one attempt earned back
    assert web.post("/login", data={"token": TOKEN}, follow_redirects=False).status_code == 303


def test_the_shared_bucket_holds_a_flood_from_many_addresses() -> None:
    now = [0.0]
    throttle = Throttle(per_client=Bucket(5, 10.0), overall=Bucket(20, 1.0),
                        monotonic=lambda: now[0])
    for index in range(20):
        assert throttle.wait(f"10.0.0.{index}") == 0
        throttle.failed(f"10.0.0.{index}")
    assert throttle.wait("192.0.2.1") == pytest.approx(1.0)  # a fresh address waits too
    now[0] += 1.0
    assert throttle.wait("192.0.2.1") == 0


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """A dashboard served by uvicorn (the throttle does not depend on the store: SQLite)."""

    app = open_basic_app(f"sqlite:///{tmp_path / 'served.db'}")

    web = create_app(app, TOKEN)
    web.state.dashboard.guard.throttle = Throttle(monotonic=lambda: 0.0)
    with serve(web) as url:
        yield url
    app.close()


def test_fifty_parallel_guesses_are_not_fifty_comparisons(served: str) -> None:
    """200 wrong tokens, 50 at a time: the client's burst of 5 is compared, the rest refused
    (the throttle's clock stands still, so no attempt is earned back during the run)."""
    with httpx.Client(base_url=served, timeout=30,
                      limits=httpx.Limits(max_connections=50)) as http:

        def guess(index: int) -> int:
            answer = http.post("/login", data={"token": f"parallel-guess-{index:06d}"},
                               headers={"Origin": served})
            return answer.status_code

        with ThreadPoolExecutor(max_workers=50) as pool:
            codes = Counter(pool.map(guess, range(200)))
    assert codes[403] <= 5 and codes[429] >= 195 and set(codes) <= {403, 429}, codes


# 6. hostile cookies, form fields and ids --------------------------------------------------------

def test_a_non_ascii_session_cookie_is_no_session(app: oncely.App) -> None:
    web = client(app)
    for value in ("é", "abc.é", "é.é", "\u2603" * 40):
        cookie = {"cookie": f"{SESSION_COOKIE}={value}".encode()}
        for path in ("/", "/jobs", "/jobs/1", "/login"):
            assert web.get(path, headers=cookie).status_code == 200, (value, path)  # type: ignore[arg-type]
        assert web.post("/jobs/1/retry", headers=cookie,  # type: ignore[arg-type]
                        data={"csrf": "x"}).status_code == 403


def test_a_non_ascii_csrf_field_is_refused_not_a_crash(app: oncely.App) -> None:
    web = client(app)
    sign_in(web)
    for csrf in ("é", "\u2603" * 64, "\x00"):
        assert web.post("/jobs/1/cancel", data={"csrf": csrf}).status_code == 403


def test_ids_beyond_64_bits_are_not_found(app: oncely.App) -> None:
    web = client(app)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert web.get(f"/jobs/{BIG_ID}").status_code == 404
    assert web.get(f"/api/jobs/{BIG_ID}").status_code == 404
    assert web.post(f"/api/jobs/{BIG_ID}/retry", headers=bearer).status_code == 404
    assert web.get(f"/jobs?before={BIG_ID}").status_code == 400
    assert web.get(f"/api/jobs?before={10**30}").status_code == 400
    assert web.get("/api/jobs?before=1").status_code == 200
