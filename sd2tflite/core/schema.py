"""The small subset of JSON Schema our reports and the manifest use (type, type lists with
"null", const, enum, minimum / maximum (NaN meets neither), required, properties, items):
one validator for all of them."""

from __future__ import annotations

_JSON_TYPES = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float),
               "boolean": bool, "null": type(None)}


def schema_problems(value, schema: dict, where: str) -> list[str]:
    """Every place `value` breaks `schema`, as 'WHERE should be TYPE' / 'WHERE.KEY is missing'."""
    kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    ok = any(isinstance(value, _JSON_TYPES[k]) and not (k in ("integer", "number") and isinstance(value, bool))
             for k in kinds)
    if not ok:
        return [f"{where} should be {' or '.join(kinds)}"]
    problems = []
    if "const" in schema and value != schema["const"]:
        problems.append(f"{where} is {value!r}, expected {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where} is {value!r}, expected one of {schema['enum']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and ("minimum" in schema or "maximum" in schema):
        low, high = schema.get("minimum", -float("inf")), schema.get("maximum", float("inf"))
        if not low <= value <= high:  # NaN is in no range
            expected = f"from {low:g} to {high:g}" if "maximum" in schema and "minimum" in schema else \
                f"at least {low:g}" if "minimum" in schema else f"at most {high:g}"
            problems.append(f"{where} is {value!r}, expected a number {expected}")
    if isinstance(value, dict):
        problems += [f"{where}.{key} is missing" for key in schema.get("required", []) if key not in value]
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                problems += schema_problems(value[key], sub, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            problems += schema_problems(item, schema["items"], f"{where}[{i}]")
    return problems
