"""The avatarpipe CDK stack and its parts."""
