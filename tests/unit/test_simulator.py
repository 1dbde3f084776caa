"""Unit tests of the Modellix simulator (``simulator/``): in-process ASGI, fake clock, no sleeps."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from PIL import Image
from starlette.types import Message

from simulator.app import DROPPED, SimApp, create_app
from simulator.config import Faults, SimConfig
from simulator.timing import draw_durations

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000.0
KEY_A = "sk-team-a-SECRET-1"
KEY_A2 = "sk-team-a-SECRET-2"
KEY_B = "sk-team-b-SECRET-3"
KEYS = {KEY_A: "team-a", KEY_A2: "team-a", KEY_B: "team-b"}
MODEL_PATH = "/api/v1/minimax/minimax-image-01-live-i2i"
SUBMIT = f"{MODEL_PATH}/async"
HTTPS_REF = "https://img.example.test/ref.jpg"
BASE_URL = "http://sim.test:8900"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    """Settable time source."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Sim:
    """A simulator app with its client, fake clock and recorded sleeps."""

    app: SimApp
    client: httpx.AsyncClient
    clock: FakeClock
    sleeps: list[float] = field(default_factory=list)

    async def submit(self, body: dict[str, Any], key: str = KEY_A, path: str = SUBMIT) -> Any:
        return await self.client.post(path, json=body, headers=auth(key))

    async def query(self, task_id: str, key: str = KEY_A) -> httpx.Response:
        return await self.client.get(f"/api/v1/tasks/{task_id}", headers=auth(key))

    async def created(self, body: dict[str, Any] | None = None, key: str = KEY_A) -> str:
        response = await self.submit(body or payload(), key)
        assert response.status_code == 200, response.text
        task_id: str = response.json()["data"]["task_id"]
        return task_id

    async def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = (await self.client.get("/_sim/stats")).json()
        return result

    async def configure(self, **changes: Any) -> httpx.Response:
        return await self.client.post("/_sim/config", json=changes)


SimFactory = Callable[..., Awaitable[Sim]]


@pytest.fixture
async def make_sim() -> AsyncIterator[SimFactory]:
    clients: list[httpx.AsyncClient] = []

    async def factory(**overrides: Any) -> Sim:
        faults = overrides.pop("faults", Faults())
        settings: dict[str, Any] = {
            "keys": dict(KEYS),
            "public_base_url": BASE_URL,
            **overrides,
        }
        config = SimConfig(faults=faults, **settings)
        clock = FakeClock()
        sleeps: list[float] = []

        async def fake_sleep(seconds: float) -> None:
            sleeps.append(seconds)

        app = create_app(config, clock=clock, sleep=fake_sleep)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL)
        clients.append(client)
        return Sim(app=app, client=client, clock=clock, sleeps=sleeps)

    yield factory
    for client in clients:
        await client.aclose()


@pytest.fixture
async def sim(make_sim: SimFactory) -> Sim:
    return await make_sim()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def payload(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": "a cat in a hat", "subject_reference_images": [HTTPS_REF]}
    body.update(fields)
    return body


def png_data_url(
    color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (96, 64)
) -> str:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def jpeg_data_url() -> str:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 120, 240)).save(out, format="JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


def assert_error(response: httpx.Response, status: int, message: str) -> None:
    assert response.status_code == status, response.text
    assert response.json() == {"code": status, "message": message}


def assert_rate_headers(response: httpx.Response) -> None:
    for name in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"):
        assert response.headers[name].isdigit(), name


async def finish(sim: Sim, task_id: str, key: str = KEY_A) -> dict[str, Any]:
    sim.clock.advance(3.0)
    response = await sim.query(task_id, key)
    assert response.status_code == 200
    data: dict[str, Any] = response.json()["data"]
    assert data["status"] == "success"
    return data


async def download(sim: Sim, url: str) -> bytes:
    assert url.startswith(BASE_URL)
    response = await sim.client.get(url.removeprefix(BASE_URL))
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    return response.content


# --------------------------------------------------------------------------------------
# auth
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "Authentication failed: missing Authorization header"),
        (
            {"Authorization": f"Token {KEY_A}"},
            "Authentication failed: malformed Authorization header, expected 'Bearer <API key>'",
        ),
        (
            {"Authorization": "Bearer "},
            "Authentication failed: malformed Authorization header, expected 'Bearer <API key>'",
        ),
        (
            {"Authorization": "Bearer two words"},
            "Authentication failed: malformed Authorization header, expected 'Bearer <API key>'",
        ),
        ({"Authorization": "Bearer sk-unknown-SECRET"}, "Authentication failed: invalid API key"),
    ],
)
async def test_submit_auth_failures(sim: Sim, headers: dict[str, str], message: str) -> None:
    response = await sim.client.post(SUBMIT, json=payload(), headers=headers)
    assert_error(response, 401, message)
    assert_rate_headers(response)
    assert "SECRET" not in response.text
    stats = await sim.stats()
    assert stats["submits_rejected"] == {"auth": 1}
    assert stats["submits_accepted"] == 0


async def test_query_auth_failure_is_401(sim: Sim) -> None:
    task_id = await sim.created()
    response = await sim.query(task_id, key="sk-unknown-SECRET")
    assert_error(response, 401, "Authentication failed: invalid API key")
    assert (await sim.stats())["polls_by_status"] == {"auth": 1}


async def test_open_mode_accepts_any_token_and_never_echoes_it(make_sim: SimFactory) -> None:
    sim = await make_sim(keys={})
    task_id = await sim.created(key="whatever-SECRET-token")
    assert (await sim.query(task_id, key="whatever-SECRET-token")).status_code == 200
    # A different token is a different team.
    assert (await sim.query(task_id, key="other-SECRET-token")).status_code == 404
    for path in ("/_sim/stats", "/_sim/tasks", "/_sim/config"):
        assert "SECRET" not in (await sim.client.get(path)).text


# --------------------------------------------------------------------------------------
# submit
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [SUBMIT, MODEL_PATH])
async def test_submit_success_shape_on_both_paths(sim: Sim, path: str) -> None:
    response = await sim.submit(payload(), path=path)
    assert response.status_code == 200
    assert_rate_headers(response)
    body = response.json()
    task_id = body["data"]["task_id"]
    assert re.fullmatch(r"task-[0-9a-f]+", task_id)
    assert body == {
        "code": 0,
        "message": "success",
        "data": {
            "status": "pending",
            "task_id": task_id,
            "model_id": "minimax-image-01-live-i2i",
            "get_result": {"method": "GET", "url": f"{BASE_URL}/api/v1/tasks/{task_id}"},
        },
    }
    tasks = (await sim.client.get("/_sim/tasks")).json()["tasks"]
    assert [(t["task_id"], t["team"], t["prompt"], t["n"]) for t in tasks] == [
        (task_id, "team-a", "a cat in a hat", 1)
    ]


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/minimax/minimax-image-01-i2i/async",
        "/api/v1/openai/dall-e-3",
        "/api/v1/tasks/whatever",
    ],
)
async def test_unknown_model_is_404(sim: Sim, path: str) -> None:
    response = await sim.submit(payload(), path=path)
    assert response.status_code == 404
    assert response.json()["message"].startswith("Resource not found: ")
    assert_rate_headers(response)
    assert (await sim.stats())["submits_rejected"] == {"not_found": 1}


