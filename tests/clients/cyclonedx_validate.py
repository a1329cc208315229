"""Validates a CycloneDX 1.6 JSON document against the official schema, with the CycloneDX
project's own library (cyclonedx-python-lib), independently of the product.

Usage: cyclonedx_validate.py FILE. Prints `valid`, or `invalid: …` and exits 1.
"""

import sys

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        text = f.read()
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if error is not None:
        detail = getattr(error.data, "message", None) or str(error).splitlines()[0]
        path = "/".join(str(p) for p in getattr(error.data, "absolute_path", []))
        print(f"invalid: {detail} (at /{path})")
        sys.exit(1)
    print("valid")


if __name__ == "__main__":
    main()
