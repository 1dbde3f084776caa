"""The HTTP API's OpenAPI document, checked in as ``api_schema/openapi.json``.

``python -m worker.api.openapi`` rewrites the file; a test fails when it drifts from the
routes. The document is built from ``create_app`` with settings made here (no environment,
no database, no secrets), since nothing in it depends on a deployment.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Final

from fastapi import FastAPI
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from worker.config import Settings

from .app import create_app

#: ``api_schema/openapi.json`` of a source checkout.
DOCUMENT_PATH: Final = Path(__file__).resolve().parents[2] / "api_schema" / "openapi.json"


class _OfflineSettings(Settings):
    """Settings from the arguments only: no ``IMAGEGEN_*`` variable can change the document."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def offline_app() -> FastAPI:
    """The API as the document describes it, built without a deployment: no environment,
    no database, no broker, no store (nothing here connects to them)."""
    settings = _OfflineSettings(
        database_url="postgresql+psycopg://openapi@127.0.0.1:1/unused",
        broker_url="redis://127.0.0.1:1/0",
        storage_backend="off",
        api_tokens=None,
    )
    return create_app(settings)


def document() -> dict[str, Any]:
    """The API's OpenAPI document, as ``/v1/openapi.json`` serves it."""
    return offline_app().openapi()


def render(doc: dict[str, Any]) -> str:
    """Stable text of the document."""
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write(path: Path = DOCUMENT_PATH) -> Path:
    """Write the document to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(document()), encoding="utf-8")
    return path


if __name__ == "__main__":
    print(write(Path(sys.argv[1]) if len(sys.argv) > 1 else DOCUMENT_PATH))