async def test_unknown_route_uses_error_envelope(sim: Sim) -> None:
    response = await sim.client.get("/api/v1/nothing/here/at/all")
    assert response.status_code == 404
    assert response.json()["code"] == 404
    assert response.json()["message"].startswith("Resource not found: ")


def _items(count: int) -> list[str]:
    return [HTTPS_REF] * count


GIF_BYTES = b"GIF89a" + b"\x00" * 32
VALIDATION_CASES: list[tuple[Any, int, str]] = [
    (b"{not json", 400, "Invalid format: invalid JSON format"),
    (b"", 400, "Invalid format: invalid JSON format"),
    ([1, 2], 400, "Invalid format: request body must be a JSON object"),
    (
        {"subject_reference_images": [HTTPS_REF]},
        400,
        "Invalid parameters: parameter 'prompt' is required",
    ),
    (payload(prompt=None), 400, "Invalid parameters: parameter 'prompt' is required"),
    (payload(prompt=42), 400, "Invalid parameters: parameter 'prompt' must be a string"),
    (
        payload(prompt=""),
        400,
        "Value out of range: parameter 'prompt' length must be between 1 and 1500, got 0",
    ),
    (
        payload(prompt="x" * 1501),
        400,
        "Value out of range: parameter 'prompt' length must be between 1 and 1500, got 1501",
    ),
    (
        {"prompt": "p"},
        400,
        "Invalid parameters: parameter 'subject_reference_images' is required",
    ),
    (
        payload(subject_reference_images=HTTPS_REF),
        400,
        "Invalid parameters: parameter 'subject_reference_images' must be an array of strings",
    ),
    (
        payload(subject_reference_images=[]),
        400,
        "Value out of range: parameter 'subject_reference_images' must contain between 1 and 10"
        " items, got 0",
    ),
    (
        payload(subject_reference_images=_items(11)),
        400,
        "Value out of range: parameter 'subject_reference_images' must contain between 1 and 10"
        " items, got 11",
    ),
    (
        payload(subject_reference_images=[7]),
        400,
        "Invalid parameters: parameter 'subject_reference_images[0]' must be a string",
    ),
    (
        payload(subject_reference_images=["http://img.example.test/a.jpg"]),
        400,
        "Invalid parameters: parameter 'subject_reference_images[0]' must be an https URL or a"
        " base64 data URL",
    ),
    (
        payload(subject_reference_images=[HTTPS_REF, "ftp://img.example.test/a.jpg"]),
        400,
        "Invalid parameters: parameter 'subject_reference_images[1]' must be an https URL or a"
        " base64 data URL",
    ),
    (
        payload(subject_reference_images=["https://"]),
        400,
        "Invalid parameters: parameter 'subject_reference_images[0]' must be an https URL or a"
        " base64 data URL",
    ),
    (
        payload(subject_reference_images=["data:image/gif;base64,R0lGODlh"]),
        400,
        "Invalid parameters: parameter 'subject_reference_images[0]' must be a JPG/JPEG/PNG"
        " image, got image/gif",
    ),
    (
        payload(subject_reference_images=["data:text/plain;base64,aGVsbG8="]),
        400,
        "Invalid parameters: parameter 'subject_reference_images[0]' must be a data URL of a"
        " JPG/JPEG/PNG image",
    ),
    (
        payload(subject_reference_images=["data:image/png;base64,@@@not-base64@@@"]),
        400,
        "Invalid format: parameter 'subject_reference_images[0]' is not valid base64",
    ),
    (
        payload(
            subject_reference_images=[
                "data:image/png;base64," + base64.b64encode(GIF_BYTES).decode()
            ]
        ),
        400,
        "Invalid parameters: parameter 'subject_reference_images[0]' is not a valid JPG/JPEG/PNG"
        " image",
    ),
    (
        payload(subject_reference_images=["data:image/png;base64," + "A" * 13_981_016]),
        400,
        "Value out of range: parameter 'subject_reference_images[0]' must be under 10MB,"
        " got 10485762 bytes",
    ),
    (
        payload(aspect_ratio="5:4"),
        400,
        "Invalid parameters: parameter 'aspect_ratio' must be one of 1:1, 16:9, 4:3, 3:2, 2:3,"
        " 3:4, 9:16, 21:9, got '5:4'",
    ),
    (
        payload(aspect_ratio=1),
        400,
        "Invalid parameters: parameter 'aspect_ratio' must be one of 1:1, 16:9, 4:3, 3:2, 2:3,"
        " 3:4, 9:16, 21:9, got '1'",
    ),
    (
        payload(width=1024),
        400,
        "Invalid parameters: parameter 'height' is required when 'width' is given",
    ),
    (
        payload(height=1024),
        400,
        "Invalid parameters: parameter 'width' is required when 'height' is given",
    ),
    (
        payload(width=504, height=1024),
        400,
        "Value out of range: parameter 'width' must be between 512 and 2048, got 504",
    ),
    (
        payload(width=1024, height=2056),
        400,
        "Value out of range: parameter 'height' must be between 512 and 2048, got 2056",
    ),
    (
        payload(width=1001, height=1024),
        400,
        "Invalid parameters: parameter 'width' must be divisible by 8, got 1001",
    ),
    (
        payload(width=1024, height=1020),
        400,
        "Invalid parameters: parameter 'height' must be divisible by 8, got 1020",
    ),
    (
        payload(width="1024", height=1024),
        400,
        "Invalid parameters: parameter 'width' must be an integer",
    ),
    (
        payload(seed=-1),
        400,
        "Value out of range: parameter 'seed' must be greater than or equal to 0, got -1",
    ),
    (payload(seed=1.5), 400, "Invalid parameters: parameter 'seed' must be an integer"),
    (payload(n=12), 400, "Value out of range: parameter 'n' must be between 1 and 9, got 12"),
    (payload(n=0), 400, "Value out of range: parameter 'n' must be between 1 and 9, got 0"),
    (payload(n=True), 400, "Invalid parameters: parameter 'n' must be an integer"),
    (
        payload(prompt_optimizer="yes"),
        400,
        "Invalid parameters: parameter 'prompt_optimizer' must be a boolean",
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    VALIDATION_CASES,
    ids=[f"case{i}" for i in range(len(VALIDATION_CASES))],
)
async def test_validation_messages(sim: Sim, body: Any, status: int, message: str) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await sim.client.post(
        SUBMIT,
        content=content,
        headers={**auth(KEY_A), "Content-Type": "application/json"},
    )
    assert_error(response, status, message)
    assert_rate_headers(response)
    stats = await sim.stats()
    assert stats["submits_accepted"] == 0
    assert sum(stats["submits_rejected"].values()) == 1
    assert (await sim.client.get("/_sim/tasks")).json()["tasks"] == []


@pytest.mark.parametrize(
    "body",
    [
        payload(prompt="x" * 1500),
        payload(prompt="赛博朋克风格的肖像"),
        payload(subject_reference_images=_items(10)),
        payload(subject_reference_images=[png_data_url(), jpeg_data_url()]),
        payload(subject_reference_images=[png_data_url().replace("image/png", "image/jpg")]),
        payload(seed=0, n=9, prompt_optimizer=True),
        payload(aspect_ratio="16:9", width=13),
        payload(unknown_field={"ignored": True}, steps=1000),
        payload(aspect_ratio=None, width=None, height=None, seed=None, n=None),
    ],
)
async def test_valid_bodies_are_accepted(sim: Sim, body: dict[str, Any]) -> None:
    response = await sim.submit(body)
    assert response.status_code == 200, response.text
    assert (await sim.stats())["submits_accepted"] == 1


# --------------------------------------------------------------------------------------
# lifecycle and results
# --------------------------------------------------------------------------------------


async def test_lifecycle_pending_processing_success(sim: Sim) -> None:
    task_id = await sim.created(payload(n=3, aspect_ratio="16:9"))
    expected_head = {"task_id": task_id, "model_id": "minimax-image-01-live-i2i"}

    pending = await sim.query(task_id)
    assert pending.json() == {
        "code": 0,
        "message": "success",
        "data": {"status": "pending", **expected_head},
    }
    assert (await sim.client.get(f"/files/{task_id}/0.png")).status_code == 404

    sim.clock.advance(0.5)
    processing = await sim.query(task_id)
    assert processing.json()["data"] == {"status": "processing", **expected_head}

    sim.clock.advance(2.4999)
    assert (await sim.query(task_id)).json()["data"]["status"] == "processing"
    sim.clock.advance(0.0001)
    done = await sim.query(task_id)
    assert done.status_code == 200
    data = done.json()["data"]
    end = T0 + 3.0
    assert data == {
        "status": "success",
        **expected_head,
        "duration": 3000,
        "result": {
            "resources": [
                {
                    "url": f"{BASE_URL}/files/{task_id}/{index}.png",
                    "type": "image",
                    "width": 1280,
                    "height": 720,
                    "format": "png",
                    "role": "primary",
                }
                for index in range(3)
            ],
            "metadata": {"image_count": 3, "request_id": data["result"]["metadata"]["request_id"]},
            "extensions": {
                "submit_time": "2023-11-14T22:13:20Z",
                "end_time": "2023-11-14T22:13:23Z",
            },
        },
        "billing": {"status": "succeeded", "amount": "0.1050"},
        "result_expires_at": int((end + 7 * 24 * 3600) * 1000),
    }
    assert data["result"]["metadata"]["request_id"].startswith("req-")
    stats = await sim.stats()
    assert stats["polls"] == 4
    assert stats["polls_by_status"] == {"pending": 1, "processing": 2, "success": 1}


async def test_zero_timings_finish_at_once(make_sim: SimFactory) -> None:
    sim = await make_sim(pending_seconds=0, processing_seconds=0)
    task_id = await sim.created()
    data = (await sim.query(task_id)).json()["data"]
    assert data["status"] == "success"
    assert data["duration"] == 0


@pytest.mark.parametrize(
    ("fields", "size"),
    [
        ({}, (1024, 1024)),
        ({"aspect_ratio": "1:1"}, (1024, 1024)),
        ({"aspect_ratio": "16:9"}, (1280, 720)),
        ({"aspect_ratio": "4:3"}, (1152, 864)),
        ({"aspect_ratio": "3:2"}, (1248, 832)),
        ({"aspect_ratio": "2:3"}, (832, 1248)),
        ({"aspect_ratio": "3:4"}, (864, 1152)),
        ({"aspect_ratio": "9:16"}, (720, 1280)),
        ({"aspect_ratio": "21:9"}, (1344, 576)),
        ({"width": 512, "height": 2048}, (512, 2048)),
        ({"aspect_ratio": "3:4", "width": 1024, "height": 1024}, (864, 1152)),
    ],
)
async def test_image_sizes(sim: Sim, fields: dict[str, Any], size: tuple[int, int]) -> None:
    task_id = await sim.created(payload(**fields))
    data = await finish(sim, task_id)
    (resource,) = data["result"]["resources"]
    assert (resource["width"], resource["height"]) == size
    with Image.open(io.BytesIO(await download(sim, resource["url"]))) as image:
        assert image.format == "PNG"
        assert image.size == size


async def test_n_images_differ_and_seed_is_reproducible(sim: Sim) -> None:
    first = await finish(sim, await sim.created(payload(n=3, seed=7)))
    again = await finish(sim, await sim.created(payload(n=3, seed=7)))
    other = await finish(sim, await sim.created(payload(n=3, seed=8)))

    async def pngs(data: dict[str, Any]) -> list[bytes]:
        return [await download(sim, r["url"]) for r in data["result"]["resources"]]

    first_pngs, again_pngs, other_pngs = await pngs(first), await pngs(again), await pngs(other)
    assert len(set(first_pngs)) == 3
    assert first_pngs == again_pngs
    assert not set(first_pngs) & set(other_pngs)
    for blob in first_pngs:
        with Image.open(io.BytesIO(blob)) as image:
            assert image.size == (1024, 1024)
    assert (await sim.stats())["file_downloads"] == 9


async def test_data_url_reference_drives_the_image(sim: Sim) -> None:
    red = await finish(
        sim, await sim.created(payload(seed=1, subject_reference_images=[png_data_url()]))
    )
    url = await finish(sim, await sim.created(payload(seed=1)))
    red_png = await download(sim, red["result"]["resources"][0]["url"])
    url_png = await download(sim, url["result"]["resources"][0]["url"])
    assert red_png != url_png
    with Image.open(io.BytesIO(red_png)) as image:
        # The centre keeps the reference's red, tinted but still dominant.
        r, g, b = image.convert("RGB").getpixel((512, 300))  # type: ignore[misc]
        assert r > g
        assert r > b


async def test_images_are_rendered_once_and_cached(sim: Sim) -> None:
    data = await finish(sim, await sim.created())
    url = data["result"]["resources"][0]["url"]
    assert await download(sim, url) == await download(sim, url)
    assert sim.app.sim.images.renders == 1


async def test_stock_images_are_one_file_per_size_for_every_task(make_sim: SimFactory) -> None:
    sim = await make_sim(images="stock")
    first = await finish(sim, await sim.created(payload(prompt="one")))
    second = await finish(sim, await sim.created(payload(prompt="another")))
    urls = [d["result"]["resources"][0]["url"] for d in (first, second)]
    assert urls[0] != urls[1]  # each task has its own file...
    assert await download(sim, urls[0]) == await download(sim, urls[1])  # ...of one image
    assert sim.app.sim.images.renders == 1
    assert SimConfig.from_env({"SIM_IMAGES": "stock"}).images == "stock"
    with pytest.raises(ValueError, match="images"):
        SimConfig.from_env({"SIM_IMAGES": "sometimes"})


async def test_file_404_for_unknown_and_out_of_range(sim: Sim) -> None:
    task_id = await sim.created(payload(n=2))
    await finish(sim, task_id)
    assert (await sim.client.get(f"/files/{task_id}/1.png")).status_code == 200
    assert (await sim.client.get(f"/files/{task_id}/2.png")).status_code == 404
    assert (await sim.client.get("/files/task-nope/0.png")).status_code == 404


async def test_expiry_returns_404_for_query_and_files(make_sim: SimFactory) -> None:
    sim = await make_sim(result_ttl_seconds=100.0)
    task_id = await sim.created()
    data = await finish(sim, task_id)
    assert data["result_expires_at"] == int((T0 + 3.0 + 100.0) * 1000)
    file_path = data["result"]["resources"][0]["url"].removeprefix(BASE_URL)
    sim.clock.now = T0 + 3.0 + 99.9
    assert (await sim.query(task_id)).status_code == 200
    assert (await sim.client.get(file_path)).status_code == 200
    sim.clock.now = T0 + 3.0 + 100.0
    assert_error(await sim.query(task_id), 404, f"Resource not found: task '{task_id}' not found")
    assert (await sim.client.get(file_path)).status_code == 404


async def test_expired_tasks_are_purged_on_submit(make_sim: SimFactory) -> None:
    sim = await make_sim(result_ttl_seconds=10.0, concurrency_limit=0)
    await sim.created()
    sim.clock.advance(20.0)
    fresh = await sim.created()
    tasks = (await sim.client.get("/_sim/tasks")).json()["tasks"]
    assert [t["task_id"] for t in tasks] == [fresh]


async def test_team_scoping(sim: Sim) -> None:
    task_id = await sim.created(key=KEY_A)
    assert (await sim.query(task_id, key=KEY_A2)).status_code == 200
    response = await sim.query(task_id, key=KEY_B)
    assert_error(response, 404, f"Resource not found: task '{task_id}' not found")
    assert_error(
        await sim.query("task-doesnotexist", key=KEY_A),
        404,
        "Resource not found: task 'task-doesnotexist' not found",
    )


# --------------------------------------------------------------------------------------
# limits
# --------------------------------------------------------------------------------------


async def test_concurrency_limit(make_sim: SimFactory) -> None:
    sim = await make_sim(concurrency_limit=2)
    await sim.created(key=KEY_A)
    sim.clock.advance(1.0)
    await sim.created(key=KEY_A2)  # same team, shared quota
    response = await sim.submit(payload(), key=KEY_A)
    assert_error(
        response,
        429,
        "Concurrent limit exceeded: 2 tasks pending or processing, team limit is 2",
    )
    assert response.headers["Retry-After"] == "2"  # first task ends at T0 + 3
    assert_rate_headers(response)
    assert (await sim.submit(payload(), key=KEY_B)).status_code == 200  # other team unaffected

    stats = await sim.stats()
    assert stats["max_concurrency"] == 2
    assert stats["concurrency_now"] == {"team-a": 2, "team-b": 1}
    assert stats["submits_rejected"] == {"concurrency_limit": 1}

    sim.clock.now = T0 + 3.0  # the first task of team-a is done
    assert (await sim.submit(payload(), key=KEY_A)).status_code == 200
    assert (
        len((await sim.client.get("/_sim/tasks", params={"team": "team-a"})).json()["tasks"]) == 3
    )


async def test_concurrency_counts_failed_tasks_until_they_end(make_sim: SimFactory) -> None:
    sim = await make_sim(concurrency_limit=1, faults=Faults(fail_task=1.0))
    await sim.created()
    assert (await sim.submit(payload())).status_code == 429
    sim.clock.advance(3.0)
    assert (await sim.submit(payload())).status_code == 200


async def test_rpm_limit_with_headers(make_sim: SimFactory) -> None:
    sim = await make_sim(rpm_limit=3, concurrency_limit=0)
    task_id = await sim.created()
    sim.clock.advance(10.0)
    second = await sim.query(task_id)
    assert second.headers["X-RateLimit-Limit"] == "3"
    assert second.headers["X-RateLimit-Remaining"] == "1"
    assert second.headers["X-RateLimit-Reset"] == str(math.ceil(T0 + 60))
    third = await sim.submit(payload())
    assert third.headers["X-RateLimit-Remaining"] == "0"

    sim.clock.advance(5.0)
    limited = await sim.submit(payload())
    assert limited.status_code == 429
    assert limited.json() == {
        "code": 429,
        "message": "Rate limit exceeded: more than 3 requests per minute, retry later",
    }
    assert limited.headers["Retry-After"] == "45"
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    poll_limited = await sim.query(task_id)
    assert poll_limited.status_code == 429
    assert (await sim.submit(payload(), key=KEY_B)).status_code == 200  # per-team window

    sim.clock.now = T0 + 60.0  # the first request leaves the window
    assert (await sim.submit(payload())).status_code == 200
    stats = await sim.stats()
    assert stats["submits_rejected"] == {"rate_limit": 1}
    assert stats["polls_by_status"]["rate_limit"] == 1
    assert stats["submits_accepted"] == 4


async def test_invalid_requests_do_not_use_the_rate_window(make_sim: SimFactory) -> None:
    sim = await make_sim(rpm_limit=1)
    assert (await sim.submit(payload(n=99))).status_code == 400
    assert (await sim.submit(payload())).status_code == 200


# --------------------------------------------------------------------------------------
# faults and runtime config
# --------------------------------------------------------------------------------------


async def test_runtime_config_changes_faults(sim: Sim) -> None:
    response = await sim.configure(faults={"submit_503": 1.0})
    assert response.status_code == 200
    assert response.json()["faults"]["submit_503"] == 1.0
    assert_error(
        await sim.submit(payload()),
        503,
        "Service unavailable: the service is temporarily unavailable, retry later",
    )
    # Top-level fault names work too.
    await sim.configure(submit_503=0, submit_500=1)
    assert_error(
        await sim.submit(payload()), 500, "Internal server error: an unexpected error occurred"
    )
    await sim.configure(submit_500=0, concurrency_limit=7)
    assert (await sim.submit(payload())).status_code == 200

    config = (await sim.client.get("/_sim/config")).json()
    assert config["concurrency_limit"] == 7
    assert config["faults"]["submit_500"] == 0.0
    assert config["teams"] == ["team-a", "team-b"]
    assert "SECRET" not in json.dumps(config)
    stats = await sim.stats()
    assert stats["submits_rejected"] == {"fault_503": 1, "fault_500": 1}
    assert stats["faults_injected"] == {"submit_503": 1, "submit_500": 1}
    assert stats["submits_accepted"] == 1


@pytest.mark.parametrize(
    "changes",
    [
        {"faults": {"submit_500": 1.5}},
        {"fail_task": -0.1},
        {"rpm_limit": "many"},
        {"concurrency_limit": True},
        {"no_such_knob": 1},
        {"faults": {"no_such_fault": 1}},
        {"public_base_url": "ftp://x"},
        {"price_per_image": "cheap"},
        {"balance": "lots"},
        {"balance": -1},
        {"balance": True},
        {"balance": "NaN"},
        {"submit_400": 2},
    ],
)
async def test_runtime_config_rejects_bad_values(sim: Sim, changes: dict[str, Any]) -> None:
    before = (await sim.client.get("/_sim/config")).json()
    response = await sim.configure(**changes)
    assert response.status_code == 400
    assert response.json()["message"].startswith("Invalid parameters: ")
    assert (await sim.client.get("/_sim/config")).json() == before


async def test_runtime_config_keys_and_timing(sim: Sim) -> None:
    response = await sim.configure(
        keys={"new-SECRET": "team-z"}, pending_seconds=0, processing_seconds=0
    )
    assert response.status_code == 200
    assert response.json()["teams"] == ["team-z"]
    assert (await sim.submit(payload(), key=KEY_A)).status_code == 401
    task_id = await sim.created(key="new-SECRET")
    assert (await sim.query(task_id, key="new-SECRET")).json()["data"]["status"] == "success"


async def test_query_faults(sim: Sim) -> None:
    task_id = await sim.created()
    await sim.configure(query_500=1.0)
    assert (await sim.query(task_id)).status_code == 500
    await sim.configure(query_500=0.0, query_503=1.0)
    assert (await sim.query(task_id)).status_code == 503
    await sim.configure(query_503=0.0)
    assert (await sim.query(task_id)).status_code == 200
    assert (await sim.stats())["polls_by_status"] == {"fault_500": 1, "fault_503": 1, "pending": 1}


async def test_rate_burst_fault(sim: Sim) -> None:
    await sim.configure(rate_burst_429=1.0)
    response = await sim.submit(payload())
    assert_error(response, 429, "Rate limit exceeded: too many requests, retry later")
    assert response.headers["Retry-After"] == "1"
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert (await sim.client.get("/_sim/tasks")).json()["tasks"] == []


async def test_fail_task_payload(make_sim: SimFactory) -> None:
    sim = await make_sim(faults=Faults(fail_task=1.0))
    task_id = await sim.created(payload(n=2))
    assert (await sim.query(task_id)).json()["data"]["status"] == "pending"
    sim.clock.advance(3.0)
    body = (await sim.query(task_id)).json()
    assert body["code"] == 0
    data = body["data"]
    assert set(data) == {"status", "task_id", "model_id", "error"}
    assert data["status"] == "failed"
    assert data["task_id"] == task_id
    assert isinstance(data["error"], str)
    assert data["error"]
    assert (await sim.client.get(f"/files/{task_id}/0.png")).status_code == 404
    assert (await sim.stats())["polls_by_status"] == {"pending": 1, "failed": 1}


async def test_malformed_json_creates_the_task(sim: Sim) -> None:
    await sim.configure(malformed_json=1.0)
    response = await sim.submit(payload(prompt="ambiguous one"))
    assert response.status_code == 200
    with pytest.raises(ValueError):  # noqa: PT011 - json.JSONDecodeError is a ValueError
        json.loads(response.content)
    tasks = (await sim.client.get("/_sim/tasks")).json()["tasks"]
    assert [t["prompt"] for t in tasks] == ["ambiguous one"]
    task_id = tasks[0]["task_id"]
    poll = await sim.query(task_id)
    assert poll.status_code == 200
    with pytest.raises(ValueError):  # noqa: PT011
        json.loads(poll.content)
    assert (await sim.stats())["faults_injected"] == {"malformed_json": 2}


async def test_drop_after_create_closes_without_response(sim: Sim) -> None:
    await sim.configure(drop_after_create=1.0)
    body = json.dumps(payload(prompt="dropped")).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": SUBMIT,
        "raw_path": SUBMIT.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"authorization", f"Bearer {KEY_A}".encode()),
            (b"content-type", b"application/json"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8900),
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    result = await sim.app(scope, receive, send)  # type: ignore[func-returns-value]
    assert result == DROPPED  # uvicorn closes the socket on a non-None return
    assert sent == []
    tasks = (await sim.client.get("/_sim/tasks")).json()["tasks"]
    assert [t["prompt"] for t in tasks] == ["dropped"]
    assert (await sim.stats())["faults_injected"] == {"drop_after_create": 1}


