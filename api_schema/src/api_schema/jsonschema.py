"""JSON Schema files for producers that do not speak Python.

``python -m api_schema.jsonschema`` rewrites the checked-in files; a test fails when they drift.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel

from .models import GenerateKwargs, GenerationRequest, JobView

SCHEMA_DIR: Final = Path(__file__).parent / "schemas"
MODELS: Final[dict[str, type[BaseModel]]] = {
    "generation_request.schema.json": GenerationRequest,
    "generate_task_kwargs.schema.json": GenerateKwargs,
    "job_view.schema.json": JobView,
}


def build() -> dict[str, dict[str, Any]]:
    """Every schema file's content, by file name."""
    schemas: dict[str, dict[str, Any]] = {}
    for name, model in MODELS.items():
        schema = model.model_json_schema(mode="serialization" if model is JobView else "validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://imagegen-worker/schemas/{name}"
        schemas[name] = schema
    return schemas


def render(schema: dict[str, Any]) -> str:
    """Stable text of one schema file."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write every schema file into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in build().items():
        path = directory / name
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write(Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMA_DIR):
        print(path)
