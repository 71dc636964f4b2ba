"""CloudFront in front of the artifacts bucket, serving only the rigged GLBs.

Origin access control (SigV4-signed requests from CloudFront); the bucket policy lets this
distribution read `subjects/*/*/rigged_glb/*` and nothing else, so photos, keypoints and fits
can never be fetched through the CDN. The artifacts key lets CloudFront decrypt.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import Aws
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_cloudfront as cloudfront
from aws_cdk import aws_cloudfront_origins as origins
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from stacks.checkov import skip_checks
from stacks.config import InfraConfig
from stacks.storage import DataStores

GLB_OBJECTS = "subjects/*/*/rigged_glb/*"


def edge_settings(
    scope: Construct, certificate_arn: str, domain: str, log_bucket: s3.IBucket, log_prefix: str
) -> dict[str, Any]:
    """Distribution settings the stack's CDNs share: HTTP/2 and 3, price class 100, standard logs
    to the log bucket; with a certificate (us-east-1), the custom domain and TLS 1.2 minimum."""
    certificate = acm.Certificate.from_certificate_arn(scope, "Certificate", certificate_arn) if certificate_arn else None
    return {
        "http_version": cloudfront.HttpVersion.HTTP2_AND_3,
        "price_class": cloudfront.PriceClass.PRICE_CLASS_100,
        "minimum_protocol_version": cloudfront.SecurityPolicyProtocol.TLS_V1_2_2021 if certificate else None,
        "domain_names": [domain] if domain and certificate else None,
        "certificate": certificate,
        "enable_logging": True,
        "log_bucket": log_bucket,
        "log_file_prefix": log_prefix,
    }


def default_certificate_reason(domain_key: str, certificate_key: str) -> str:
    return (
        "Without a custom domain CloudFront's default certificate is used, whose TLS policy "
        f"cannot be set; set avatarpipe:{domain_key} and {certificate_key} to enforce TLS 1.2."
    )


class GlbDelivery(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, config: InfraConfig, data: DataStores) -> None:
        super().__init__(scope, construct_id)
        oac = cloudfront.S3OriginAccessControl(self, "Oac", signing=cloudfront.Signing.SIGV4_ALWAYS)
        edge = edge_settings(self, config.glb_certificate_arn, config.glb_domain, data.log_bucket, "cloudfront/")
        self.distribution = cloudfront.Distribution(
            self,
            "Distribution",
            comment="avatarpipe rigged GLBs",
            default_behavior=cloudfront.BehaviorOptions(
                origin=origins.S3BucketOrigin.with_bucket_defaults(data.artifacts),
                viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.HTTPS_ONLY,
                allowed_methods=cloudfront.AllowedMethods.ALLOW_GET_HEAD,
                cache_policy=cloudfront.CachePolicy.CACHING_OPTIMIZED,
                # Web viewers (three.js, model-viewer) fetch GLBs cross-origin.
                response_headers_policy=cloudfront.ResponseHeadersPolicy.CORS_ALLOW_ALL_ORIGINS_WITH_PREFLIGHT_AND_SECURITY_HEADERS,
                compress=True,
            ),
            **edge,
        )
        cfn = self.distribution.node.default_child
        # Attach the OAC to the S3 origin (CDK's OAC helper would grant the whole bucket).
        cfn.add_property_override("DistributionConfig.Origins.0.OriginAccessControlId", oac.origin_access_control_id)
        cfn.add_property_override("DistributionConfig.Origins.0.S3OriginConfig.OriginAccessIdentity", "")
        distribution_arn = (
            f"arn:{Aws.PARTITION}:cloudfront::{Aws.ACCOUNT_ID}:distribution/{self.distribution.distribution_id}"
        )
        data.artifacts.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudFrontReadsGlbsOnly",
                principals=[iam.ServicePrincipal("cloudfront.amazonaws.com")],
                actions=["s3:GetObject"],
                resources=[data.artifacts.arn_for_objects(GLB_OBJECTS)],
                conditions={"StringEquals": {"AWS:SourceArn": distribution_arn}},
            )
        )
        # The key policy cannot name the distribution (key -> bucket -> distribution would be a
        # cycle): any distribution of this account, and only for decryption.
        data.artifacts_key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudFrontDecryptsGlbs",
                principals=[iam.ServicePrincipal("cloudfront.amazonaws.com")],
                actions=["kms:Decrypt"],
                resources=["*"],
                conditions={
                    "StringLike": {"AWS:SourceArn": f"arn:{Aws.PARTITION}:cloudfront::{Aws.ACCOUNT_ID}:distribution/*"}
                },
            )
        )
        reasons = {
            "CKV_AWS_68": "WAF for CloudFront must live in us-east-1 and is billed per request; this "
            "distribution serves only immutable, content-addressed GLBs (GET/HEAD) from S3. Attach a "
            "web ACL per deployment where the threat model asks for one.",
        }
        if edge["certificate"] is None:
            reasons["CKV_AWS_174"] = default_certificate_reason("glbDomain", "glbCertificateArn")
        skip_checks(self.distribution, reasons)