async def test_hang_happens_after_the_task_is_created(sim: Sim) -> None:
    await sim.configure(hang_probability=1.0, hang_seconds=30.0, latency_ms=250)
    seen: list[int] = []
    store = sim.app.sim.store

    async def recording_sleep(seconds: float) -> None:
        sim.sleeps.append(seconds)
        seen.append(len(store.tasks))

    sim.app.sim.sleep = recording_sleep
    assert (await sim.submit(payload())).status_code == 200
    assert sim.sleeps == [30.25]
    assert seen == [1]


async def test_latency_applies_to_errors_too(sim: Sim) -> None:
    await sim.configure(latency_ms=120)
    assert (await sim.submit(payload(n=0))).status_code == 400
    assert sim.sleeps == [pytest.approx(0.12)]


async def test_fault_seed_makes_runs_reproducible(make_sim: SimFactory) -> None:
    async def outcomes() -> list[int]:
        sim = await make_sim(concurrency_limit=0, rpm_limit=0)
        await sim.configure(faults={"submit_503": 0.5, "seed": 1234})
        return [(await sim.submit(payload())).status_code for _ in range(20)]

    first, second = await outcomes(), await outcomes()
    assert first == second
    assert {200, 503} == set(first)


async def test_unlimited_rpm_headers(make_sim: SimFactory) -> None:
    sim = await make_sim(rpm_limit=0, concurrency_limit=0)
    for _ in range(150):
        response = await sim.submit(payload())
        assert response.status_code == 200
    assert int(response.headers["X-RateLimit-Remaining"]) > 0


