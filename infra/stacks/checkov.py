"""Checkov suppressions live next to the resource they concern, each with its reason.

Checkov reads `Metadata.checkov.skip` of a CloudFormation resource; this helper writes it on
the construct's underlying CfnResource.
"""

from __future__ import annotations

from aws_cdk import CfnResource
from constructs import IConstruct


def skip_checks(construct: IConstruct, reasons: dict[str, str]) -> None:
    resource = construct if isinstance(construct, CfnResource) else construct.node.default_child
    if not isinstance(resource, CfnResource):
        raise TypeError(f"{construct.node.path} has no CloudFormation resource to annotate")
    existing = resource.get_metadata("checkov") or {"skip": []}
    existing["skip"] = existing["skip"] + [{"id": check, "comment": why} for check, why in reasons.items()]
    resource.add_metadata("checkov", existing)
