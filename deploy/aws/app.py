"""CDK entry point: ``cdk synth`` / ``cdk deploy`` run this from deploy/aws."""

from __future__ import annotations

import os

from aws_cdk import App, Environment
from raw2gold_infra import build_app


def main() -> None:
    """Synthesize raw2gold's stacks for the account and region of the CLI's credentials."""
    app = App()
    account = os.environ.get("CDK_DEFAULT_ACCOUNT")
    region = os.environ.get("CDK_DEFAULT_REGION")
    env = Environment(account=account, region=region) if account and region else None
    build_app(app, env)
    app.synth()


if __name__ == "__main__":
    main()
