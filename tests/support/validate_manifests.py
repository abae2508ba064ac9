"""Validates Kubernetes manifests strictly: a field the schema does not know, a wrong type or a
kind without a schema is an error. Built-in kinds against kubernetes-validate's schemas; the
prometheus-operator's custom resources against the JSON schema of their pydantic models, made
strict the way kubernetes-validate's strict schemas are (no properties beyond those listed).

Usage: python validate_manifests.py FILE...; prints one line per resource, exits 1 on an error.
Run with the interpreter of the virtualenv `cargo xtask setup` makes (target/validator).
"""

import sys

import jsonschema
import kubernetes_validate
import yaml
from cloudcoil.models.prometheus_operator import v1 as monitoring_v1


def strict(schema):
    """Forbids unlisted properties in every object schema that lists its properties."""
    if isinstance(schema, dict):
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        for value in schema.values():
            strict(value)
    elif isinstance(schema, list):
        for value in schema:
            strict(value)
    return schema


def custom_resource_schema(kind):
    model = getattr(monitoring_v1, kind, None)
    if model is None:
        return None
    return strict(model.model_json_schema(by_alias=True, mode="validation"))


def errors_of(resource):
    if resource.get("apiVersion") == "monitoring.coreos.com/v1":
        schema = custom_resource_schema(resource.get("kind", ""))
        if schema is None:
            return [f"no schema for kind {resource.get('kind')!r} of monitoring.coreos.com/v1"]
        validator = jsonschema.Draft202012Validator(schema)
        return [
            f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(resource)
        ]
    try:
        kubernetes_validate.validate(resource, kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(map(str, e.path))}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [str(e)]
    return []


def main(files):
    failed = False
    for name in files:
        with open(name) as f:
            resources = [r for r in yaml.safe_load_all(f) if r is not None]
        if not resources:
            print(f"ERROR {name}: no resources")
            failed = True
        for resource in resources:
            what = f"{resource.get('kind')}/{resource.get('metadata', {}).get('name')}"
            errors = errors_of(resource)
            for error in errors:
                print(f"ERROR {name}: {what}: {error}")
            if not errors:
                print(f"ok {name}: {what}")
            failed |= bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
