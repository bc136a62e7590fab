"""The ARM template that deploys deploy/workbook.json as a shared workbook on an Application Insights resource.

The workbook's resource name is a GUID derived from the Application Insights resource id, so running
deploy.sh again updates the same workbook instead of adding another.

Usage: python deploy/workbook.py --source INSIGHTS_RESOURCE_ID --location REGION --title TITLE OUTPUT.json
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

WORKBOOK = Path(__file__).resolve().parent / "workbook.json"
API_VERSION = "2023-06-01"


def workbook_id(source: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"powerbi-embed-workbook:{source.lower()}"))


def template(source: str, location: str, title: str) -> dict[str, Any]:
    book = json.loads(WORKBOOK.read_text(encoding="utf-8"))
    book["fallbackResourceIds"] = [source]
    return {
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "resources": [
            {
                "type": "Microsoft.Insights/workbooks",
                "apiVersion": API_VERSION,
                "name": workbook_id(source),
                "location": location,
                "kind": "shared",
                "properties": {
                    "displayName": title,
                    "category": "workbook",
                    "version": "Notebook/1.0",
                    "sourceId": source,
                    "serializedData": json.dumps(book),
                },
            }
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="the Application Insights resource id")
    parser.add_argument("--location", required=True)
    parser.add_argument("--title", required=True)
    parser.add_argument("output", type=Path)
    args = parser.parse_args(argv)
    args.output.write_text(json.dumps(template(args.source, args.location, args.title), indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
