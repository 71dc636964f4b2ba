"""CDK app: `make infra-synth` (offline) writes CloudFormation to infra/cdk.out/.

Configuration is CDK context (cdk.json, or `-c avatarpipe:rawRetentionDays=14`); see
stacks/config.py. The stack is environment-agnostic, so synthesis needs no AWS account.
"""

from aws_cdk import App
from stacks.avatarpipe_stack import AvatarpipeStack
from stacks.config import InfraConfig

app = App()
config = InfraConfig.from_context(app.node)
AvatarpipeStack(app, "Avatarpipe", config=config, description="avatarpipe: photo -> rigged GLB avatar pipeline (Dagster on ECS)")
app.synth()
