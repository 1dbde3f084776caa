"""JSON Schema files for producers that do not speak Python.

``python -m api_schema.jsonschema`` rewrites the checked-in files; a test fails when they drift.

The files are pydantic's schemas plus what pydantic cannot say from the models' types: the
nesting limit of ``metadata``, as a chain of ``$defs`` (``MetadataValue0`` is a scalar,
``MetadataValueN`` a scalar or an array or object of ``MetadataValue{N-1}``), since JSON
Schema has no depth keyword and the model checks depth in a validator.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel

from .models import MAX_METADATA_DEPTH, TEXT_PATTERN, GenerateKwargs, GenerationRequest, JobView

SCHEMA_DIR: Final = Path(__file__).parent / "schemas"
MODELS: Final[dict[str, type[BaseModel]]] = {
    "generation_request.schema.json": GenerationRequest,
    "generate_task_kwargs.schema.json": GenerateKwargs,
    "job_view.schema.json": JobView,
}
_SCALARS: Final = ["null", "boolean", "number", "string"]
#: An object of exactly ``__type__`` and ``__value__``: kombu would decode it as a datetime,
#: a Decimal, ... (the broker refuses such bodies), so metadata may not hold one.
NO_TYPE_TAG: Final = {
    "not": {"type": "object", "required": ["__type__", "__value__"], "maxProperties": 2}
}


def metadata_value_defs(depth: int = MAX_METADATA_DEPTH - 1) -> dict[str, dict[str, Any]]:
    """``$defs`` ``MetadataValue0`` .. ``MetadataValue{depth}``: JSON values nesting at most
    that many objects and arrays, whose text (keys too) PostgreSQL can store."""
    defs: dict[str, dict[str, Any]] = {
        "MetadataValue0": {
            "description": "A JSON scalar; text without NUL or unpaired surrogates.",
            "type": _SCALARS,
            "pattern": TEXT_PATTERN,
        }
    }
    for level in range(1, depth + 1):
        inner = {"$ref": f"#/$defs/MetadataValue{level - 1}"}
        defs[f"MetadataValue{level}"] = {
            "description": f"A JSON value nesting at most {level} "
            + ("level" if level == 1 else "levels")
            + " of objects and arrays.",
            "type": [*_SCALARS, "array", "object"],
            "pattern": TEXT_PATTERN,
            "items": inner,
            "propertyNames": {"pattern": TEXT_PATTERN},
            "additionalProperties": inner,
            **NO_TYPE_TAG,
        }
    return defs


def _bound_metadata(schema: dict[str, Any]) -> None:
    """Limit the depth of ``metadata`` in every GenerationRequest within ``schema``."""
    requests = [schema] if schema.get("title") == GenerationRequest.__name__ else []
    requests += [
        d for d in schema.get("$defs", {}).values() if d.get("title") == "GenerationRequest"
    ]
    if not requests:
        return
    for request in requests:
        objects = [
            option
            for option in request["properties"]["metadata"]["anyOf"]
            if option.get("type") == "object"
        ]
        assert len(objects) == 1, "GenerationRequest.metadata is no longer an object or null"
        objects[0].update(
            {
                "propertyNames": {"pattern": TEXT_PATTERN},
                "additionalProperties": {"$ref": f"#/$defs/MetadataValue{MAX_METADATA_DEPTH - 1}"},
                **NO_TYPE_TAG,
            }
        )
    schema.setdefault("$defs", {}).update(metadata_value_defs())


def build() -> dict[str, dict[str, Any]]:
    """Every schema file's content, by file name."""
    schemas: dict[str, dict[str, Any]] = {}
    for name, model in MODELS.items():
        schema = model.model_json_schema(mode="serialization" if model is JobView else "validation")
        _bound_metadata(schema)
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