async def test_submit_400_fault(make_sim: SimFactory) -> None:
    sim = await make_sim(rpm_limit=1, faults=Faults(submit_400=1.0))
    response = await sim.submit(payload())
    assert_error(
        response,
        400,
        "Invalid parameters: parameter 'prompt' was rejected by content moderation",
    )
    assert_rate_headers(response)
    assert (await sim.client.get("/_sim/tasks")).json()["tasks"] == []
    # Validation comes first: a bad body gets its own 400 and draws no fault.
    assert_error(
        await sim.submit(payload(n=0)),
        400,
        "Value out of range: parameter 'n' must be between 1 and 9, got 0",
    )
    stats = await sim.stats()
    assert stats["submits_rejected"] == {"fault_400": 1, "invalid": 1}
    assert stats["faults_injected"] == {"submit_400": 1}
    assert stats["submits_accepted"] == 0
    # The fault comes before the rate window: with rpm_limit=1 the next submit still passes.
    await sim.configure(submit_400=0)
    assert (await sim.submit(payload())).status_code == 200


async def test_submit_400_fault_precedes_concurrency_and_balance(make_sim: SimFactory) -> None:
    sim = await make_sim(concurrency_limit=1, balance="0.0350")
    await sim.created()
    assert (await sim.submit(payload())).status_code == 429
    await sim.configure(submit_400=1.0)
    assert (await sim.submit(payload())).status_code == 400
    await sim.configure(submit_400=0.0, concurrency_limit=0)
    assert (await sim.submit(payload())).status_code == 402
    await sim.configure(submit_400=1.0)
    assert (await sim.submit(payload())).status_code == 400
    assert (await sim.stats())["submits_rejected"] == {
        "concurrency_limit": 1,
        "fault_400": 2,
        "insufficient_balance": 1,
    }


