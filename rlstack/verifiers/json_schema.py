"""JSON-schema verifier: the response is JSON that validates against a schema.

Validation uses `jsonschema` (the draft is taken from the schema's `$schema`, else the latest).
A `$ref` may point inside the schema or at the standard meta-schemas only: remote references
are never fetched (no network at run time), so a schema that needs one is reported as invalid.
"""

import functools
import json
import re

from rlstack.errors import DataError, PluginError

_FENCE = re.compile(r"```[ \t]*json[ \t]*\r?\n(.*?)```", re.DOTALL | re.IGNORECASE)


def _json_text(response: str) -> str:
    """The whole response if it parses, else the content of its last ```json block."""
    try:
        json.loads(response)
        return response
    except ValueError:
        pass
    blocks = _FENCE.findall(response)
    return blocks[-1] if blocks else response


@functools.lru_cache(maxsize=256)
def _validator(schema_text: str, check_formats: bool):
    """A validator for a schema given as canonical JSON text; ValueError if the schema is bad."""
    import jsonschema
    import referencing

    schema = json.loads(schema_text)
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"not a valid JSON schema: {exc.message}") from exc
    checker = cls.FORMAT_CHECKER if check_formats else None
    # An empty registry: remote $refs fail instead of being fetched over the network.
    return cls(schema, registry=referencing.Registry(), format_checker=checker)


def _load_schema(schema: object, reference: object) -> str:
    """The schema as canonical JSON text, from the option/column or else the reference."""
    given = schema is not None
    value, error = (schema, PluginError) if given else (reference, DataError)
    where = "the schema option or column" if given else "the reference"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise error(f"json_schema: {where} is not valid JSON ({exc})") from exc
    if not isinstance(value, (dict, bool)):
        raise error(f"json_schema: {where} must be a JSON object, got {type(value).__name__}")
    return json.dumps(value, sort_keys=True)


def json_schema(
    prompt: str,
    response: str,
    reference: str,
    *,
    schema: dict | str | None = None,
    check_formats: bool = False,
    **extras: object,
) -> tuple[float, dict]:
    """Verifier: 1.0 when the response parses as JSON and validates against the schema.

    The JSON is the whole response, or when that does not parse, the content of the last
    ```json fenced block in it.

    Args:
        prompt: The prompt (unused).
        response: The model's response.
        reference: The schema (JSON text) when `schema` is not given.
        schema: The schema as a dict or JSON text; also filled by a data column named `schema`.
        check_formats: Also check `format` keywords (`date`, `email`, `ipv4`, ...).
        **extras: Other fields of the data row (unused).

    Returns:
        `(score, details)`: 1.0 or 0.0; on failure details hold `error` (why: not JSON, or the
        most relevant validation error) and `path` (where in the instance, as a JSON pointer).

    Raises:
        PluginError: The `schema` option or column is not a valid JSON schema.
        DataError: The schema comes from the reference and is not a valid JSON schema.
    """
    import referencing.exceptions
    from jsonschema.exceptions import best_match

    text = _load_schema(schema, reference)
    try:
        validator = _validator(text, bool(check_formats))
    except ValueError as exc:
        error = PluginError if schema is not None else DataError
        raise error(f"json_schema: {exc}") from exc

    if not isinstance(response, str):
        return 0.0, {"error": f"the response is {type(response).__name__}, not text"}
    try:
        instance = json.loads(_json_text(response))
    except (ValueError, RecursionError) as exc:
        return 0.0, {"error": f"not JSON: {exc}"[:300]}

    try:
        problem = best_match(validator.iter_errors(instance))
    except referencing.exceptions.Unresolvable as exc:
        error = PluginError if schema is not None else DataError
        raise error(
            f"json_schema: unresolvable $ref {exc} (remote schemas are not fetched)"
        ) from exc
    except RecursionError:
        return 0.0, {"error": "the JSON is nested too deeply to validate"}
    if problem is not None:
        pointer = "".join(f"/{part}" for part in problem.absolute_path)
        return 0.0, {"error": problem.message[:300], "path": pointer or "/"}
    return 1.0, {}
