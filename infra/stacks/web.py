"""The web app (the static build in `web/dist/`) on S3 + CloudFront, sharing one origin with the API.

* `web` bucket: private (Block Public Access, bucket-owner-enforced), SSE-S3 (it holds the public
  SPA's code, no personal data; SSE-S3 needs no KMS grant for CloudFront), versioned, TLS-only,
  access logs to the log bucket. Filled by `aws s3 sync web/dist s3://<WebBucket> --delete`
  (a deploy step, not a custom-resource Lambda).
* CloudFront: origin access control (SigV4) on the bucket, default root `index.html`, the
  managed security-headers policy (HSTS, nosniff, frame options, referrer policy), HTTPS only.
* With the API tier (`avatarpipe:apiDomain`): `/v1/*`, `/healthz` and `/openapi.json` go to the
  ALB over HTTPS (TLS 1.2, the API certificate validates `apiDomain`), uncached, every method,
  every viewer header but Host, so the SPA calls `/v1/...` on its own origin: no CORS needed.
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_cloudfront as cloudfront
from aws_cdk import aws_cloudfront_origins as origins
from aws_cdk import aws_s3 as s3
from constructs import Construct

from stacks.checkov import skip_checks
from stacks.config import InfraConfig
from stacks.delivery import default_certificate_reason, edge_settings
from stacks.storage import DataStores

API_PATHS = ("/v1/*", "/healthz", "/openapi.json")
# CloudFront's longest origin read timeout without a quota increase; the browser's EventSource
# reconnects by itself when an SSE stream is cut after a quiet minute.
ORIGIN_READ_TIMEOUT = Duration.seconds(60)


class WebApp(Construct):
    def __init__(
        self, scope: Construct, construct_id: str, *, config: InfraConfig, data: DataStores, api_domain: str | None
    ) -> None:
        super().__init__(scope, construct_id)
        self.bucket = s3.Bucket(
            self,
            "Bucket",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            enforce_ssl=True,
            versioned=True,
            lifecycle_rules=[
                s3.LifecycleRule(id="expire-old-builds", noncurrent_version_expiration=Duration.days(30)),
                s3.LifecycleRule(id="abort-incomplete-multipart", abort_incomplete_multipart_upload_after=Duration.days(1)),
            ],
            server_access_logs_bucket=data.log_bucket,
            server_access_logs_prefix="s3/web/",
            removal_policy=RemovalPolicy.RETAIN,
        )
        edge = edge_settings(self, config.web_certificate_arn, config.web_domain, data.log_bucket, "cloudfront-web/")
        self.distribution = cloudfront.Distribution(
            self,
            "Distribution",
            comment="avatarpipe web app and API",
            default_root_object="index.html",
            default_behavior=cloudfront.BehaviorOptions(
                origin=origins.S3BucketOrigin.with_origin_access_control(self.bucket),
                viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.REDIRECT_TO_HTTPS,
                allowed_methods=cloudfront.AllowedMethods.ALLOW_GET_HEAD,
                cache_policy=cloudfront.CachePolicy.CACHING_OPTIMIZED,
                response_headers_policy=cloudfront.ResponseHeadersPolicy.SECURITY_HEADERS,
                compress=True,
            ),
            web_acl_id=config.web_acl_arn or None,
            **edge,
        )
        if api_domain:
            self._route_api(api_domain)
        reasons = {}
        if not config.web_acl_arn:
            reasons["CKV_AWS_68"] = (
                "A web ACL for CloudFront must be created in us-east-1, which this regional stack cannot "
                "do; set avatarpipe:webAclArn to attach one. The API behind it already has its own "
                "regional WAF on the ALB (stacks/service.py)."
            )
        if edge["certificate"] is None:
            reasons["CKV_AWS_174"] = default_certificate_reason("webDomain", "webCertificateArn")
        if reasons:
            skip_checks(self.distribution, reasons)

    @property
    def origin(self) -> str:
        """The SPA's browser origin on CloudFront's domain (what the API's CORS allows)."""
        return f"https://{self.distribution.distribution_domain_name}"

    def origins(self, config: InfraConfig) -> list[str]:
        """Every origin the SPA is served from: CloudFront's domain and the custom one, if any."""
        custom = [f"https://{config.web_domain}"] if config.web_domain and config.web_certificate_arn else []
        return [self.origin, *custom]

    def _route_api(self, api_domain: str) -> None:
        api = origins.HttpOrigin(
            api_domain,
            protocol_policy=cloudfront.OriginProtocolPolicy.HTTPS_ONLY,
            origin_ssl_protocols=[cloudfront.OriginSslPolicy.TLS_V1_2],
            read_timeout=ORIGIN_READ_TIMEOUT,
            keepalive_timeout=Duration.seconds(60),
        )
        # Nothing of the API is cached: the key includes the credentials and the longest TTL is
        # one second (CloudFront forwards Authorization only when it is part of the cache key).
        no_cache = cloudfront.CachePolicy(
            self,
            "ApiCachePolicy",
            comment="avatarpipe API: per-credential, effectively uncached",
            default_ttl=Duration.seconds(0),
            min_ttl=Duration.seconds(0),
            max_ttl=Duration.seconds(1),
            header_behavior=cloudfront.CacheHeaderBehavior.allow_list("Authorization", "X-API-Key"),
            query_string_behavior=cloudfront.CacheQueryStringBehavior.all(),
            cookie_behavior=cloudfront.CacheCookieBehavior.none(),
            enable_accept_encoding_gzip=True,
            enable_accept_encoding_brotli=True,
        )
        for path in API_PATHS:
            self.distribution.add_behavior(
                path,
                api,
                viewer_protocol_policy=cloudfront.ViewerProtocolPolicy.HTTPS_ONLY,
                allowed_methods=cloudfront.AllowedMethods.ALLOW_ALL,
                cache_policy=no_cache,
                # Host stays CloudFront's: the ALB's certificate is checked against api_domain.
                origin_request_policy=cloudfront.OriginRequestPolicy.ALL_VIEWER_EXCEPT_HOST_HEADER,
                response_headers_policy=cloudfront.ResponseHeadersPolicy.SECURITY_HEADERS,
                compress=False,  # SSE must not wait for a compression buffer
            )