async def test_submit_400_fault_is_seeded(make_sim: SimFactory) -> None:
    async def outcomes() -> list[int]:
        sim = await make_sim(concurrency_limit=0, rpm_limit=0)
        await sim.configure(faults={"submit_400": 0.5, "seed": 99})
        return [(await sim.submit(payload())).status_code for _ in range(20)]

    first, second = await outcomes(), await outcomes()
    assert first == second
    assert {200, 400} == set(first)


# --------------------------------------------------------------------------------------
# balance
# --------------------------------------------------------------------------------------


async def test_balance_is_reserved_at_submit_and_402_when_short(make_sim: SimFactory) -> None:
    sim = await make_sim(balance="0.0700", concurrency_limit=0)
    first = await sim.created(key=KEY_A)
    assert (await sim.stats())["balance_remaining"] == {"team-a": "0.0350", "team-b": "0.0700"}

    short = await sim.submit(payload(n=2), key=KEY_A)
    assert_error(
        short,
        402,
        "Insufficient balance: remaining balance 0.0350 is less than 0.0700 for 2 images",
    )
    assert_rate_headers(short)
    second = await sim.created(key=KEY_A2)  # same team, shared balance; first still pending
    assert_error(
        await sim.submit(payload(), key=KEY_A),
        402,
        "Insufficient balance: remaining balance 0.0000 is less than 0.0350 for 1 image",
    )
    assert (await sim.submit(payload(n=2), key=KEY_B)).status_code == 200  # own balance

    stats = await sim.stats()
    assert stats["balance_remaining"] == {"team-a": "0.0000", "team-b": "0.0000"}
    assert stats["submits_rejected"] == {"insufficient_balance": 2}
    assert stats["submits_accepted"] == 3
    team_a = (await sim.client.get("/_sim/tasks", params={"team": "team-a"})).json()["tasks"]
    assert [t["task_id"] for t in team_a] == [first, second]

    # Success does not charge again: billing reports the reserved amount.
    for task_id in (first, second):
        assert (await finish(sim, task_id))["billing"] == {
            "status": "succeeded",
            "amount": "0.0350",
        }
    assert (await sim.stats())["balance_remaining"]["team-a"] == "0.0000"
    assert (await sim.submit(payload())).status_code == 402


