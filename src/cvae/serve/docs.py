"""``/docs``: the API's reference as one static HTML page, written from the app's own OpenAPI document.

FastAPI's Swagger page loads its script and styles from a CDN, which the server's policy (scripts and
styles from this origin only) and an offline machine both refuse: it came up blank. This page needs no
script: each operation with its method, path, summary, path parameters and body fields (type, default,
bounds, description), and a link to ``/openapi.json`` for tools.
"""

from __future__ import annotations

import json
from html import escape


def _resolve(schema: dict, components: dict) -> dict:
    ref = schema.get("$ref")
    return components.get(ref.rsplit("/", 1)[-1], {}) if ref else schema


def _type(schema: dict, components: dict) -> str:
    """A short type: ``number``, ``integer or null``, ``object of string | number``, ``file``, ``one of json, png``."""
    schema = _resolve(schema, components)
    if "anyOf" in schema:
        return " or ".join(dict.fromkeys(_type(s, components) for s in schema["anyOf"]))
    if "enum" in schema:
        return "one of " + ", ".join(map(str, schema["enum"]))
    kind = schema.get("type", "any")
    if kind == "string" and (schema.get("format") == "binary" or "contentMediaType" in schema):
        return "file"
    if kind == "array":
        return f"list of {_grouped(schema.get('items', {}), components)}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_grouped(schema['additionalProperties'], components)}"
    return kind


def _grouped(schema: dict, components: dict) -> str:
    inner = _type(schema, components)
    return f"({inner})" if " or " in inner else inner


def _bounds(schema: dict) -> str:
    parts = []
    for s in [schema, *schema.get("anyOf", [])]:
        for key, sign in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"),
                          ("minItems", "items >="), ("maxItems", "items <=")):
            if key in s:
                parts.append(f"{sign} {s[key]:g}" if isinstance(s[key], float) else f"{sign} {s[key]}")
    return ", ".join(dict.fromkeys(parts))


def _fields(schema: dict, components: dict) -> str:
    schema = _resolve(schema, components)
    required = set(schema.get("required", []))
    rows = []
    for name, field in schema.get("properties", {}).items():
        default = "required" if name in required else (json.dumps(field["default"]) if "default" in field else "")
        rows.append(f"<tr><td><code>{escape(name)}</code></td><td>{escape(_type(field, components))}</td>"
                    f"<td>{escape(default)}</td><td>{escape(_bounds(field))}</td>"
                    f"<td>{escape(field.get('description', ''))}</td></tr>")
    if not rows:
        return ""
    return ("<table><tr><th>field</th><th>type</th><th>default</th><th>bounds</th><th>meaning</th></tr>"
            + "".join(rows) + "</table>")


def api_page(openapi: dict) -> str:
    """The HTML reference of an OpenAPI document (FastAPI's ``app.openapi()``)."""
    components = openapi.get("components", {}).get("schemas", {})
    info = openapi.get("info", {})
    out = [f"<h1>{escape(info.get('title', 'API'))} API, version {escape(str(info.get('version', '')))}</h1>",
           f"<p>{escape(info.get('description', ''))} The machine-readable document: "
           "<a href=\"/openapi.json\">/openapi.json</a>. Errors answer <code>{\"detail\": \"one line\"}</code> "
           "with 4xx: 404 an unknown run, 413 a body over its limit, 415 a type the run cannot read, 422 a "
           "value to change, 503 busy (retry after the <code>Retry-After</code> seconds).</p>"]
    for path, methods in openapi.get("paths", {}).items():
        for method, op in methods.items():
            anchor = escape(op.get("operationId", f"{method}-{path}"))
            out.append(f"<section class=\"op\" id=\"{anchor}\"><h2><code>{method.upper()} {escape(path)}</code></h2>"
                       f"<p>{escape(op.get('summary', ''))}</p>")
            if op.get("description"):
                out.append(f"<p>{escape(op['description'])}</p>")
            params = [p for p in op.get("parameters", [])]
            if params:
                out.append("<p>" + "; ".join(f"<code>{{{escape(p['name'])}}}</code> ({escape(p['in'])}): "
                                             f"{escape(p.get('description', _type(p.get('schema', {}), components)))}"
                                             for p in params) + "</p>")
            for media, body in op.get("requestBody", {}).get("content", {}).items():
                out.append(f"<p>body: <code>{escape(media)}</code></p>" + _fields(body.get("schema", {}), components))
            answers = [f"<code>{escape(m)}</code>" for m in op.get("responses", {}).get("200", {}).get("content", {})]
            if answers:
                out.append(f"<p>answers: {', '.join(answers)}</p>")
            out.append("</section>")
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>cvae API</title>"
            "<link rel=\"stylesheet\" href=\"/static/style.css\"></head><body class=\"docs\"><main>"
            "<p><a href=\"/\">&larr; the page</a></p>" + "".join(out) + "</main></body></html>")
