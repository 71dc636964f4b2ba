"""VPC: private subnets for every task and GPU host, NAT for egress, an S3 gateway endpoint
(photo and artifact traffic never leaves the AWS network), flow logs to encrypted CloudWatch."""

from __future__ import annotations

from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct

from stacks.config import InfraConfig


class Network(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, config: InfraConfig, logs_key: kms.IKey) -> None:
        super().__init__(scope, construct_id)
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=2,
            nat_gateways=config.nat_gateways,
            restrict_default_security_group=False,
            subnet_configuration=[
                ec2.SubnetConfiguration(
                    name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24, map_public_ip_on_launch=False
                ),
                ec2.SubnetConfiguration(name="private", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=20),
            ],
            gateway_endpoints={"S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3)},
        )
        flow_logs = logs.LogGroup(
            self,
            "FlowLogs",
            encryption_key=logs_key,
            retention=logs.RetentionDays.ONE_YEAR,
        )
        self.vpc.add_flow_log("FlowLog", destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs))

    def https_only_group(self, construct_id: str, description: str, extra_tcp_ports: tuple[int, ...] = ()) -> ec2.SecurityGroup:
        """No inbound; outbound HTTPS (AWS APIs, ECR) plus the given database ports."""
        group = ec2.SecurityGroup(self, construct_id, vpc=self.vpc, description=description, allow_all_outbound=False)
        group.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "HTTPS to AWS APIs and ECR")
        for port in extra_tcp_ports:
            group.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(port), f"database on tcp/{port}")
        return group