async def test_exact_balance_is_enough(make_sim: SimFactory) -> None:
    sim = await make_sim(balance="0.1050", concurrency_limit=0)
    assert (await sim.submit(payload(n=3))).status_code == 200
    assert (await sim.stats())["balance_remaining"]["team-a"] == "0.0000"


async def test_billing_reports_the_amount_reserved_at_submit(make_sim: SimFactory) -> None:
    sim = await make_sim(balance="1.0000", concurrency_limit=0)
    task_id = await sim.created(payload(n=2))
    await sim.configure(price_per_image="0.5")
    data = await finish(sim, task_id)
    assert data["billing"] == {"status": "succeeded", "amount": "0.0700"}
    assert (await sim.stats())["balance_remaining"]["team-a"] == "0.9300"
    assert_error(
        await sim.submit(payload(n=2)),
        402,
        "Insufficient balance: remaining balance 0.9300 is less than 1.0000 for 2 images",
    )


async def test_failed_task_is_refunded_when_it_ends(make_sim: SimFactory) -> None:
    sim = await make_sim(balance="0.0350", faults=Faults(fail_task=1.0))
    task_id = await sim.created()
    sim.clock.advance(2.999)  # still processing: the cost stays reserved
    assert (await sim.submit(payload())).status_code == 402
    assert (await sim.stats())["balance_remaining"]["team-a"] == "0.0000"

    sim.clock.advance(0.001)
    data = (await sim.query(task_id)).json()["data"]
    assert data["status"] == "failed"
    assert set(data) == {"status", "task_id", "model_id", "error"}  # no billing: refunded
    assert (await sim.stats())["balance_remaining"]["team-a"] == "0.0350"
    await sim.configure(fail_task=0.0)
    ok = await sim.created()
    assert (await finish(sim, ok))["billing"]["amount"] == "0.0350"
    assert (await sim.stats())["balance_remaining"]["team-a"] == "0.0000"


async def test_rate_and_concurrency_checks_come_before_balance(make_sim: SimFactory) -> None:
    sim = await make_sim(balance="0.0350", concurrency_limit=1, rpm_limit=3)
    await sim.created()
    assert_error(
        await sim.submit(payload()),
        429,
        "Concurrent limit exceeded: 1 tasks pending or processing, team limit is 1",
    )
    sim.clock.advance(3.0)
    assert (await sim.submit(payload())).status_code == 402
    assert (await sim.submit(payload())).status_code == 429  # fourth request this minute
    assert (await sim.submit(payload(n=0))).status_code == 400  # validation first
    assert (await sim.stats())["submits_rejected"] == {
        "concurrency_limit": 1,
        "insufficient_balance": 1,
        "rate_limit": 1,
        "invalid": 1,
    }


async def test_concurrent_submits_cannot_overdraw(make_sim: SimFactory) -> None:
    sim = await make_sim(balance="0.1050", concurrency_limit=0, rpm_limit=0)
    await sim.configure(latency_ms=10)
    gate = asyncio.Event()
    waiting: list[float] = []

    async def barrier_sleep(seconds: float) -> None:
        # Every response is held here until all five submits are in flight at once.
        waiting.append(seconds)
        if len(waiting) == 5:
            gate.set()
        await gate.wait()

    sim.app.sim.sleep = barrier_sleep
    responses = await asyncio.gather(*(sim.submit(payload()) for _ in range(5)))
    assert len(waiting) == 5
    assert sorted(r.status_code for r in responses) == [200, 200, 200, 402, 402]
    stats = await sim.stats()
    assert stats["balance_remaining"]["team-a"] == "0.0000"
    assert stats["tasks_total"] == 3


async def test_balance_set_at_runtime_and_restored_by_reset(sim: Sim) -> None:
    await sim.created()
    stats = await sim.stats()
    assert "balance_remaining" not in stats
    assert "insufficient_balance" not in stats["submits_rejected"]

    response = await sim.configure(balance=0.07)
    assert response.status_code == 200
    assert response.json()["balance"] == "0.0700"
    # Setting the balance restarts every ledger: earlier spending no longer counts.
    assert (await sim.stats())["balance_remaining"] == {"team-a": "0.0700", "team-b": "0.0700"}
    await sim.created(payload(n=2))
    assert (await sim.submit(payload())).status_code == 402

    assert (await sim.client.post("/_sim/reset")).status_code == 200
    assert (await sim.client.get("/_sim/config")).json()["balance"] == "0.0700"
    stats = await sim.stats()
    assert stats["balance_remaining"] == {"team-a": "0.0700", "team-b": "0.0700"}
    assert stats["submits_rejected"] == {}
    await sim.created(payload(n=2))
    assert (await sim.submit(payload())).status_code == 402

    await sim.configure(balance="0.0350")
    assert (await sim.stats())["balance_remaining"]["team-a"] == "0.0350"
    await sim.created()

    response = await sim.configure(balance=None)
    assert response.json()["balance"] is None
    assert (await sim.submit(payload(n=9))).status_code == 200
    assert "balance_remaining" not in await sim.stats()


async def test_balance_in_open_mode_lists_seen_teams(make_sim: SimFactory) -> None:
    sim = await make_sim(keys={}, balance="0.0350")
    assert (await sim.stats())["balance_remaining"] == {}
    await sim.created(key="token-one")
    assert_error(
        await sim.submit(payload(), key="token-one"),
        402,
        "Insufficient balance: remaining balance 0.0000 is less than 0.0350 for 1 image",
    )
    assert (await sim.submit(payload(), key="token-two")).status_code == 200
    assert sorted((await sim.stats())["balance_remaining"].values()) == ["0.0000", "0.0000"]


# --------------------------------------------------------------------------------------
# /_sim
# --------------------------------------------------------------------------------------


async def test_health_and_reset(sim: Sim) -> None:
    health = await sim.client.get("/_sim/health")
    assert health.json() == {"ok": True}
    assert "X-RateLimit-Limit" not in health.headers
    await sim.created()
    await sim.submit(payload(n=50))
    assert (await sim.stats())["tasks_total"] == 1
    assert (await sim.client.post("/_sim/reset")).status_code == 200
    stats = await sim.stats()
    assert stats == {
        "submits_accepted": 0,
        "submits_rejected": {},
        "polls": 0,
        "polls_by_status": {},
        "file_downloads": 0,
        "max_concurrency": 0,
        "concurrency_now": {},
        "tasks_total": 0,
        "faults_injected": {},
    }
    assert (await sim.client.get("/_sim/tasks")).json()["tasks"] == []


async def test_tasks_listing_reports_status(sim: Sim) -> None:
    task_id = await sim.created(payload(prompt="listed", n=4))
    sim.clock.advance(1.0)
    (row,) = (await sim.client.get("/_sim/tasks")).json()["tasks"]
    assert row == {
        "task_id": task_id,
        "team": "team-a",
        "prompt": "listed",
        "n": 4,
        "status": "processing",
        "created_at": T0,
        "processing_at": T0 + 0.5,
        "ends_at": T0 + 3.0,
        "duration_seconds": 3.0,
    }


def test_config_from_env() -> None:
    config = SimConfig.from_env(
        {
            "SIM_KEYS": "k1=team1, k2=team1,k3=team3",
            "SIM_CONCURRENCY": "5",
            "SIM_RPM": "0",
            "SIM_PENDING_SECONDS": "0",
            "SIM_PROCESSING_SECONDS": "1.5",
            "SIM_RESULT_TTL_SECONDS": "60",
            "SIM_PUBLIC_BASE_URL": "http://sim:9000/",
            "SIM_PRICE_PER_IMAGE": "0.05",
            "SIM_FAULT_SUBMIT_503": "0.25",
            "SIM_FAULT_LATENCY_MS": "15",
            "SIM_FAULT_SEED": "9",
            "SIM_BALANCE": "0.07",
            "SIM_FAULT_SUBMIT_400": "0.125",
        }
    )
    assert config.keys == {"k1": "team1", "k2": "team1", "k3": "team3"}
    assert (config.concurrency_limit, config.rpm_limit) == (5, 0)
    assert (config.pending_seconds, config.processing_seconds) == (0.0, 1.5)
    assert config.result_ttl_seconds == 60.0
    assert config.public_base_url == "http://sim:9000"
    assert config.price_per_image == "0.0500"
    assert config.faults.submit_503 == 0.25
    assert config.faults.latency_ms == 15.0
    assert config.faults.seed == 9
    assert config.balance == "0.0700"
    assert config.faults.submit_400 == 0.125
    assert SimConfig.from_env({}) == SimConfig()
    assert SimConfig().balance is None
    assert SimConfig.from_env({"SIM_BALANCE": "unlimited"}).balance is None
    assert SimConfig.from_env({"SIM_BALANCE": "0"}).balance == "0.0000"


@pytest.mark.parametrize(
    "env",
    [
        {"SIM_RPM": "lots"},
        {"SIM_FAULT_FAIL_TASK": "2"},
        {"SIM_KEYS": "k1="},
        {"SIM_BALANCE": "-0.01"},
        {"SIM_FAULT_SUBMIT_400": "1.5"},
    ],
)
def test_config_from_env_rejects_bad_values(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=r"SIM_KEYS|field"):
        SimConfig.from_env(env)


# --- Task timing: fixed and lognormal durations, scaling, seeding ---------------------------


def _durations(sim: Sim) -> list[tuple[float, float]]:
    """(pending, total) per task, straight from the simulator's own records."""
    return [
        (task.processing_at - task.created_at, task.ends_at - task.created_at)
        for task in sim.app.sim.store.tasks.values()
    ]


async def _submit_many(sim: Sim, count: int, **fields: Any) -> None:
    for _ in range(count):
        await sim.created(payload(**fields))
        # Let every task end so the concurrency limit never rejects the next one.
        sim.clock.advance(10_000.0)


async def test_fixed_timing_is_exact_and_the_default(make_sim: SimFactory) -> None:
    sim = await make_sim(pending_seconds=1.25, processing_seconds=4.5)
    assert (await sim.client.get("/_sim/config")).json()["timing"] == "fixed"
    await _submit_many(sim, 3, n=4)
    assert _durations(sim) == [(1.25, 5.75)] * 3


async def test_lognormal_is_reproducible_under_a_seed(make_sim: SimFactory) -> None:
    runs = []
    for _ in range(2):
        sim = await make_sim(timing="lognormal", timing_seed=42, pending_sigma=0.3)
        await _submit_many(sim, 20)
        runs.append(_durations(sim))
    assert runs[0] == runs[1]
    assert len({total for _, total in runs[0]}) == 20
    assert all(0 < pending <= total for pending, total in runs[0])


async def test_lognormal_sample_median_matches_config(make_sim: SimFactory) -> None:
    sim = await make_sim(
        timing="lognormal", timing_seed=7, duration_median_seconds=8.0, duration_sigma=0.5
    )
    rng = sim.app.sim.timing_rng
    config = sim.app.sim.config
    # The draw itself, 2,000 times: a seeded statistical check that cannot flake.
    totals = sorted(sum(draw_durations(config, rng, 1, 1024, 1024)) for _ in range(2000))
    median = (totals[999] + totals[1000]) / 2
    assert abs(median - 8.0) < 0.4
    assert max(totals) <= config.max_seconds


async def test_sigma_zero_gives_the_median_exactly(make_sim: SimFactory) -> None:
    sim = await make_sim(
        timing="lognormal",
        duration_median_seconds=6.5,
        duration_sigma=0,
        pending_median_seconds=1.5,
        pending_sigma=0,
    )
    await _submit_many(sim, 3)
    assert _durations(sim) == [(1.5, 6.5)] * 3


async def test_pending_is_capped_by_the_whole_duration(make_sim: SimFactory) -> None:
    sim = await make_sim(
        timing="lognormal", duration_median_seconds=2.0, duration_sigma=0, pending_median_seconds=5
    )
    await _submit_many(sim, 1)
    assert _durations(sim) == [(2.0, 2.0)]


async def test_durations_scale_by_n_and_pixels(make_sim: SimFactory) -> None:
    sim = await make_sim(
        timing="lognormal",
        duration_median_seconds=4.0,
        duration_sigma=0,
        pending_median_seconds=0.5,
        n_exponent=1.0,
        pixel_exponent=0.5,
    )
    await _submit_many(sim, 1, n=3, width=1024, height=1024)
    await _submit_many(sim, 1, n=1, width=2048, height=2048)
    assert [total for _, total in _durations(sim)] == [12.0, 8.0]
    fixed = await make_sim(pending_seconds=0.5, processing_seconds=2.0, n_exponent=1.0)
    await _submit_many(fixed, 1, n=2)
    assert _durations(fixed) == [(0.5, 4.5)]


async def test_max_seconds_clamps_the_tail(make_sim: SimFactory) -> None:
    sim = await make_sim(
        timing="lognormal", duration_median_seconds=100, duration_sigma=0, max_seconds=30
    )
    await _submit_many(sim, 1)
    assert _durations(sim)[0][1] == 30.0


async def test_fault_rolls_do_not_shift_durations(make_sim: SimFactory) -> None:
    quiet = await make_sim(timing="lognormal", timing_seed=5)
    await _submit_many(quiet, 10)
    noisy = await make_sim(timing="lognormal", timing_seed=5, faults=Faults(fail_task=0.5, seed=1))
    await _submit_many(noisy, 10)
    assert _durations(quiet) == _durations(noisy)
    assert (await noisy.stats())["faults_injected"]["fail_task"] > 0


async def test_runtime_timing_seed_restarts_the_sequence(sim: Sim) -> None:
    response = await sim.configure(timing="lognormal", timing_seed=11)
    assert response.status_code == 200, response.text
    assert response.json()["timing_seed"] == 11
    await _submit_many(sim, 3)
    first = _durations(sim)
    await sim.client.post("/_sim/reset")
    await _submit_many(sim, 3)
    assert _durations(sim) == first
    await sim.client.post("/_sim/reset")
    await sim.configure(timing_seed=11)
    await _submit_many(sim, 3)
    assert _durations(sim) == first


async def test_tasks_listing_shows_drawn_durations(make_sim: SimFactory) -> None:
    sim = await make_sim(timing="lognormal", timing_seed=3, pending_sigma=0.4)
    await _submit_many(sim, 4)
    rows = (await sim.client.get("/_sim/tasks")).json()["tasks"]
    assert [(r["processing_at"] - r["created_at"], r["duration_seconds"]) for r in rows] == (
        _durations(sim)
    )
    assert all(r["ends_at"] == r["created_at"] + r["duration_seconds"] for r in rows)


def test_timing_config_from_env() -> None:
    config = SimConfig.from_env(
        {
            "SIM_TIMING": "lognormal",
            "SIM_DURATION_MEDIAN_SECONDS": "9.5",
            "SIM_DURATION_SIGMA": "0.25",
            "SIM_PENDING_MEDIAN_SECONDS": "0.75",
            "SIM_PENDING_SIGMA": "0.1",
            "SIM_N_EXPONENT": "1",
            "SIM_PIXEL_EXPONENT": "0.5",
            "SIM_MAX_SECONDS": "120",
            "SIM_TIMING_SEED": "17",
        }
    )
    assert (config.timing, config.duration_median_seconds, config.duration_sigma) == (
        "lognormal",
        9.5,
        0.25,
    )
    assert (config.pending_median_seconds, config.pending_sigma) == (0.75, 0.1)
    assert (config.n_exponent, config.pixel_exponent, config.max_seconds) == (1.0, 0.5, 120.0)
    assert config.timing_seed == 17
    assert SimConfig.from_env({"SIM_TIMING_SEED": "none"}).timing_seed is None


@pytest.mark.parametrize(
    ("changes", "field_name"),
    [
        ({"timing": "gaussian"}, "timing"),
        ({"duration_median_seconds": 0}, "duration_median_seconds"),
        ({"pending_median_seconds": -1}, "pending_median_seconds"),
        ({"duration_sigma": -0.1}, "duration_sigma"),
        ({"pending_sigma": 6}, "pending_sigma"),
        ({"max_seconds": 0}, "max_seconds"),
        ({"n_exponent": "x"}, "n_exponent"),
        ({"pixel_exponent": float("inf")}, "pixel_exponent"),
        ({"timing_seed": 1.5}, "timing_seed"),
    ],
)
def test_timing_config_rejects_bad_values(changes: dict[str, Any], field_name: str) -> None:
    config = SimConfig()
    with pytest.raises(ValueError, match=f"field '{field_name}'"):
        config.update(changes)
    assert config == SimConfig()


async def test_runtime_timing_update_is_validated(sim: Sim) -> None:
    response = await sim.configure(timing="lognormal", duration_sigma=-1)
    assert response.status_code == 400
    assert "duration_sigma" in response.text
    assert (await sim.client.get("/_sim/config")).json()["timing"] == "fixed"


def test_cli_refuses_a_bad_timing_option() -> None:
    from typer.testing import CliRunner

    from worker.cli import app

    result = CliRunner().invoke(app, ["simulator", "--timing", "lognormal", "--sigma", "-1"])
    assert result.exit_code == 2
    assert "duration_sigma" in result.output
